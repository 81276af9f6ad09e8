"""The official openai SDK's own Responses API tests, from its source distribution, run
against a real Tera stack (edge + router + stand-in engine) instead of their Prism mock.

    .venv/bin/python scripts/sdk_responses_tests.py --sdist /tmp/sdist/openai-3.57.0.tar.gz

Every test ends up in one of three bins: passed; a 4xx for a mock-grade value (the SDK
sends placeholders such as previous_response_id="previous_response_id" or a made-up
file id, which a real server rightly refuses); or a defect (anything else: a 5xx, a
response the SDK cannot parse, a crash). The stand-in engine serves the SDK's mock model
name, so requests that only name a model reach the engine.

With --seed (the default), the response ids the tests read, delete and cancel
("resp_677efb...", "response_id") are made real before every test: a response created
through the edge is copied under those ids in the SQLite store, so those tests check
Tera's real answers rather than its 404s. Not part of `make test`: it needs the sdist
and its test dependencies (respx, inline-snapshot, dirty-equals)."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devstack.engine_args import scripted_engine_args  # noqa: E402
from devstack.processes import free_port  # noqa: E402
from devstack.stack import Stack, StackPlan  # noqa: E402
from services.edge.responses.store import record_key  # noqa: E402
from services.tenancy.keys import ANONYMOUS  # noqa: E402

# The model name the SDK's generated tests send.
SDK_MODEL = "gpt-6-astra"
# The response ids the SDK's tests retrieve, delete, cancel and list input items of.
MOCK_IDS = ("resp_677efb5139a88190b512bc3fef8e535d", "response_id")
SEED_ENV = "TERA_SDK_SEED"  # db path and template record, for the plugin below
TEST_PATHS = ["tests/api_resources/test_responses.py", "tests/api_resources/responses"]
# openai's exception classes for 4xx answers (see openai._exceptions).
CLIENT_ERRORS = (
    "BadRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "ConflictError",
    "UnprocessableEntityError",
    "RateLimitError",
)
# Why a 4xx is right for what the SDK's tests send (a placeholder, or a feature Tera
# refuses by design), by a phrase of its message. A 4xx matching none is a defect.
MOCK_GRADE = {
    "'model': Field required": "no model: create() called without one",
    "'limit': Input should be greater than or equal to 1": "limit=0 (the spec's is 1-100)",
    "not offer /v1/responses/compact": "compaction endpoint not offered",
    "not offer /v1/responses/input_tokens": "input-token counting endpoint not offered",
    "'background': background responses are not offered": "background mode not offered",
    "Only background responses can be cancelled": "cancel of a finished response",
    "'stream': streaming a stored response": "event replay (background) not offered",
    **{f"id '{i}' not found": "a placeholder response id (unseeded)" for i in MOCK_IDS},
}


def main() -> None:
    args = _parser().parse_args()
    with tempfile.TemporaryDirectory(prefix="tera-sdk-") as tmp:
        work = Path(tmp)
        sdk_root = _unpack(args.sdist, work)
        plan = StackPlan(
            edge_port=free_port(),
            router_port=free_port(),
            engine_ports=[free_port()],
            engine_args=scripted_engine_args(SDK_MODEL, default_max_tokens=8),
            model_ids=[SDK_MODEL],
            responses_db=work / "responses.db",
            log_dir=work,
        )
        stack = Stack(plan).start(timeout_s=60)
        try:
            junit = work / "junit.xml"
            seed = _seed_template(plan) if args.seed else None
            _run_pytest(sdk_root, plan.base_url, junit, args.pytest_args, seed)
        finally:
            stack.stop()
        results = _classify(junit)
    _report(results, verbose=args.verbose)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    default = sorted(Path("/tmp/sdist").glob("openai-*.tar.gz"))
    p.add_argument("--sdist", type=Path, default=default[-1] if default else None)
    p.add_argument("--no-seed", dest="seed", action="store_false", help="leave mock ids unknown")
    p.add_argument("--verbose", action="store_true", help="print every 4xx message too")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (e.g. -k create)")
    return p


def _unpack(sdist: Path | None, into: Path) -> Path:
    if sdist is None or not sdist.exists():
        raise SystemExit(f"no openai sdist at {sdist}; pass --sdist")
    with tarfile.open(sdist) as tar:
        tar.extractall(into, filter="data")
    (root,) = [p for p in into.iterdir() if p.is_dir() and p.name.startswith("openai-")]
    return root


def _seed_template(plan: StackPlan) -> str:
    """A real stored response (created through the edge) as the seed plugin's template."""
    body = {"model": SDK_MODEL, "input": "Say hello", "store": True}
    response = httpx.post(f"{plan.base_url}/responses", json=body, timeout=30).raise_for_status()
    key = record_key(ANONYMOUS.name, response.json()["id"])
    with sqlite3.connect(plan.responses_db) as db:
        (record,) = db.execute("SELECT body FROM responses WHERE key = ?", (key,)).fetchone()
    return json.dumps({"db": str(plan.responses_db), "record": json.loads(record)})


