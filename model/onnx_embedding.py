"""The bundled embedder (or any plain BERT-like sentence-transformers folder) under onnxruntime.

The folder's own weights are exported once with `torch.onnx.export` to
`<cache_dir>/<name>-<key>/model.onnx`, where the key hashes the folder's config and weight files, so
changed weights get a fresh export. The export is written to a temporary file and renamed into place
under a file lock: concurrent processes export once and readers never see half a file. Encoding then
needs no torch: the folder's fast tokenizer, one `InferenceSession`, and mean pooling plus L2
normalisation in NumPy, which is what the sentence-transformers modules compute.

Same `name` and `dim` as `SentenceTransformerEmbedder` for the same folder (a memory pins the name),
and the same vectors to float32 rounding (checked against it in the tests).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import re
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from logmem.memory.errors import ConfigError, LogmemError
from logmem.model.embedder_folder import DEFAULT_MAX_SEQ_LENGTH, EmbedderNotFoundError, resolve_embedder_folder
from logmem.model.loading import file_lock

if TYPE_CHECKING:
    import onnxruntime
    from tokenizers import Encoding, Tokenizer

__all__ = ["SUPPORTED_MODEL_TYPES", "FolderSpec", "OnnxEmbedder", "UnsupportedEmbedderError", "ensure_onnx",
           "export_onnx", "inspect_folder", "onnx_cache_key", "write_once"]

logger = logging.getLogger(__name__)

# Bump when the exported graph changes (inputs, outputs, opset): old cache entries are then not reused.
_EXPORT_FORMAT = "logmem-onnx-embedder-1"
_OPSET = 17
# Encoder-only transformers whose last hidden state is all mean pooling needs.
SUPPORTED_MODEL_TYPES = frozenset({"bert", "distilbert", "roberta", "xlm-roberta", "camembert", "mpnet", "electra"})
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_LEGACY_POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                        "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                        "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


class UnsupportedEmbedderError(LogmemError, ValueError):
    """A sentence-transformers folder is not a plain BERT-like transformer with mean pooling."""


@dataclass(frozen=True)
class FolderSpec:
    """What the ONNX path needs to know about a sentence-transformers folder."""

    transformer: Path  # folder of the Hugging Face model and tokenizer (the Transformer module's path)
    model_type: str  # config.json `model_type`, one of SUPPORTED_MODEL_TYPES
    dim: int  # width of the token embeddings, hence of the mean-pooled vectors
    lowercase: bool  # sentence_bert_config `do_lower_case`: lowercase texts before tokenizing


def _read_json(path: Path, expected: type[dict[str, Any]] | type[list[Any]] = dict) -> Any:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UnsupportedEmbedderError(f"cannot read {path}: {exc}") from None
    if not isinstance(value, expected):
        raise UnsupportedEmbedderError(f"{path}: expected a JSON {expected.__name__}, found {type(value).__name__}")
    return value


def _pooling_modes(config: dict[str, Any]) -> list[str]:
    """The pooling modes a Pooling module config turns on (legacy booleans or `pooling_mode`)."""
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        return [mode] if isinstance(mode, str) else [str(m) for m in mode]
    modes = [mode for key, mode in _LEGACY_POOLING_KEYS.items() if config.get(key)]
    return modes or ["mean"]  # sentence-transformers' default when no mode is set


def inspect_folder(folder: Path) -> FolderSpec:
    """Check that `folder` is Transformer -> mean Pooling (-> Normalize) over a BERT-like model.

    Raises:
        UnsupportedEmbedderError: another module chain, pooling mode or model type; the message names it.
    """
    modules = [m if isinstance(m, dict) else {} for m in _read_json(folder / "modules.json", list)]
    kinds = [str(m.get("type", "?")).rsplit(".", 1)[-1] for m in modules]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise UnsupportedEmbedderError(
            f"{folder}: the ONNX runtime handles Transformer -> Pooling (-> Normalize), found "
            f"{' -> '.join(kinds) or 'no modules'}; use runtime='torch' for this model")
    transformer = folder / str(modules[0].get("path", ""))
    pooling = _read_json(folder / str(modules[1].get("path", "")) / "config.json")
    modes = _pooling_modes(pooling)
    if modes != ["mean"]:
        raise UnsupportedEmbedderError(f"{folder}: the ONNX runtime handles mean pooling only, found pooling "
                                       f"{'+'.join(modes)}; use runtime='torch' for this model")
    model_type = str(_read_json(transformer / "config.json").get("model_type"))
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedEmbedderError(
            f"{folder}: the ONNX runtime handles BERT-like encoders ({', '.join(sorted(SUPPORTED_MODEL_TYPES))}), "
            f"found model_type {model_type!r}; use runtime='torch' for this model")
    st_config_path = transformer / "sentence_bert_config.json"
    st_config = _read_json(st_config_path) if st_config_path.is_file() else {}
    task = st_config.get("transformer_task", "feature-extraction")
    if task != "feature-extraction":
        raise UnsupportedEmbedderError(f"{folder}: the ONNX runtime handles feature-extraction transformers, "
                                       f"found transformer_task {task!r}; use runtime='torch' for this model")
    dim = pooling.get("embedding_dimension", pooling.get("word_embedding_dimension"))
    if not isinstance(dim, int) or dim < 1:
        raise UnsupportedEmbedderError(f"{folder}: pooling config has no embedding dimension (found {dim!r})")
    return FolderSpec(transformer, model_type, dim, bool(st_config.get("do_lower_case", False)))


def _weight_files(transformer: Path) -> list[Path]:
    files = sorted(p for p in transformer.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
    if not files:
        raise EmbedderNotFoundError(f"no weights (*.safetensors, *.bin) in {transformer}")
    return files


def onnx_cache_key(transformer: Path) -> str:
    """Hex digest (20 chars) of the export format, config.json and every weight file's name and bytes."""
    digest = hashlib.sha256(_EXPORT_FORMAT.encode())
    for path in [transformer / "config.json", *_weight_files(transformer)]:
        digest.update(f"\0{path.name}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:20]


def export_onnx(transformer: Path, target: Path) -> None:
    """Export the encoder in `transformer` (a Hugging Face model folder) to the ONNX file `target`.

    The graph takes `input_ids`, `attention_mask` and, when the model's forward has it, `token_type_ids`
    (int64, batch x sequence) and returns `last_hidden_state` (float32, batch x sequence x hidden); batch
    and sequence are dynamic. Needs torch and the `onnx` package; takes seconds.
    """
    import torch
    from transformers import AutoModel

    # Eager attention traces to plain MatMul/Softmax, which every opset and runtime reads.
    model = AutoModel.from_pretrained(str(transformer), local_files_only=True, attn_implementation="eager").eval()
    accepted = inspect.signature(model.forward).parameters
    names = [n for n in _MODEL_INPUTS if n in accepted]

    class LastHiddenState(torch.nn.Module):
        # The model is called with keyword arguments: positional order differs between architectures.
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(names, inputs))).last_hidden_state  # type: ignore[no-any-return]

    # The example batch is padded: tracing an all-ones mask could let the model drop the mask altogether.
    ids = (torch.arange(16).reshape(2, 8) % (model.config.vocab_size - 1) + 1).long()
    example = {"input_ids": ids, "attention_mask": torch.tensor([[1] * 8, [1] * 5 + [0] * 3]),
               "token_type_ids": torch.zeros_like(ids)}
    axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches
        torch.onnx.export(LastHiddenState(), tuple(example[n] for n in names), str(target), input_names=names,
                          output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=_OPSET,
                          do_constant_folding=True, dynamo=False)


