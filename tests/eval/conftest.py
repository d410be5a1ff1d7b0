"""Fixtures for tests/eval: the tiny judge models of ``judge_models.py`` (loaded by path: the
suite imports test modules with ``--import-mode=importlib``, so helpers are not importable)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture(scope="session")
def judge_models() -> ModuleType:
    path = Path(__file__).with_name("judge_models.py")
    spec = importlib.util.spec_from_file_location("saferl_tests_judge_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
