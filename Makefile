# Two commands do all set-up: `make run` and `make test`. Both install what is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
CACHE ?= .cache

.PHONY: run test setup model proto proto-release lint format bench clean

setup:
	@bash scripts/bootstrap.sh

model: setup
	@$(PY) -m services.engine.model_prep --cache-dir $(CACHE)

run: model
	@$(PY) -m devstack.run --cache-dir $(CACHE) $(ARGS)

test: model
	@bash scripts/test_services.sh
	@$(PY) -m pytest $(PYTEST_ARGS)

# Not part of make test: figures go to bench/results/<time>/report.{md,json}.
bench: model
	@$(PY) -m bench.run $(ARGS)

proto: setup
	@$(PY) scripts/gen_proto.py
	@$(PY) scripts/proto_check.py

# At a release: today's proto becomes the baseline later changes must stay compatible with.
proto-release: setup
	@$(PY) scripts/proto_check.py --release

lint: setup
	@$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check services scripts tests bench devstack clients deploy

format: setup
	@$(VENV)/bin/ruff format services scripts tests bench devstack clients deploy && $(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) $(CACHE)
