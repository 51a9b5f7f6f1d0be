"""Serving many tenants' LoRA adapters from one loaded base model (peft multi-adapter support).

The base weights are loaded once; each adapter adds only its small LoRA matrices. Which adapter answers is
state of the shared model, so a re-entrant lock is held for the whole `with pool.using(...)` block: two
threads never switch adapters under each other's generation (which a shared model serializes anyway).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from logmem.memory.errors import AdapterError, ConfigError
from logmem.model.loading import ModelNotFoundError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["AdapterPool"]

logger = logging.getLogger(__name__)


def _adapter_name(version: str) -> str:
    """The peft adapter name of `version`.

    peft keeps adapters in `nn.ModuleDict`s, which refuse '.', and may re-initialize an adapter whose name
    is a substring of its method's prefix ("a" in "lora_"): hence word characters only, behind a fixed prefix.
    """
    safe = re.sub(r"\W", "_", version)
    # a hash keeps two versions that differ only in replaced characters ("v1.2", "v1_2") apart
    suffix = "" if safe == version else f"_{hashlib.sha1(version.encode()).hexdigest()[:8]}"
    return f"adapter_{safe}{suffix}"


class AdapterPool:
    """One base model answering each request with its own LoRA adapter, at most `max_loaded` kept in memory.

    `model` is changed in place: the first adapter injects peft's LoRA layers into it. Inference only: the
    model is put in eval mode and every `using` block runs without gradients.

    Args:
        model: a plain `transformers` causal LM, the base every adapter was trained on.
        max_loaded: how many adapters stay loaded; beyond it the least recently used one is deleted.

    Raises:
        ConfigError: `max_loaded` is below 1.
    """

    def __init__(self, model: PreTrainedModel, *, max_loaded: int = 8) -> None:
        if max_loaded < 1:
            raise ConfigError(f"AdapterPool.max_loaded must be at least 1, got {max_loaded}")
        self.max_loaded = max_loaded
        self._model: Any = model.eval()
        self._peft: Any = None  # the peft wrapper, made on the first adapter load
        self._paths: OrderedDict[str, Path] = OrderedDict()  # version -> folder, least recently used first
        self._in_use: list[str | None] = []  # versions of the open `using` blocks, innermost last
        self._lock = threading.RLock()

    @property
    def loaded(self) -> list[str]:
        """Versions of the loaded adapters, least recently used first."""
        with self._lock:
            return list(self._paths)

    @contextmanager
    def using(self, version: str | None, path: str | Path | None = None) -> Iterator[Any]:
        """Hold the model set to adapter `version` (loaded from `path` if needed), or to the base model.

        Args:
            version: the adapter version ("v3"), or None for the base model.
            path: folder the adapter was saved to (`save_pretrained`); needed unless already loaded.

        Yields:
            The model to call `generate` / forward on (the peft wrapper once an adapter exists), with the
            pool's lock held and gradients off until the block ends.

        Raises:
            ModelNotFoundError: `path` holds no adapter (adapter_config.json missing).
            AdapterError: `version` is not loaded and no `path` was given.
        """
        import torch

        with self._lock, torch.no_grad():
            if self._in_use and self._in_use[-1] != version:
                # peft keeps one active state: switching inside an open block would change the outer answer
                raise AdapterError(f"cannot use adapter {version!r} inside a block using {self._in_use[-1]!r}")
            self._in_use.append(version)
            try:
                if version is None:
                    yield from self._base()
                else:
                    self._activate(version, path)
                    yield self._peft
            finally:
                self._in_use.pop()

    def evict(self, version: str) -> None:
        """Delete adapter `version` from memory (e.g. its files were replaced); unknown versions are ignored.

        Raises:
            AdapterError: `version` is in use by an open `using` block of this thread.
        """
        with self._lock:
            if version in self._in_use:
                raise AdapterError(f"adapter {version!r} is in use and cannot be evicted")
            self._drop(version)

    def _base(self) -> Iterator[Any]:
        if self._peft is None:
            yield self._model
        else:
            with self._peft.disable_adapter():
                yield self._peft

    def _activate(self, version: str, path: str | Path | None) -> None:
        """Make `version` the active adapter, loading it first (and evicting the LRU one) when needed."""
        if version in self._paths and (path is None or Path(path) == self._paths[version]):
            self._paths.move_to_end(version)
        else:
            if path is None:
                raise AdapterError(f"adapter {version!r} is not loaded and no path was given")
            self._drop(version)  # a version saved again elsewhere is read afresh
            self._load(version, Path(path))
        self._peft.set_adapter(_adapter_name(version), inference_mode=True)
        while len(self._paths) > self.max_loaded:
            self._drop(next(iter(self._paths)))  # never `version`: it was just moved to the end

    def _drop(self, version: str) -> None:
        if version not in self._paths:
            return
        del self._paths[version]
        if self._paths:
            self._peft.delete_adapter(_adapter_name(version))
        else:  # peft cannot run with no adapter at all: take its layers out, back to the plain model
            self._model = self._peft.unload().eval()
            self._peft = None
        logger.info("evicted adapter %s", version)

    def _load(self, version: str, path: Path) -> None:
        from peft import PeftModel

        if not (path / "adapter_config.json").is_file():
            raise ModelNotFoundError(f"no adapter at {path} (adapter_config.json missing)")
        name = _adapter_name(version)
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(self._model, str(path), adapter_name=name).eval()
        else:
            self._peft.load_adapter(str(path), adapter_name=name)
        self._paths[version] = path
        logger.info("loaded adapter %s from %s (%d loaded)", version, path, len(self._paths))
