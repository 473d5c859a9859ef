"""Running `npbert serve` as a real process for the tests: start on 127.0.0.1 with a free port (--port 0,
the port read from the server's "ready on" line), talk HTTP with the standard library, stop with SIGTERM."""

from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

READY = re.compile(r"ready on http://127\.0\.0\.1:(\d+)")
# With --workers N, the parent process listens (and says so) before its workers have loaded the model.
LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


class Server:
    def __init__(
        self,
        model: Path,
        log: Path,
        *flags: str,
        timeout: float = 180.0,
        ready: re.Pattern = READY,
        access_log: bool = False,
        env: dict | None = None,
    ):
        self.log = log
        self._log_file = open(log, "wb")
        cmd = [
            sys.executable,
            "-m",
            "npbert",
            "serve",
            "--model",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *([] if access_log else ["--no-access-log"]),
            *flags,
        ]
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while not (m := ready.search(self.output())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"npbert serve did not start (exit {self.proc.poll()}):\n{self.output()}")
            time.sleep(0.05)
        self.port = int(m.group(1))

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 120.0
    ) -> tuple[int, object]:
        """(status, decoded JSON body) over a fresh connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            assert resp.getheader("content-type", "").startswith("application/json"), (resp.status, data[:200])
            return resp.status, json.loads(data)
        finally:
            conn.close()

    def post(self, path: str, obj) -> tuple[int, object]:
        return self.request("POST", path, json.dumps(obj).encode(), {"Content-Type": "application/json"})

    def stop(self, timeout: float = 60.0, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        return self.proc.returncode
