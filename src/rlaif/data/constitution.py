"""A constitution: named principles, each a critique request and a revision request (YAML), for Constitutional
AI's critique-and-revise phase (`rlaif critique`) and for judging by principle (`judge.constitution`).

    name: my-constitution
    principles:
      - {name: accuracy, critique: "Identify ... in your last answer ...", revision: "Rewrite your answer ..."}

`builtin:default` is rlaif's own (assets/constitution/default.yaml). Errors name the file and the key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from .jsonl import DataError


@dataclass(frozen=True)
class Principle:
    name: str
    critique: str  # what the critic is asked to point out
    revision: str  # how the answer is to be rewritten


@dataclass(frozen=True)
class Constitution:
    name: str
    principles: tuple[Principle, ...]
    source: str
    sha256: str


def load_constitution(arg: str) -> Constitution:
    if arg.startswith("builtin:"):
        path = Path(str(resources.files("rlaif") / "assets" / "constitution" / f"{arg.split(':', 1)[1]}.yaml"))
        if not path.is_file():
            raise DataError(f"constitution '{arg}': no such built-in (builtin:default)")
    else:
        path = Path(arg).expanduser()
        if not path.is_file():
            raise DataError(f"{path}: constitution file does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("principles"), list) or not data["principles"]:
        raise DataError(f"{path}: needs a mapping with a non-empty list 'principles'")
    unknown = set(data) - {"name", "principles"}
    if unknown:
        raise DataError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} (known: name, principles)")
    out = []
    for i, p in enumerate(data["principles"]):
        where = f"{path}: principles[{i}]"
        if not isinstance(p, dict):
            raise DataError(f"{where}: must be a mapping with name, critique, revision")
        unknown = set(p) - {"name", "critique", "revision"}
        if unknown:
            raise DataError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        for key in ("name", "critique", "revision"):
            if not isinstance(p.get(key), str) or not p[key].strip():
                raise DataError(f"{where}.{key}: must be a non-empty string")
        out.append(Principle(p["name"].strip(), p["critique"].strip(), p["revision"].strip()))
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise DataError(f"{path}: principle names must be unique, got {names}")
    return Constitution(str(data.get("name", path.stem)), tuple(out), str(path),
                        hashlib.sha256(text.encode("utf-8")).hexdigest())


__all__ = ["Principle", "Constitution", "load_constitution"]
