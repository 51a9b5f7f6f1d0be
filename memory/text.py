"""The text boundary: what text logmem takes in, defined once for files, the CLI and HTTP, on SQLite and PostgreSQL.

Every way in (the log parser `logs.parse_record`, so `logmem ingest` and `POST /v1/interactions`; the HTTP
schemas; the routes' path and query parameters) passes its text through these functions before anything stores,
embeds or tokenizes it. Three kinds of field:

- **Identifiers** (interaction ids, tenants, users, sessions, feedback event ids, path ids): keys stored, indexed
  and compared verbatim, so nothing in them is changed: one holding a lone surrogate or a control character
  (C0, DEL or C1, NUL among them) is refused with an error naming the field (`check_identifier`). Their length
  is checked where they are read (200 characters: `logs.MAX_KEY_LENGTH`, the schemas' `max_length`).
- **Free text** (message content, a correction, a lesson, a query): what a person wrote, kept with what cannot be
  stored or tokenized taken out: a lone surrogate becomes U+FFFD, NUL and the other C0 controls except tab,
  newline and carriage return are removed (`clean_text`). A required text that is empty once cleaned is refused
  by its caller (`require_text`).
- **Metadata** (any JSON object): every key and string cleaned as free text; nested deeper than `MAX_DEPTH`, or
  holding a number that is not finite, it is refused with an error naming the field (`clean_json`).

Why these: UTF-8 (the stores', the tokenizer's, a JSON response's) cannot encode a lone surrogate, which JSON's
`\\ud800` escape still carries in; PostgreSQL's text and JSON types cannot hold NUL, nor its JSON NaN or Infinity,
which SQLite stores; and a key holding a control character (a newline, a terminal escape) prints as another key
in logs, a CSV or a terminal. Other characters (format characters such as zero-width spaces among them) store and
compare the same on both databases, so they pass. Pure functions: no I/O, no state.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .errors import LogFormatError

MAX_DEPTH = 32  # how deep a metadata value may nest (a record's own object is level 1)

_SURROGATE = re.compile("[\ud800-\udfff]")
_DROPPED = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")  # C0 controls but tab, newline, carriage return
_NOT_IN_KEY = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def check_identifier(value: str, *, field: str | None = None) -> str:
    """`value` unchanged when it may be a key.

    Raises:
        LogFormatError: naming `field` and the first character no identifier may hold.
    """
    bad = _NOT_IN_KEY.search(value)
    if bad is not None:
        char = bad.group()
        what = "a lone surrogate" if _SURROGATE.match(char) else "a control character"
        raise LogFormatError(f"holds {what} (U+{ord(char):04X}) at position {bad.start()}; an identifier may "
                             "hold no control character or lone surrogate", field=field)
    return value


def clean_text(value: str) -> str:
    """Free text made storable: lone surrogates become U+FFFD, C0 controls but tab, newline, return are removed."""
    return _DROPPED.sub("", _SURROGATE.sub("\ufffd", value))


def require_text(value: str, *, field: str | None = None) -> str:
    """`clean_text(value)`, which must hold something.

    Raises:
        LogFormatError: naming `field`, when nothing but control characters was sent.
    """
    cleaned = clean_text(value)
    if not cleaned:
        raise LogFormatError("empty once control characters are removed", field=field)
    return cleaned


def clean_json(value: Any, *, field: str | None = None, max_depth: int = MAX_DEPTH) -> Any:
    """A JSON value (as `json.loads` gives it) with every key and string cleaned as free text.

    Raises:
        LogFormatError: naming `field`, when it nests deeper than `max_depth` or holds NaN or an infinity.
    """
    return _clean(value, field, max_depth, 1)


def _clean(value: Any, field: str | None, max_depth: int, depth: int) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise LogFormatError(f"holds {value!r}, which JSON storage refuses; expected a finite number", field=field)
    if not isinstance(value, (dict, list)):
        return value
    if depth > max_depth:
        raise LogFormatError(f"nested deeper than {max_depth} levels", field=field)
    if isinstance(value, dict):
        return {clean_text(str(k)): _clean(v, field, max_depth, depth + 1) for k, v in value.items()}
    return [_clean(v, field, max_depth, depth + 1) for v in value]
