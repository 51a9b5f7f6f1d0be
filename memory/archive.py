"""A tenant archive: one zip file that carries a tenant from one installation to another (`logmem export` / `import`).

Members: one JSON-lines file per table (`interactions.jsonl`, `experiences.jsonl`, ...: the store's `transfer` says
which rows and columns), `vectors.npy` (the experiences' float32 vectors, in their order), each adapter's PEFT folder
as `adapters/<version>/adapter_config.json` and `adapter_model.safetensors`, and `manifest.json`: the format and its
version, logmem's version, the embedder's name and width, the row counts, the adapters left out and why, and the
size and SHA-256 of every other member. `read_archive` checks all of it, and every row, before an import writes
anything.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import shutil
import struct
import time
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .distill import split_instruction
from .embedding import Embedder
from .errors import ArchiveError, DimensionMismatchError, NotFoundError
from .indexes import TenantIndexes
from .store import SCHEMA_VERSION, Store, TenantRows, Written
from .store.transfer import TABLES, column_kinds
from .vocabulary import tenant_key

logger = logging.getLogger(__name__)
FORMAT, FORMAT_VERSION = "logmem-tenant", 1
MANIFEST, VECTORS = "manifest.json", "vectors.npy"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # what `save_pretrained` writes, and serving loads
MAX_HEADER = 100_000_000  # a safetensors header longer than this is not one
EMBED_BATCH = 256  # experiences embedded at once when an import re-embeds


@dataclass
class Archive:
    """A verified archive: its manifest, its rows per table, the experiences' vectors (None: not carried), and each
    adapter's files by version."""

    path: str
    manifest: dict[str, Any]
    tables: dict[str, list[dict[str, Any]]]
    vectors: np.ndarray | None
    adapters: dict[str, dict[str, bytes]] = field(default_factory=dict)

    @property
    def tenant(self) -> str:
        return str(self.manifest["tenant"])

    @property
    def embedder(self) -> tuple[str, int]:
        """The name and width of the embedder its vectors came from."""
        return str(self.manifest["embedder"]["name"]), int(self.manifest["embedder"]["dim"])


def logmem_version() -> str:
    try:
        return metadata.version("logmem")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


# --- writing --------------------------------------------------------------------------------------------------
def write_archive(path: str | Path, *, tenant: str, rows: TenantRows, embedder: str, dim: int) -> dict[str, Any]:
    """Write `rows` as `tenant`'s archive at `path` (through a temporary file: never half written). Adapters whose
    weights are stale (trained on experiences since forgotten) or missing are left out, with a warning and a line in
    the manifest's `left_out`. Returns the manifest."""
    path = Path(path)
    tables = {name: list(r) for name, r in rows.tables.items()}
    left_out, folders = _adapters_to_carry(tables["adapters"], rows.adapter_paths)
    gone = {a["version"] for a in left_out}
    tables["adapters"] = [a for a in tables["adapters"] if a["version"] not in gone]
    members: dict[str, dict[str, Any]] = {}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            def put(name: str, data: bytes) -> None:
                zf.writestr(name, data)
                members[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

            for name in TABLES:
                put(f"{name}.jsonl", b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n"
                                              for r in tables[name]))
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(rows.vectors, dtype=np.float32), allow_pickle=False)
            put(VECTORS, buffer.getvalue())
            for version, folder in folders.items():
                for file in ADAPTER_FILES:
                    put(f"adapters/{version}/{file}", (folder / file).read_bytes())
            manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "logmem_version": logmem_version(),
                        "schema_version": SCHEMA_VERSION, "tenant": tenant, "exported_at": time.time(),
                        "embedder": {"name": embedder, "dim": int(dim)},
                        "counts": {name: len(tables[name]) for name in TABLES},
                        "active_adapter": next((a["version"] for a in tables["adapters"] if a["active"]), None),
                        "left_out": left_out, "members": members}
            zf.writestr(MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return manifest


def _adapters_to_carry(adapters: list[dict[str, Any]],
                       paths: dict[str, str]) -> tuple[list[dict[str, str]], dict[str, Path]]:
    """(the adapters left out, each with why; the folders of those carried, by version)."""
    left_out, folders = [], {}
    for a in adapters:
        folder = Path(paths.get(a["version"], ""))
        if a["stale_at"] is not None:
            why = "trained on experiences since forgotten: its weights hold them"
        elif not all((folder / f).is_file() for f in ADAPTER_FILES):
            why = f"its folder {folder} lacks {' or '.join(ADAPTER_FILES)}"
        else:
            folders[a["version"]] = folder
            continue
        left_out.append({"version": a["version"], "reason": why})
        logger.warning("adapter %s left out of the export: %s", a["version"], why)
    return left_out, folders


# --- reading --------------------------------------------------------------------------------------------------
def read_archive(path: str | Path) -> Archive:
    """The archive at `path`, verified: its manifest (format, version, embedder), every member listed there present
    with its size and SHA-256 and no member unlisted, every row of the right fields and types, every link between
    rows to a row in the archive, the vectors one per experience, and each adapter's config and safetensors readable.

    Raises:
        ArchiveError: naming the archive, the member (and line and field) and what is wrong with it.
    """
    where = str(path)
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise ArchiveError("no such file", archive=where) from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"not a zip archive, or truncated ({exc})", archive=where) from None
    with zf:
        manifest = _manifest(zf, where)
        data = {name: _member(zf, where, name, entry) for name, entry in manifest["members"].items()}
    tables = {name: _rows(data, where, name) for name in TABLES}
    _check_links(tables, where)
    vectors = _vectors(data.get(VECTORS), where, len(tables["experiences"]), int(manifest["embedder"]["dim"]))
    adapters: dict[str, dict[str, bytes]] = {}
    for a in tables["adapters"]:
        files = {f: data.get(f"adapters/{a['version']}/{f}") for f in ADAPTER_FILES}
        for f, content in files.items():
            if content is None:
                raise ArchiveError(f"adapter {a['version']}'s {f} is not in the archive", archive=where,
                                   member=f"adapters/{a['version']}/{f}")
            _check_adapter_file(content, where, f"adapters/{a['version']}/{f}")
        adapters[a["version"]] = {f: c for f, c in files.items() if c is not None}
    return Archive(where, manifest, tables, vectors, adapters)


