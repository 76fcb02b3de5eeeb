"""The package's import graph has no cycles and no import that points up the layers (bench/import_graph.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", REPO / "bench" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_cycles_and_no_upward_imports():
    ig = _import_graph()
    edges = ig.graph(REPO / "src")
    assert len(edges) > 50 and ig.layer("rlaif.stages.ppo") > ig.layer("rlaif.distributed")
    assert ig.cycles(edges) == []
    assert [(m, t) for m, ts in edges.items() for t in ts if -1 < ig.layer(m) < ig.layer(t)] == []
    assert all(ig.layer(m) >= 0 for m in edges if m.count(".") >= 1), "a module outside every layer"


def test_the_graph_finds_a_cycle_and_an_upward_import(tmp_path):
    pkg = tmp_path / "rlaif"
    (pkg / "ops").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "ops" / "__init__.py").write_text("from ..config import x\n")
    (pkg / "config.py").write_text("from .ops import y\n")
    ig = _import_graph()
    edges = ig.graph(tmp_path)
    assert ig.cycles(edges) == [["rlaif.config", "rlaif.ops"]]
    assert ("rlaif.ops", "rlaif.config") in [(m, t) for m, ts in edges.items() for t in ts
                                              if ig.layer(m) < ig.layer(t)]
