"""Atomic checkpoints: written to a temp folder, renamed into place, the last K kept."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

_NAME = re.compile(r"^step-(\d{8})$")
COMPLETE = "COMPLETE"


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and (p / COMPLETE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


@contextlib.contextmanager
def atomic_dir(final: Path, prefix: str | None = None) -> Iterator[Path]:
    """Yield a temp folder beside `final`; on success it replaces `final` in one rename, on error it goes."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix or f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_checkpoint(output_dir: str | Path, step: int, write: Callable[[Path], None], keep: int) -> Path:
    """`write(tmp_folder)` fills a temp folder; it becomes checkpoints/step-NNNNNNNN atomically."""
    root = checkpoint_root(output_dir)
    final = root / f"step-{step:08d}"
    with atomic_dir(final, prefix=f".tmp-step-{step:08d}-") as tmp:
        write(tmp)
        (tmp / COMPLETE).write_text("ok\n")
    for _, old in list_checkpoints(output_dir)[:-keep]:
        (old / COMPLETE).unlink(missing_ok=True)  # first, so a kill mid-delete leaves no "complete" half folder
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def find_resume_checkpoint(output_dir: str | Path, resume: str) -> Path | None:
    if resume == "never":
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / COMPLETE).is_file():
        raise FileNotFoundError(f"run.resume: '{resume}' is not a complete checkpoint folder")
    return path


def save_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")


def load_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def torch_save(obj, path: Path) -> None:
    torch.save(obj, path)


def torch_load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=False)
