"""Loading the generator offline: GGUF conversion cache, its lock and atomicity, errors."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch
from logmem.memory.errors import ConfigError
from logmem.model import loading
from logmem.model.loading import (
    ModelNotFoundError,
    bundled_gguf_path,
    convert_gguf,
    gguf_cache_dir,
    load_generator,
)


def _fake_reader(tiny_lm, calls: list[Path], delay: float = 0.0):
    """Stands in for the slow GGUF read: returns the tiny model and records each call."""
    def read(path: Path):
        calls.append(path)
        time.sleep(delay)
        return tiny_lm
    return read


def _chat_ids(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                             tokenize=False) for t in texts]
    return tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)


# --- the real bundled model -------------------------------------------------------------------------

@pytest.mark.slow
def test_conversion_writes_a_plain_safetensors_cache(smollm_folder: Path, model_home: Path) -> None:
    assert smollm_folder == gguf_cache_dir(bundled_gguf_path(), model_home)
    assert (smollm_folder / "model.safetensors").is_file()
    config = json.loads((smollm_folder / "config.json").read_text())
    assert "quantization_config" not in config  # else loading would go through GGUF again
    assert config["num_hidden_layers"] == 30
    assert not list(smollm_folder.parent.glob(".*.tmp-*"))


@pytest.mark.slow
def test_second_load_reads_the_cache_not_the_gguf(smollm_folder: Path, model_home: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def no_gguf(path: Path):
        raise AssertionError(f"GGUF read again: {path}")
    monkeypatch.setattr(loading, "_read_gguf", no_gguf)
    model, _ = load_generator(home=model_home)
    assert Path(model.name_or_path) == smollm_folder
    assert model.dtype == torch.float32 and not model.training


@pytest.mark.slow
def test_local_folder_and_bfloat16(smollm_folder: Path, model_home: Path) -> None:
    model, _ = load_generator(str(smollm_folder), home=model_home, dtype="bfloat16")
    assert Path(model.name_or_path) == smollm_folder
    assert model.dtype == torch.bfloat16


@pytest.mark.slow
def test_auto_device_is_the_gpu_when_there_is_one(smollm_folder: Path, model_home: Path) -> None:
    model, _ = load_generator(str(smollm_folder), home=model_home, device="auto")
    assert model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.slow
def test_tokenizer_is_ready_for_batched_chat(smollm) -> None:
    _, tokenizer = smollm
    assert tokenizer.pad_token is not None
    assert tokenizer.padding_side == "left"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                         tokenize=False)
    assert "<|im_start|>user\nhi<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


@pytest.mark.slow
def test_generates_text_for_a_chatml_prompt(smollm) -> None:
    model, tokenizer = smollm
    batch = _chat_ids(tokenizer, ["What is the capital of France?", "Say hello."])
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=12, do_sample=False)
    answers = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert all(a.strip() for a in answers)
    assert "Paris" in answers[0]
    # Left padding: the padded (shorter) prompt answers as it does alone.
    alone = _chat_ids(tokenizer, ["Say hello."])
    with torch.no_grad():
        single = model.generate(**alone, max_new_tokens=12, do_sample=False)
    assert tokenizer.decode(single[0, alone["input_ids"].shape[1]:], skip_special_tokens=True) == answers[1]


# --- conversion mechanics, with the GGUF read replaced by the tiny model ----------------------------

def test_leftover_of_a_crashed_conversion_does_not_break_loading(tmp_path: Path, tiny_lm,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = bundled_gguf_path()
    models = tmp_path / "models"
    leftover = models / f".{gguf.stem}.tmp-crashed"
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"half a file")
    (models / f".{gguf.stem}.lock").write_text("")
    calls: list[Path] = []
    monkeypatch.setattr(loading, "_read_gguf", _fake_reader(tiny_lm, calls))

    model, _ = load_generator(home=tmp_path)

    assert calls == [gguf]
    assert not leftover.exists()
    assert Path(model.name_or_path) == gguf_cache_dir(gguf, tmp_path)
    assert model.config.num_hidden_layers == 2


def test_crash_mid_conversion_leaves_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(path: Path):
        raise RuntimeError("killed mid-conversion")
    monkeypatch.setattr(loading, "_read_gguf", crash)
    with pytest.raises(RuntimeError, match="killed"):
        convert_gguf(bundled_gguf_path(), home=tmp_path)
    assert [p.name for p in (tmp_path / "models").iterdir()] == [f".{bundled_gguf_path().stem}.lock"]


def test_concurrent_conversions_convert_once(tmp_path: Path, tiny_lm, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(loading, "_read_gguf", _fake_reader(tiny_lm, calls, delay=0.3))
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(convert_gguf(bundled_gguf_path(), home=tmp_path)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(set(results)) == 1 and len(results) == 3


def test_gguf_file_path_and_changed_source_reconverts(tmp_path: Path, tiny_lm,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = tmp_path / "mine.Q8_0.gguf"
    gguf.write_bytes(b"v1")
    calls: list[Path] = []
    monkeypatch.setattr(loading, "_read_gguf", _fake_reader(tiny_lm, calls))
    home = tmp_path / "home"

    model, tokenizer = load_generator(str(gguf), home=home)
    load_generator(str(gguf), home=home)
    assert Path(model.name_or_path) == home / "models" / "mine.Q8_0"
    assert len(calls) == 1
    assert tokenizer.padding_side == "left"

    gguf.write_bytes(b"version 2")  # a different file under the same name
    load_generator(str(gguf), home=home)
    assert len(calls) == 2


# --- errors ----------------------------------------------------------------------------------------

def test_missing_path_raises_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError, match="no-such-model") as info:
        load_generator(str(missing), home=tmp_path)
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(FileNotFoundError, match="no-such.gguf"):
        convert_gguf(tmp_path / "no-such.gguf", home=tmp_path)


def test_folder_without_config_raises(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_generator(str(tmp_path / "empty"), home=tmp_path)


def test_hub_ids_are_not_fetched(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="never downloaded"):
        load_generator("HuggingFaceTB/SmolLM2-360M-Instruct", home=tmp_path)


def test_unknown_dtype_raises(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="float64"):
        load_generator(home=tmp_path, dtype="float64")