def _manifest(zf: zipfile.ZipFile, where: str) -> dict[str, Any]:
    try:
        manifest = json.loads(zf.read(MANIFEST))
    except KeyError:
        raise ArchiveError("missing: this is not a logmem tenant archive", archive=where, member=MANIFEST) from None
    except (ValueError, zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"unreadable ({exc})", archive=where, member=MANIFEST) from None
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if not isinstance(manifest, dict) or found != FORMAT:
        raise ArchiveError(f"not a logmem tenant archive (format {found!r}, expected {FORMAT!r})", archive=where,
                           member=MANIFEST, field="format")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArchiveError(f"format version {manifest.get('format_version')!r}; this logmem reads {FORMAT_VERSION}",
                           archive=where, member=MANIFEST, field="format_version")
    for key, kind in (("tenant", str), ("members", dict), ("embedder", dict)):
        if not isinstance(manifest.get(key), kind):
            raise ArchiveError(f"expected a {kind.__name__}", archive=where, member=MANIFEST, field=key)
    embedder = manifest["embedder"]
    if not isinstance(embedder.get("name"), str) or not isinstance(embedder.get("dim"), int) or embedder["dim"] < 1:
        raise ArchiveError("expected {\"name\": str, \"dim\": int >= 1}", archive=where, member=MANIFEST,
                           field="embedder")
    listed, present = set(manifest["members"]), set(zf.namelist()) - {MANIFEST}
    for name in sorted(present - listed):
        raise ArchiveError("not listed in the manifest (added after export?)", archive=where, member=name)
    for name in [f"{t}.jsonl" for t in TABLES] + [VECTORS]:
        if name not in listed:
            raise ArchiveError("not listed in the manifest", archive=where, member=name)
    for name in sorted(listed - present):
        raise ArchiveError("listed in the manifest but missing from the archive (truncated?)", archive=where,
                           member=name)
    return manifest


def _member(zf: zipfile.ZipFile, where: str, name: str, entry: Any) -> bytes:
    """A member's bytes, checked against the manifest's size and SHA-256 (its size before it is read)."""
    if not (isinstance(entry, dict) and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)):
        raise ArchiveError("its manifest entry needs a size and a sha256", archive=where, member=MANIFEST,
                           field=f"members.{name}")
    if zf.getinfo(name).file_size != entry["size"]:
        raise ArchiveError(f"{zf.getinfo(name).file_size} bytes, the manifest says {entry['size']}", archive=where,
                           member=name)
    try:
        data = zf.read(name)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:  # a bad CRC, a cut stream
        raise ArchiveError(f"unreadable ({exc})", archive=where, member=name) from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise ArchiveError(f"checksum mismatch: sha256 {digest}, the manifest says {entry['sha256']} "
                           "(changed after export)", archive=where, member=name)
    return data


