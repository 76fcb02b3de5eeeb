"""JSONL reading and appending with errors that name file, line and field."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad input data; the message names the file, the line and the field."""


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line_number, object) for each non-blank line; raise DataError on bad lines."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file does not exist")
    with open(p, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{p}:{lineno}: not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r})") from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{p}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def require_str(obj: dict[str, Any], key: str, where: str, allow_empty: bool = False) -> str:
    if key not in obj:
        raise DataError(f"{where}: missing field '{key}'")
    v = obj[key]
    if not isinstance(v, str):
        raise DataError(f"{where}: field '{key}' must be a string, got {type(v).__name__}")
    if not allow_empty and not v.strip():
        raise DataError(f"{where}: field '{key}' is empty")
    return v


def cut_torn_tail(path: str | Path) -> bool:
    """Remove a partial last line (no trailing newline) that a kill left in an appended JSONL; True if cut."""
    p = Path(path)
    if not p.exists():
        return False
    data = p.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    with open(p, "r+b") as fh:
        fh.truncate(data.rfind(b"\n") + 1)
    return True


def append_jsonl(path: str | Path, obj: dict[str, Any]) -> None:
    """Append one row and flush it to disk, so a kill loses at most the row in flight."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def collect_unique(rows_with_where, empty_message: str) -> list:
    """Rows (each with an `id`) in order; a repeated id names both places; no rows at all is an error."""
    rows, seen = [], {}
    for where, row in rows_with_where:
        if row.id in seen:
            raise DataError(f"{where}: field 'id' duplicates '{row.id}' from {seen[row.id]}")
        seen[row.id] = where
        rows.append(row)
    if not rows:
        raise DataError(empty_message)
    return rows
