"""benchmarks/vs_flower.py: the one split handed to both sides (no Flower needed), and Flower's worker if present."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "vs_flower.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vs_flower", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_split_file_is_what_qflare_edges_load(tmp_path: Path) -> None:
    vs = _load()
    info = vs.make_split(10, 0.5, 0, tmp_path / "split-10.json")  # raises if an edge would load other samples
    doc = json.loads((tmp_path / "split-10.json").read_text())
    flat = sorted(i for part in doc["indices"] for i in part)
    assert flat == list(range(info["samples"]))  # disjoint, and covering every training image
    assert len(doc["indices"]) == 10 and info["sizes_min"] >= 10


def test_process_tree_sampler_sees_this_process() -> None:
    import os

    vs = _load()
    assert os.getpid() in vs._tree(os.getpid())
    pss, rss = vs._rollup(os.getpid())
    assert 0 < pss <= rss


def test_flower_worker_runs_when_flower_is_installed(tmp_path: Path) -> None:
    pytest.importorskip("flwr", reason="Flower is a benchmark-only install (benchmarks/requirements-flower.txt)")
    pytest.importorskip("ray")
    vs = _load()
    vs.make_split(2, 0.5, 0, tmp_path / "split-2.json")
    vs.flower_worker(tmp_path / "split-2.json", 1, tmp_path / "out.json")
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["rounds_completed"] == 1 and 0 <= out["final_accuracy"] <= 1