def _rows(data: dict[str, bytes], where: str, name: str) -> list[dict[str, Any]]:
    """The rows of `<name>.jsonl`, each checked for the table's archived fields and their types."""
    member, kinds = f"{name}.jsonl", column_kinds(name)
    rows = []
    for line, text in enumerate(data[member].decode("utf-8", errors="strict").splitlines(), start=1):
        try:
            row = json.loads(text)
        except ValueError as exc:
            raise ArchiveError(f"not JSON ({exc})", archive=where, member=member, line=line) from None
        if not isinstance(row, dict):
            raise ArchiveError("expected a JSON object", archive=where, member=member, line=line)
        for key in row.keys() - kinds.keys():
            raise ArchiveError("unknown field", archive=where, member=member, line=line, field=key)
        for key, (kind, nullable) in kinds.items():
            if key not in row:
                raise ArchiveError("missing", archive=where, member=member, line=line, field=key)
            value = row[key]
            wrong = (value is None and not nullable) or (value is not None and (
                not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)))
            if wrong:
                names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
                raise ArchiveError(f"expected {names}{' or null' if nullable else ''}, got {json.dumps(value)[:80]}",
                                   archive=where, member=member, line=line, field=key)
        rows.append(row)
    return rows


def _check_links(tables: dict[str, list[dict[str, Any]]], where: str) -> None:
    """Keys unique where the store's are, and every link to an interaction or experience to one in the archive."""
    ids: dict[str, set[Any]] = {}
    for name, key in (("interactions", "id"), ("interactions", "ext_id"), ("experiences", "id"),
                      ("experiences", "content_hash"), ("adapters", "version")):
        seen: set[Any] = set()
        for line, row in enumerate(tables[name], start=1):
            if row[key] in seen:
                raise ArchiveError(f"{row[key]!r} appears twice", archive=where, member=f"{name}.jsonl", line=line,
                                   field=key)
            seen.add(row[key])
        ids[f"{name}.{key}"] = seen
    for name in TABLES:
        for line, row in enumerate(tables[name], start=1):
            for key, target in (("interaction_id", "interactions"), ("experience_id", "experiences")):
                if row.get(key) is not None and row[key] not in ids[f"{target}.id"]:
                    raise ArchiveError(f"{row[key]} is not an id of {target}.jsonl", archive=where,
                                       member=f"{name}.jsonl", line=line, field=key)


def _vectors(data: bytes | None, where: str, n: int, d: int) -> np.ndarray | None:
    if data is None:
        return None
    try:
        xb = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ArchiveError(f"not a NumPy array file ({exc})", archive=where, member=VECTORS) from None
    if xb.dtype != np.float32 or xb.shape != (n, d):
        raise ArchiveError(f"{xb.dtype} {xb.shape}, expected float32 ({n}, {d}): one vector per experience",
                           archive=where, member=VECTORS)
    return xb


def _check_adapter_file(content: bytes, where: str, member: str) -> None:
    """A PEFT config that is a JSON object, a safetensors file whose header reads (8 bytes of length, then JSON)."""
    try:
        if member.endswith(".json"):
            if not isinstance(json.loads(content), dict):
                raise ValueError("not a JSON object")
            return
        (length,) = struct.unpack("<Q", content[:8])
        if length > min(MAX_HEADER, len(content) - 8):
            raise ValueError(f"a header of {length} bytes in a file of {len(content)}")
        if not isinstance(json.loads(content[8:8 + length]), dict):
            raise ValueError("its header is not a JSON object")
    except (ValueError, struct.error) as exc:
        raise ArchiveError(f"not a valid {'PEFT config' if member.endswith('.json') else 'safetensors file'} "
                           f"({exc})", archive=where, member=member) from None


def require_rows(rows: TenantRows, tenant: str) -> None:
    """Refuse to export a tenant with nothing in it (a mistyped name would give an empty archive)."""
    if not any(rows.tables[name] for name in ("interactions", "experiences", "adapters")):
        raise NotFoundError(f"tenant {tenant!r} holds no interactions, experiences or adapters: nothing to export")


def export_tenant(store: Store, path: str | Path, *, tenant: str, embedder: str, dim: int) -> dict[str, Any]:
    """Write `tenant`'s archive at `path` from one snapshot of its rows; returns the manifest."""
    rows = store.read_tenant(tenant=tenant, d=dim)
    require_rows(rows, tenant)
    return write_archive(path, tenant=tenant, rows=rows, embedder=embedder, dim=dim)


# --- import ---------------------------------------------------------------------------------------------------
@dataclass
class ImportReport:
    """What one import did: rows added and rows already present (kept as they were), per table."""

    tenant: str  # the tenant written
    source: str  # the tenant the archive was exported from
    added: dict[str, int]
    kept: dict[str, int]
    adapters: dict[str, str]  # the archive's adapter versions -> their versions here
    reembedded: bool  # the vectors were computed here (another embedder, or asked), not carried
    left_out: list[dict[str, str]]  # adapters the export left out, and why

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