def ensure_onnx(transformer: Path, cache_dir: Path, *, label: str) -> Path:
    """The ONNX export of `transformer` in `cache_dir`, exported first if missing; safe across processes.

    Args:
        transformer: the Hugging Face model folder inside a sentence-transformers folder.
        cache_dir: where exports live, one folder `<label>-<key>` each.
        label: readable prefix of the folder name (the embedder name).

    Returns:
        Path of `model.onnx`.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "embedder"
    entry = cache_dir / f"{safe}-{onnx_cache_key(transformer)}"
    onnx_path = entry / "model.onnx"

    def export(tmp: Path) -> None:
        logger.info("exporting %s to ONNX at %s (once)", transformer, onnx_path)
        export_onnx(transformer, tmp)

    write_once(onnx_path, cache_dir / f".{entry.name}.lock", export)
    return onnx_path


def write_once(path: Path, lock: Path, write: Callable[[Path], None]) -> None:
    """Make `path` with `write(temporary path)` unless it exists; safe across processes: under the file `lock`,
    written beside it and renamed into place, so readers never see half a file and a crash leaves none."""
    if path.is_file():
        return
    with file_lock(lock):
        if path.is_file():  # another process wrote it while we waited
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # Holding the lock, any temporary file is a crashed writer's leftover.
        for stale in path.parent.glob(f".{path.name}.tmp-*"):
            stale.unlink(missing_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        try:
            write(tmp)
            tmp.chmod(0o644)  # mkstemp makes it private; the cache is as readable as its folder
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


class OnnxEmbedder:
    """An `Embedder` over a local sentence-transformers folder, run by onnxruntime on the CPU.

    Construction reads only the folder's JSON files; the export (first time only), the session and the
    tokenizer load on the first `encode`.

    Args:
        path: a local sentence-transformers folder; None means the bundled all-MiniLM-L6-v2.
        cache_dir: where the ONNX export is kept (`default_embedder` passes `<home>/embedders`).
        threads: onnxruntime intra-op threads (one query is fastest on 1-2; more only for big batches).
        batch_size: at most this many texts per forward pass.
        batch_tokens: at most this many tokens per forward pass, padding included: texts are sorted by their
            token count, so a pass of long texts holds fewer of them (ShareGPT user turns: 1.23x the real
            tokens padded, against 2.18x in passes of 64 sorted by characters).
        max_seq_length: longer texts are truncated to this many tokens.
        name: stable identifier stored with the memory; defaults to the one `SentenceTransformerEmbedder`
            gives the same folder.
        show_progress: show a progress bar over batches while encoding.
        query_cache: how many recent texts of small calls (at most `QUERY_CALL` texts: requests, not ingest
            batches) keep their vectors, so that a repeated request is not embedded again; 0 turns it off.

    Raises:
        EmbedderNotFoundError: `path` does not exist or has no `modules.json`.
        UnsupportedEmbedderError: the folder is not a BERT-like transformer with mean pooling.
        ConfigError: `threads`, `batch_size`, `batch_tokens` or `max_seq_length` is not positive, or
            `query_cache` is negative.
    """

    QUERY_CALL = 8  # calls with at most this many texts are requests: their vectors go to the query cache

    def __init__(self, path: str | Path | None = None, *, cache_dir: str | Path, threads: int = 1,
                 batch_size: int = 64, batch_tokens: int = 2048, max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH,
                 name: str | None = None, show_progress: bool = False, query_cache: int = 1024) -> None:
        for option, value, least in (("threads", threads, 1), ("batch_size", batch_size, 1),
                                     ("batch_tokens", batch_tokens, 1),
                                     ("max_seq_length", max_seq_length, 1), ("query_cache", query_cache, 0)):
            if value < least:
                raise ConfigError(f"{option} must be >= {least}, got {value}")
        self.path, default_name = resolve_embedder_folder(path)
        self._name = name or default_name
        self.spec = inspect_folder(self.path)
        self.cache_dir = Path(cache_dir).expanduser()
        self.threads = threads
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.max_seq_length = max_seq_length
        self.show_progress = show_progress
        self.onnx_path: Path | None = None  # set on load
        self._loaded: tuple[onnxruntime.InferenceSession, Tokenizer, list[str], tuple[int, int]] | None = None
        self._lock = threading.Lock()
        self.query_cache = query_cache
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()  # text -> vector, least recent first
        self._recent_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OnnxEmbedder(name={self._name!r}, path={str(self.path)!r}, threads={self.threads})"

    @property
    def name(self) -> str:
        """Stable identifier of the model, e.g. "all-MiniLM-L6-v2" (the same as under torch)."""
        return self._name

    @property
    def dim(self) -> int:
        """Width `d` of the vectors (the pooling width from the folder's config)."""
        return self.spec.dim

    def _load(self) -> tuple[onnxruntime.InferenceSession, Tokenizer, list[str], tuple[int, int]]:
        with self._lock:
            if self._loaded is None:
                import onnxruntime as ort
                from transformers import AutoTokenizer

                onnx_path = ensure_onnx(self.spec.transformer, self.cache_dir, label=self._name)
                options = ort.SessionOptions()
                options.intra_op_num_threads = self.threads
                options.inter_op_num_threads = 1
                options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
                session = ort.InferenceSession(str(onnx_path), sess_options=options,
                                               providers=["CPUExecutionProvider"])
                wrapper = AutoTokenizer.from_pretrained(str(self.spec.transformer), local_files_only=True)
                if not wrapper.is_fast:
                    raise UnsupportedEmbedderError(f"{self.path}: the ONNX runtime needs a fast tokenizer, "
                                                   f"found {type(wrapper).__name__}")
                # A private copy of the Rust tokenizer with truncation set once and no padding (a pass is
                # padded here, to its longest): calls never mutate it, so concurrent encodes are safe.
                tokenizer = type(wrapper.backend_tokenizer).from_str(wrapper.backend_tokenizer.to_str())
                tokenizer.enable_truncation(max_length=self.max_seq_length)
                tokenizer.no_padding()
                pad = (int(wrapper.pad_token_id), int(wrapper.pad_token_type_id))
                logger.info("loaded ONNX embedder %s from %s (%d threads)", self._name, onnx_path, self.threads)
                self.onnx_path = onnx_path
                self._loaded = (session, tokenizer, [i.name for i in session.get_inputs()], pad)
            return self._loaded

    def _tokenize(self, texts: list[str]) -> list[Encoding]:
        tokenizer = self._load()[1]
        return tokenizer.encode_batch([t.lower() for t in texts] if self.spec.lowercase else texts)

    def _run(self, encodings: Sequence[Encoding]) -> np.ndarray:
        """Mean-pooled, L2-normalised vectors of tokenised non-empty texts, one pass padded to the longest."""
        session, _, inputs, (pad_id, pad_type_id) = self._load()
        width = max(len(e.ids) for e in encodings)
        columns = {"input_ids": np.full((len(encodings), width), pad_id, dtype=np.int64),
                   "attention_mask": np.zeros((len(encodings), width), dtype=np.int64),
                   "token_type_ids": np.full((len(encodings), width), pad_type_id, dtype=np.int64)}
        for row, e in enumerate(encodings):
            n = len(e.ids)
            columns["input_ids"][row, :n] = e.ids
            columns["attention_mask"][row, :n] = e.attention_mask
            columns["token_type_ids"][row, :n] = e.type_ids
        (hidden,) = session.run(["last_hidden_state"], {name: columns[name] for name in inputs})  # (n, seq, dim)
        mask = columns["attention_mask"].astype(np.float32)  # (n, seq)
        summed = np.matmul(mask[:, None, :], hidden)[:, 0]  # (n, dim): sum of the real tokens' vectors
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled.astype(np.float32, copy=False)

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        """Vectors of non-empty `texts` in one pass: (n, dim) float32."""
        return self._run(self._tokenize(texts))

    def _passes(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices of texts grouped into forward passes: longest first, each pass at most `batch_size` texts
        and `batch_tokens` tokens padded to its first (longest) text."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        passes, start = [], 0
        while start < len(order):
            room = max(1, min(self.batch_size, self.batch_tokens // max(lengths[order[start]], 1)))
            passes.append(order[start:start + room])
            start += room
        return passes

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed `texts`.

        Exact duplicates are embedded once; texts run in passes of similar token counts, each padded only to
        its longest, and come back in the order given.

        Args:
            texts: strings to embed; empty or whitespace-only strings give zero rows.

        Returns:
            float32 array of shape (len(texts), dim), each row of unit L2 norm (zero rows for empty text).
        """
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of strings, not a single string")
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        unique = list(dict.fromkeys(t for t in texts if t.strip()))
        if not unique:
            return out
        if self.query_cache and len(unique) <= self.QUERY_CALL:
            return self._encode_recent(texts, unique, out)
        encodings = self._tokenize(unique)
        xb = np.empty((len(unique), self.dim), dtype=np.float32)
        passes: Iterable[list[int]] = self._passes([len(e.ids) for e in encodings])
        if self.show_progress:
            from tqdm.auto import tqdm

            passes = tqdm(passes, desc="embedding", unit="batch")
        for rows in passes:
            xb[rows] = self._run([encodings[i] for i in rows])
        return _fill(out, texts, unique, xb)

    def _encode_recent(self, texts: list[str], unique: list[str], out: np.ndarray) -> np.ndarray:
        """`encode` for a request's few texts: the ones embedded lately come from the cache."""
        with self._recent_lock:
            known = {t: self._recent[t] for t in unique if t in self._recent}
            for t in known:
                self._recent.move_to_end(t)
        missing = [t for t in unique if t not in known]
        if missing:
            fresh = self._encode_batch(sorted(missing, key=len, reverse=True))
            with self._recent_lock:
                for t, v in zip(sorted(missing, key=len, reverse=True), fresh):
                    known[t] = self._recent[t] = v
                    self._recent.move_to_end(t)
                while len(self._recent) > self.query_cache:
                    self._recent.popitem(last=False)
        return _fill(out, texts, unique, np.stack([known[t] for t in unique]))


def _fill(out: np.ndarray, texts: list[str], unique: list[str], xb: np.ndarray) -> np.ndarray:
    """`out` with each non-empty text's row set from `xb`, whose rows follow `unique`."""
    row_of = {t: i for i, t in enumerate(unique)}
    keep = [i for i, t in enumerate(texts) if t in row_of]
    out[keep] = xb[[row_of[texts[i]] for i in keep]]
    return out
