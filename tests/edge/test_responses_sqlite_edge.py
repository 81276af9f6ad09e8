"""The SQLite store in a running edge (stand-in engines): a stored response outlives the
edge process, and `tera run` gives its edge a file under the cache folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import openai
import pytest
import yaml
from openai import OpenAI

from devstack.processes import wait_until
from devstack.readiness import http_healthy
from devstack.run import build_parser, default_plan, plan_from_catalog
from tests.conftest import SCRIPTED_MODEL, RunningStack


def test_stored_response_survives_an_edge_restart(
    scripted_stack: Callable[..., RunningStack], tmp_path: Path
) -> None:
    db = tmp_path / "cache" / "responses.sqlite3"
    running = scripted_stack(responses_db=db)
    client = OpenAI(base_url=running.base_url, api_key="sk-local", max_retries=0)
    first = client.responses.create(model=SCRIPTED_MODEL, input="turn 1", max_output_tokens=2)
    gone = client.responses.create(model=SCRIPTED_MODEL, input="gone", max_output_tokens=2)
    client.responses.delete(gone.id)
    assert db.exists()

    stack = running.stack
    assert stack.edge is not None
    stack.edge.stop()  # a crash the supervisor would restart from, as far as state goes
    stack._start_edge()
    wait_until(
        lambda: http_healthy(running.base_url), timeout_s=30, watch=[stack.edge], what="edge"
    )

    assert client.responses.retrieve(first.id).output_text == first.output_text
    follow = client.responses.create(
        model=SCRIPTED_MODEL, input="turn 2", previous_response_id=first.id
    )
    items = client.responses.input_items.list(follow.id, order="asc")
    assert [i.content[0].text for i in items.data] == ["turn 2"]  # type: ignore[union-attr]
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(gone.id)


def test_tera_run_keeps_responses_under_the_cache_folder(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    args = build_parser().parse_args(["--cache-dir", str(cache), "--no-speech"])
    assert default_plan(args, tmp_path / "model").responses_db == cache / "responses.sqlite3"
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"models": [{"id": "m", "weights": str(tmp_path)}]}))
    args = build_parser().parse_args(["--cache-dir", str(cache), "--catalog", str(catalog)])
    assert plan_from_catalog(args).responses_db == cache / "responses.sqlite3"
