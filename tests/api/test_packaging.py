"""The `logmem` package itself: `python -m logmem` is the `logmem` command, and importing `logmem` loads nothing."""

from __future__ import annotations

import subprocess
import sys


def test_python_m_logmem_is_the_cli(tmp_path):
    out = subprocess.run([sys.executable, "-m", "logmem", "--help"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: logmem")
    assert "demo" in out.stdout and "serve" in out.stdout and "worker" in out.stdout


def test_python_m_logmem_passes_the_exit_status(tmp_path):
    out = subprocess.run([sys.executable, "-m", "logmem", "no-such-command"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert "invalid choice: 'no-such-command'" in out.stderr


def test_importing_logmem_imports_no_package(tmp_path):
    code = "import sys, logmem; print(sorted(m for m in sys.modules if m.startswith('logmem')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['logmem']"
