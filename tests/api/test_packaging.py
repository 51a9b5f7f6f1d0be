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


def test_the_wheel_lists_every_package_folder():
    """A package folder pyproject.toml does not list is left out of the wheel (an editable install hides that)."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {f"logmem.{name}": folder for name, folder in
            ((k.removeprefix("logmem."), v) for k, v in config["package-dir"].items()) if name != "logmem"}
    found = {"logmem"} | {
        ".".join([package, *init.parent.relative_to(root / folder).parts])
        for package, folder in dirs.items() for init in (root / folder).rglob("__init__.py")}
    assert found <= set(config["packages"]), sorted(found - set(config["packages"]))
