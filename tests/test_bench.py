"""Benchmark suite smoke tests: structure and finite positive figures, never speed."""

from __future__ import annotations

import json
import math

import torch

from benchmarks.decoding import crowd_maps, decode_once, network_outputs
from benchmarks.run_all import run
from grmpose.bench import add_ratios, time_calls
from grmpose.spec import get_spec


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_time_calls_fields() -> None:
    t = time_calls(lambda: sum(range(100)), repeats=3, warmup=1)
    assert len(t["times_ms"]) == 3 and t["min_ms"] <= t["median_ms"]


def test_add_ratios_against_reference_of_same_backend() -> None:
    rows = [
        {"preset": "dekr-w32", "backend": "eager", "status": "ok", "median_ms": 10.0, "gmacs": 4.0},
        {"preset": "a", "backend": "eager", "status": "ok", "median_ms": 5.0, "gmacs": 1.0},
        {"preset": "a", "backend": "onnxruntime", "status": "ok", "median_ms": 5.0, "gmacs": 1.0},
    ]
    add_ratios(rows)
    assert rows[1]["median_ms_vs_dekr-w32"] == 0.5 and rows[1]["gmacs_vs_dekr-w32"] == 0.25
    assert "median_ms_vs_dekr-w32" not in rows[2]  # no reference on that backend


def test_crowd_maps_decode_every_person() -> None:
    spec = get_spec("coco")
    for decoder in ("regression", "ae", "hybrid"):
        for flip in (False, True):
            outs = network_outputs(crowd_maps(7, 256), flip, spec)
            assert decode_once(outs, decoder, flip, 256, spec) == 7


def test_quick_run_structure(tmp_path) -> None:
    torch.set_num_threads(2)
    result = run(quick=True, out_dir=tmp_path, quick_backends=("eager",), training=False, extras=False)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["quick"] is True
    assert "| tiny | eager |" in (tmp_path / "bench.md").read_text()
    assert _positive(result["cpu"]["matmul_gflops"]) and _positive(result["cpu"]["conv3x3_gflops"])
    (row,) = result["models"]
    assert row["status"] == "ok", row
    for key in ("median_ms", "min_ms", "params", "gmacs", "peak_rss_mib", "achieved_gflops", "matmul_share"):
        assert _positive(row[key]), key
    assert row["max_abs_diff_folded"] < 1e-3
    assert {d["decoder"] for d in result["decoding"]} == {"regression", "ae", "hybrid"}
    assert all(_positive(d["median_ms"]) and d["found"] == d["people"] for d in result["decoding"])
    ev = result["memory"]["evaluation"]
    assert ev["images"] == 300 and len(ev["samples"]) == 10 and math.isfinite(ev["slope_kib_per_image"])


def test_yolo_rows_without_ultralytics_say_why(monkeypatch) -> None:
    import sys

    from benchmarks.run_all import yolo_rows
    from grmpose.bench import YOLO_MISSING, measure_yolo

    monkeypatch.setitem(sys.modules, "ultralytics", None)  # import fails as if not installed
    rows = yolo_rows([], threads=1, repeats=1, warmup=0)
    assert rows == [{"preset": "yolo11-pose", "backend": "-", "status": "n/a", "reason": YOLO_MISSING}]
    row = measure_yolo("yolo11n-pose", "eager", input_size=64, threads=1)
    assert row["status"] == "n/a" and row["reason"] == YOLO_MISSING


def test_yolo_row_has_latency_and_ratio_when_ultralytics_is_installed() -> None:
    import pytest

    from benchmarks.run_all import yolo_rows
    from grmpose.bench import ultralytics_installed

    if not ultralytics_installed():  # not importorskip: importing ultralytics patches PIL in this process
        pytest.skip("ultralytics is not installed (optional)")

    reference = [{"preset": "dekr-w32", "backend": "eager", "status": "ok", "median_ms": 100.0}]
    rows = yolo_rows(
        reference, threads=1, repeats=1, warmup=0, yolo_models=("yolo11n-pose",), backends=("eager",)
    )
    eager = rows[0]
    assert eager["status"] == "ok", eager
    assert eager["median_ms"] > 0 and eager["params"] > 1e6  # yolo11n-pose: about 2.9 M parameters
    assert math.isclose(eager["median_ms_vs_dekr-w32"], eager["median_ms"] / 100.0)


def test_scaling_points_cover_both_sweeps() -> None:
    from benchmarks.scaling import points

    got = points(("a",), (256, 512, 1024), (1, 4), grid=False, reference_size=512)
    assert got == [("a", 256, 1), ("a", 512, 1), ("a", 1024, 1), ("a", 512, 4)]  # (512, 1) once
    assert len(points(("a", "b"), (256, 512), (1, 2, 4), grid=True, reference_size=512)) == 2 * 2 * 3


def test_scaling_run_writes_table_and_plot(tmp_path) -> None:
    import pytest

    from benchmarks.scaling import run as run_scaling

    result = run_scaling(("tiny",), (64,), (1, 2), reference_size=64, repeats=1, warmup=0, out_dir=tmp_path)
    rows = result["rows"]
    assert [(r["size"], r["batch"]) for r in rows] == [(64, 1), (64, 2)]
    for r in rows:
        assert _positive(r["median_ms"]) and _positive(r["peak_rss_mib"]), r
        assert r["ms_per_image"] == pytest.approx(r["median_ms"] / r["batch"])
    table = (tmp_path / "scaling.md").read_text()
    assert "| tiny | 64 | 2 |" in table
    pytest.importorskip("matplotlib")
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
