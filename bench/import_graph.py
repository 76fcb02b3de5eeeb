"""rlaif's import graph: its cycles and every import that points up the layers (both should be none).

    python bench/import_graph.py [SRC_DIR]      # default: src; exit 1 on a cycle or an upward import

Module-level and function-level imports both count; a module may import its own layer. Layers, lowest first:
ops; config, checkpoint; parallel (the backends); distributed (their interface), optimizer_step, finite, metrics,
runtime; data, models; rollout, judges, rewards; stages; pipeline, configs, report, review; cli.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LAYERS = [["ops"], ["config", "checkpoint"], ["parallel"],
          ["distributed", "optimizer_step", "finite", "metrics", "runtime"], ["data", "models"], ["rollout", "judges", "rewards"],
          ["stages"], ["pipeline", "rounds", "configs", "report", "review"], ["cli"]]


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    return next((i for i, names in enumerate(LAYERS) if top in names), -1)


def graph(src: Path) -> dict[str, set[str]]:
    root = src / "rlaif"
    mods = {}
    for f in root.rglob("*.py"):
        rel = f.relative_to(src).with_suffix("")
        mods[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = f
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        pkg = m if f.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(f.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = pkg.split(".")
                target = ".".join(base[: len(base) - (node.level - 1)] + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("rlaif"):
                target = node.module
            else:
                continue
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
            edges[m].update(c for c in (subs or [target]) if c in mods and c != m)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    sys.setrecursionlimit(10000)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def main() -> int:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "src"
    edges = graph(src)
    found = cycles(edges)
    upward = sorted((m, t) for m, ts in edges.items() for t in ts if -1 < layer(m) < layer(t))
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} import edges, {len(found)} cycles, "
          f"{len(upward)} upward imports")
    for c in found:
        print("  cycle:", " <-> ".join(c))
    for m, t in upward:
        print(f"  upward: {m} (layer {layer(m)}) imports {t} (layer {layer(t)})")
    return 1 if found or upward else 0


if __name__ == "__main__":
    sys.exit(main())