def import_tenant(path: str | Path, *, store: Store, indexes: TenantIndexes, embedder: Embedder, home: Path,
                  tenant: str | None = None, reembed: bool | None = None, progress: bool = False) -> ImportReport:
    """Import the archive at `path` as `tenant` (default: the tenant it was exported from).

    The archive is verified whole first (`read_archive`); then the vectors are taken from it or computed, the
    adapters' folders written under `home/adapters`, and the rows written in one transaction, the index following
    after commit as it does after an ingest. Rows already present are kept (importing twice changes nothing).

    Args:
        reembed: None: compute the vectors only when the archive's embedder is not this memory's; True: always;
            False: never (an archive of another embedder is then refused).

    Raises:
        ArchiveError: the archive is damaged, tampered with or of another format, or of another embedder with
            `reembed=False`. Nothing is written.
    """
    archive = read_archive(path)
    target = tenant or archive.tenant
    vectors, reembedded = archive_vectors(archive, embedder, reembed=reembed, progress=progress)
    folders, made = _adapter_folders(archive, Path(home) / "adapters", target)
    try:
        written = store.retry_on_conflict(functools.partial(_write, store, indexes, archive, target, vectors, folders))
    except BaseException:
        for folder in made:  # the rows never committed: their weights go too
            shutil.rmtree(folder, ignore_errors=True)
        raise
    logger.info("imported %s as tenant %r: added %s", archive.path, target,
                {k: v for k, v in written.added.items() if v})
    return ImportReport(target, archive.tenant, written.added, written.kept, written.versions, reembedded,
                        list(archive.manifest.get("left_out") or []))


def _write(store: Store, indexes: TenantIndexes, archive: Archive, tenant: str, vectors: np.ndarray,
           folders: dict[str, str]) -> Written:
    """The rows in one transaction, the new vectors staged and logged as ingest does (`TenantIndexes.pending`,
    `stage`, a generation bumped in the transaction, `committed` after it)."""
    index = indexes.pending(tenant)
    generation = None
    with store.transaction() as tx:
        written = store.write_tenant(tx, tenant=tenant, tables=archive.tables, vectors=vectors, adapter_paths=folders)
        if len(written.experience_ids):
            index.add(written.experience_ids, written.vectors)
            indexes.stage(tx, index)
            generation = store.bump_generation(tx, tenant=tenant, added=written.experience_ids)
    if generation is not None:
        indexes.committed(index, generation)
    return written


def archive_vectors(archive: Archive, embedder: Embedder, *, reembed: bool | None,
                    progress: bool = False) -> tuple[np.ndarray, bool]:
    """(the experiences' vectors for this memory, whether they were computed here): the archive's own when its
    embedder is this one's (unless `reembed`), else each experience's trigger, less its shared instruction, embedded
    again as ingest embeds it."""
    name, dim = archive.embedder
    same = (name, dim) == (embedder.name, embedder.dim)
    if not same and reembed is False:
        raise ArchiveError(f"its vectors come from embedder {name!r} (d={dim}), this memory's is {embedder.name!r} "
                           f"(d={embedder.dim}); import it re-embedding (without --no-reembed)",
                           archive=archive.path, member=MANIFEST, field="embedder")
    if same and not reembed and archive.vectors is not None:
        return archive.vectors, False
    rows = archive.tables["experiences"]
    bodies = [split_instruction(r["trigger"], {r["instruction"]})[1] if r["instruction"] else r["trigger"]
              for r in rows]
    parts = [np.empty((0, embedder.dim), dtype=np.float32)]
    for start in tqdm(range(0, len(bodies), EMBED_BATCH), desc="re-embed", unit="batch", disable=not progress):
        xb = np.asarray(embedder.encode(bodies[start:start + EMBED_BATCH]), dtype=np.float32)
        if xb.shape != (len(bodies[start:start + EMBED_BATCH]), embedder.dim):
            raise DimensionMismatchError(f"embedder returned shape {xb.shape}, expected "
                                         f"({len(bodies[start:start + EMBED_BATCH])}, {embedder.dim})")
        parts.append(xb)
    logger.info("re-embedded %d experiences of %s with %s", len(bodies), archive.path, embedder.name)
    return np.vstack(parts), True


def _adapter_folders(archive: Archive, root: Path, tenant: str) -> tuple[dict[str, str], list[Path]]:
    """(archive version -> the folder its files are in here, the folders this call made). A folder is named by the
    tenant and its weights' hash, so a second import of the same adapter finds it there."""
    folders: dict[str, str] = {}
    made: list[Path] = []
    for version, files in archive.adapters.items():
        digest = hashlib.sha256(files[ADAPTER_FILES[1]]).hexdigest()[:16]
        folder = root / f"{tenant_key(tenant)}-import-{digest}"
        folders[version] = str(folder)
        if all((folder / f).is_file() and (folder / f).read_bytes() == files[f] for f in ADAPTER_FILES):
            continue
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f, content in files.items():
            (tmp / f).write_bytes(content)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        made.append(folder)
    return folders, made
