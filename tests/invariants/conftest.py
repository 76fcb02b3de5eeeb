"""Fixtures for the invariant tests (the EOS-prone tiny Llama is shared with tests/stages)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _stages_conftest():
    path = Path(__file__).resolve().parents[1] / "stages" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_rlaif_stages_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def eos_model_dir(tmp_path_factory, tiny_model_dir) -> str:
    return _stages_conftest().build_eos_model(tiny_model_dir, tmp_path_factory.mktemp("tiny-eos-llama-inv"))
