"""A real Prometheus (Debian's package) for tests: its own config, storage in tmp, a free
loopback port; queried through its HTTP API. The package's system service plays no part."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from devstack.processes import free_port, wait_until

SCRAPE_S = 1


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


class Prometheus:
    def __init__(
        self, workdir: Path, targets: dict[str, list[str]], rule_files: list[Path]
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._workdir = workdir
        self._config = {
            "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": addresses}]}
                for job, addresses in targets.items()
            ],
        }
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Prometheus:
        self._workdir.mkdir(parents=True, exist_ok=True)
        config = self._workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self._config))
        log = (self._workdir / "prometheus.log").open("ab")
        self._proc = subprocess.Popen(
            [
                prometheus_binary() or "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={self._workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--enable-feature=exemplar-storage",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        wait_until(self._ready, timeout_s=30, what="prometheus ready")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def _ready(self) -> bool:
        assert self._proc is not None and self._proc.poll() is None, "prometheus exited"
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    def api(self, path: str, **params: str | float) -> Any:
        """GET /api/v1/<path>; returns `data`, raises AssertionError with Prometheus's error."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        assert body["status"] == "success", f"{path} {params}: {body.get('error')}"
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        data = self.api("query", query=expr, time=at or time.time())
        return data["result"]

    def targets_up(self) -> bool:
        active = self.api("targets", state="active")["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]
