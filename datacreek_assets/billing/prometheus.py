"""A Prometheus server process (the Debian package's binary) scraping given targets, with the
repository's recording and alert rules loaded: used by the tests and for local inspection."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import requests

RULES = Path(__file__).resolve().parents[2] / "monitoring" / "prometheus" / "rules.yml"


class PrometheusError(RuntimeError):
    pass


class PrometheusServer:
    def __init__(self, workdir: Path, port: int, targets: list[str], scrape_interval: str = "1s",
                 job: str = "datacreek-billing", bearer_token: str | None = None):
        self.workdir, self.port, self.targets, self.scrape_interval = workdir, port, targets, scrape_interval
        self.job, self.bearer_token = job, bearer_token
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "PrometheusServer":
        binary = shutil.which("prometheus")
        if binary is None:
            raise PrometheusError("prometheus is not installed: `apt-get install --no-install-recommends prometheus` "
                                  "(scripts/install-prereqs.sh does it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        targets = ", ".join(f'"{t}"' for t in self.targets)
        config = self.workdir / "prometheus.yml"
        config.write_text(
            f"global:\n  scrape_interval: {self.scrape_interval}\n  evaluation_interval: {self.scrape_interval}\n"
            f"rule_files: [\"{RULES}\"]\n"
            f"scrape_configs:\n  - job_name: {self.job}\n"
            + (f"    authorization:\n      credentials_file: {self._token_file()}\n" if self.bearer_token else "")
            + f"    static_configs:\n      - targets: [{targets}]\n")
        log = open(self.workdir / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PrometheusError(f"prometheus exited: {(self.workdir / 'prometheus.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.__exit__()
        raise PrometheusError("prometheus did not become ready in 60 s")

    def _token_file(self) -> Path:
        path = self.workdir / "scrape_token"
        path.write_text(self.bearer_token)
        path.chmod(0o600)
        return path

    def query(self, promql: str) -> list[dict]:
        reply = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10).json()
        if reply.get("status") != "success":
            raise PrometheusError(f"{promql!r}: {reply.get('error')}")
        return reply["data"]["result"]

    def rule_groups(self) -> list[dict]:
        return requests.get(f"{self.url}/api/v1/rules", timeout=10).json()["data"]["groups"]

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
