"""Real HTTP servers for the API tests: the app under uvicorn in a thread (loopback, a free port), and
`uvicorn logmem.api.app:create_app --factory` child processes configured only by `LOGMEM_*` variables."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

START_TIMEOUT = 120.0  # seconds a server gets to answer /healthz (a child imports torch and the embedder)


def free_port() -> int:
    """A loopback port nobody listens on now (the OS's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 in a background thread; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class ServerProcess:
    """`python -m uvicorn logmem.api.app:create_app --factory` in a child process with `env` (`LOGMEM_*`
    values; the parent's own `LOGMEM_*` variables are not inherited). Its output goes to `log`."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LOGMEM_")}
        self.env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **env)
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> ServerProcess:
        """Start the child and wait until it is ready."""
        return self.launch().ready()

    def launch(self) -> ServerProcess:
        """Start the child (on a free port); `ready` waits for it."""
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "logmem.api.app:create_app", "--factory", "--host", "127.0.0.1",
                 "--port", str(port), "--log-level", "warning"],
                env=self.env, stdout=out, stderr=subprocess.STDOUT)
        return self

    def ready(self) -> ServerProcess:
        """Wait until the child's /healthz answers 200 (raises with its log when it exits or never does)."""
        assert self.process is not None, "launch() first"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not answer /healthz in {START_TIMEOUT:.0f} s:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)

    def stop(self) -> int | None:
        """Terminate the child (SIGTERM: uvicorn shuts down gracefully), kill it if it lingers; its exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        return self.process.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