@pytest.fixture(autouse=True)
def _seed_mock_ids() -> None:
    """Pytest plugin side (loaded with -p): before every test, the mock ids exist again
    (a delete test removes them), each a copy of the template with its own id."""
    seed = json.loads(os.environ[SEED_ENV])
    with sqlite3.connect(seed["db"]) as db:
        for response_id in MOCK_IDS:
            record = seed["record"]
            body = {**record, "response": {**record["response"], "id": response_id}}
            db.execute(
                "INSERT OR REPLACE INTO responses (key, expires_at, body) VALUES (?, ?, ?)",
                (record_key(ANONYMOUS.name, response_id), 4e9, json.dumps(body)),
            )


def _run_pytest(
    sdk_root: Path, base_url: str, junit: Path, extra: list[str], seed: str | None
) -> None:
    # The installed openai package (same version) is what runs: the sdist's src/ layout
    # keeps its copy off sys.path. Its addopts ask for pytest-xdist; one process is enough.
    env = {**os.environ, "TEST_API_BASE_URL": base_url}
    plugin = []
    if seed is not None:
        env[SEED_ENV] = seed
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), str(ROOT)])
        plugin = ["-p", Path(__file__).stem]
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-o",
        "addopts=--tb=line",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        *plugin,
        *TEST_PATHS,
        *extra,
    ]
    subprocess.run(command, cwd=sdk_root, env=env, check=False)


def _classify(junit: Path) -> list[tuple[str, str, str]]:
    """(test id, bin, first line of the failure) for every test that ran."""
    out = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if case.find("skipped") is not None:
            out.append((name, "skipped", case.find("skipped").get("message", "")))
        elif problem is None:
            out.append((name, "passed", ""))
        else:
            message = (problem.get("message") or problem.text or "").strip()
            out.append((name, _bin(message), message.splitlines()[0] if message else ""))
    return out


def _bin(message: str) -> str:
    is_4xx = any(f"openai.{cls}" in message or message.startswith(cls) for cls in CLIENT_ERRORS)
    known = any(phrase in message for phrase in MOCK_GRADE)
    return "4xx mock-grade" if is_4xx and known else "defect"


def _report(results: list[tuple[str, str, str]], *, verbose: bool) -> None:
    counts = Counter(bin_ for _, bin_, _ in results)
    figure = ", ".join(f"{n} {b}" for b, n in sorted(counts.items()))
    print(f"\n{len(results)} SDK tests: {figure}")
    for name, bin_, message in results:
        if bin_ == "defect" or (verbose and bin_ != "passed"):
            print(f"  [{bin_}] {name}\n      {message[:300]}")
    # Group the 4xx answers by why they are right.
    reasons = Counter(
        next(why for phrase, why in MOCK_GRADE.items() if phrase in m)
        for _, b, m in results
        if b == "4xx mock-grade"
    )
    if reasons:
        print("\n4xx for mock-grade values, by reason:")
        for why, n in reasons.most_common():
            print(f"  {n:3d}  {why}")


if __name__ == "__main__":
    main()
