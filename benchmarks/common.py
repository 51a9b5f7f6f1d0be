"""What the benchmark scripts share: their --quick / full sizes, how a figure is finished, a server process."""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def sized(args: argparse.Namespace, full: Mapping[str, Any], quick: Mapping[str, Any]) -> argparse.Namespace:
    """`args` with every size the command line left unset taken from `quick` (under --quick) or `full`."""
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def save_figure(fig: Any, axes: Sequence[Any], path: Path) -> None:
    """Grid and legend on each of `axes`, then the figure written to `path` (PNG) and closed."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def logmem_server(env: dict[str, str], log: Path, timeout: float) -> Iterator[str]:
    """The real service (`uvicorn logmem.api.app:create_app --factory`) in its own process on a free loopback
    port, with exactly `env`; yields its base URL once /healthz answers, and stops it cleanly (SIGINT: the
    lifespan closes the runtime) after."""
    with logmem_process(env, log, timeout) as (_, base):
        yield base


@contextmanager
def logmem_process(env: dict[str, str], log: Path, timeout: float) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`logmem_server`, yielding the process too (to signal it); one that has exited by itself is left as it is."""
    with uvicorn_process(["logmem.api.app:create_app", "--factory"], env, log, timeout) as found:
        yield found


@contextmanager
def uvicorn_process(app: list[str], env: dict[str, str], log: Path,
                    timeout: float) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """uvicorn serving `app` (its arguments: the app, and `--factory` or `--app-dir` where needed) in its own process
    on a free loopback port, with exactly `env`; yields (the process, its base URL) once /healthz answers, and stops
    it cleanly (SIGINT) after."""
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", *app, "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
           "--log-level", "warning"]
    with log.open("a") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer within {timeout} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def fill_memory(memory: Any, tenant: str, triggers: Sequence[str], responses: Sequence[str], vectors: Any,
                batch: int = 5_000) -> None:
    """Liked experiences (`triggers[i]` answered by `responses[i]`, embedded as `vectors[i]`) imported in bulk
    (`VectorMemory.import_experiences`): a memory of a size nobody can ingest here (embedding every request) for the
    search side of a benchmark. The index is built from SQL at the next search, as another process would build it."""
    from logmem.memory import Imported

    memory.import_experiences([Imported(t, r, v) for t, r, v in zip(triggers, responses, vectors)], tenant=tenant,
                              batch=batch, progress=True)
