"""Provenance of benchmark results: the git revision and the command behind every results JSON.

Each benchmark writer runs here with its heavy work stubbed out, so a writer that stops recording
provenance fails. The revision is checked against ``git rev-parse HEAD`` run by the test itself.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

import benchmarks.decoders
import benchmarks.demo
import benchmarks.overfit_coco
import benchmarks.run_all
import benchmarks.test_size
import benchmarks.train_synthetic
import benchmarks.yolo
from benchmarks.provenance import command_line, provenance, write_results_json

REPO = Path(__file__).resolve().parent.parent


def head_revision() -> str | None:
    """``git rev-parse HEAD`` of the repository, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=REPO
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def assert_revision(recorded: str, before: str | None, after: str | None) -> None:
    """``recorded`` is HEAD (read before or after: others may commit meanwhile), maybe ``-dirty``."""
    if before is None:
        assert recorded == "unknown"
        return
    base = recorded.removesuffix("-dirty")
    assert base in (before, after), (recorded, before, after)
    assert len(base) == 40 and int(base, 16) >= 0


def test_provenance_has_head_revision_and_the_module_command():
    before = head_revision()
    record = provenance(
        "benchmarks.decoders", ["--checkpoint", "runs/a b/last.safetensors", "--max-images", 5]
    )
    after = head_revision()
    assert_revision(record["git"], before, after)
    assert (
        record["command"]
        == "python -m benchmarks.decoders --checkpoint 'runs/a b/last.safetensors' --max-images 5"
    )
    assert shlex.split(record["command"])[4] == "runs/a b/last.safetensors"  # quoted for a shell


def test_command_line_of_a_library_call_names_the_calling_program():
    # this process is pytest, not "python -m benchmarks.run_all": no made-up benchmark command
    line = command_line("benchmarks.run_all")
    assert line.startswith("called from: python ") and "pytest" in line
    assert command_line("benchmarks.run_all", []) == "python -m benchmarks.run_all"


def test_write_results_json_keeps_the_record_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "r.json"
    write_results_json(path, {"AP": 0.5, "path": Path("x")}, "benchmarks.x", ["--a"])
    saved = json.loads(path.read_text())
    assert saved["AP"] == 0.5 and saved["path"] == "x"
    assert saved["provenance"]["command"] == "python -m benchmarks.x --a"
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


# ------------------------------------------------------------------------------------------ writers
def _decoders(monkeypatch, tmp_path):
    metrics = {"AP": 0.25, "AP50": 0.5, "AR": 0.3, "images": 2}
    monkeypatch.setattr(benchmarks.decoders, "evaluate_checkpoint", lambda *a, **k: metrics)
    monkeypatch.setattr(benchmarks.decoders, "rescore_fit_main", lambda *a, **k: {"images": 3})
    monkeypatch.setattr(benchmarks.decoders, "RESULTS", tmp_path)
    argv = ["--checkpoint", "c.safetensors", "--data", "d", "--out", str(tmp_path / "runs")]
    benchmarks.decoders.main(argv)
    return tmp_path / "decoders.json", "python -m benchmarks.decoders " + shlex.join(argv)


def _overfit(monkeypatch, tmp_path):
    monkeypatch.setattr(
        benchmarks.overfit_coco, "train", lambda cfg: {"steps": 1, "minutes": 0.1, "images_per_s": 5.0}
    )
    monkeypatch.setattr(benchmarks.overfit_coco, "evaluate_training_view", lambda *a: {"AP": 0.9})
    monkeypatch.setattr(benchmarks.overfit_coco, "RESULTS", tmp_path / "overfit_coco.json")
    argv = ["--steps", "1", "--out", str(tmp_path / "run")]
    benchmarks.overfit_coco.main(argv)
    return tmp_path / "overfit_coco.json", "python -m benchmarks.overfit_coco " + shlex.join(argv)


def _train_synthetic(monkeypatch, tmp_path):
    result = {
        "metrics": {"AP": 0.1, "images": 3},
        "train": {"minutes": 0.1, "steps": 2, "images_per_s": 4.0},
        "heatmap_pck": {"pck": 0.2, "per_keypoint": {"nose": 0.2}, "joints": 5},
        "rescore": "run/rescore.safetensors",
        "metrics_no_rescore": {"AP": 0.05, "images": 3, "results": "run/eval_no_rescore/results.json"},
        "metrics_no_flip_test": {"AP": 0.08, "images": 3, "results": "run/eval_no_flip/results.json"},
    }
    monkeypatch.setattr(benchmarks.train_synthetic, "run_demo", lambda cfg: result)
    monkeypatch.setattr(benchmarks.train_synthetic, "RESULTS", tmp_path)
    argv = ["--minutes", "0.1", "--tag", "t", "--out", str(tmp_path / "run")]
    benchmarks.train_synthetic.main(argv)
    return tmp_path / "train_synthetic_t.json", "python -m benchmarks.train_synthetic " + shlex.join(argv)


def _demo(monkeypatch, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    demo = {
        "metrics": {"AP": 0.1, "AP50": 0.2, "AR": 0.3, "images": 3},
        "flip_test": True,
        "metrics_flip_test": {"AP": 0.1, "AP50": 0.2, "AR": 0.3, "images": 3},
        "metrics_no_flip_test": {"AP": 0.05, "AP50": 0.1, "AR": 0.2, "images": 3},
        "goal_AP": 0.5,
        "heatmap_pck": {"pck": 0.2, "per_keypoint": {"nose": 0.2, "left_eye": None}, "joints": 5},
        "train": {"minutes": 0.1, "steps": 2, "images_per_s": 4.0},
        "learning_curve_points": [{"minutes": 0.1, "step": 2, "AP": 0.1, "AP50": 0.2}],
        "config": {"input_size": 128, "batch_size": 8, "minutes": 0.1, "curve_images": 3, "flip": True},
    }
    (run / "demo.json").write_text(json.dumps(demo))
    monkeypatch.setattr(benchmarks.demo, "RESULTS", tmp_path)
    monkeypatch.setattr(benchmarks.demo, "docs_pictures", lambda run: [])
    other = {"width": 320, "height": 240, "seed": 101, "images": 150, "AP": 0.25, "AP50": 0.5, "AR50": 0.75}
    monkeypatch.setattr(benchmarks.demo, "other_sets", lambda run: [other])
    argv = ["--record", str(run), "--wall-seconds", "12"]
    benchmarks.demo.main(argv)
    assert "| 0.20 | - |" in (tmp_path / "demo.md").read_text()
    assert "| AP without the flip test | 0.0500 | |" in (tmp_path / "demo.md").read_text()
    assert "| 150 | 320x240 | 101 | 0.2500 | 0.5000 | 0.750 |" in (tmp_path / "demo.md").read_text()
    return tmp_path / "demo.json", "python -m benchmarks.demo " + shlex.join(argv)


def _yolo(monkeypatch, tmp_path):
    monkeypatch.setattr(benchmarks.yolo, "cpu_gflops", lambda threads: {"matmul_gflops": 100.0})
    monkeypatch.setattr(benchmarks.yolo, "bench_models", lambda *a, **k: [])
    monkeypatch.setattr(benchmarks.yolo, "yolo_rows", lambda *a, **k: [])
    monkeypatch.setattr(benchmarks.yolo, "RESULTS", tmp_path)
    benchmarks.yolo.main(threads=1)
    return tmp_path / "yolo.json", "called from: python "  # a library call, not "python -m"


def _run_all(monkeypatch, tmp_path):
    monkeypatch.setattr(benchmarks.run_all, "cpu_gflops", lambda *a, **k: {"matmul_gflops": 100.0})
    monkeypatch.setattr(benchmarks.run_all, "bench_models", lambda *a, **k: [])
    monkeypatch.setattr(benchmarks.run_all, "bench_decoding", lambda *a, **k: [])
    monkeypatch.setattr(benchmarks.run_all, "memory_section", lambda *a, **k: {})
    monkeypatch.setattr(benchmarks.run_all, "markdown", lambda result: "")
    monkeypatch.setattr(benchmarks.run_all, "extras_section", lambda *a, **k: {})
    benchmarks.run_all.run(quick=True, out_dir=tmp_path, threads=1)
    return tmp_path / "bench.json", "called from: python "


def _test_size(monkeypatch, tmp_path):
    import grmpose.evaluate_run

    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "other_sets" / "320x240_seed101").mkdir(parents=True)
    (run / "other_sets" / "320x240_seed101" / "val.json").write_text("{}")
    (run / "demo.json").write_text(json.dumps({"config": {"input_size": 192}}))
    calls = []

    def evaluate(checkpoint, data, out, input_size, progress):
        calls.append((Path(data).name, input_size))
        Path(out).mkdir(parents=True)
        return {"AP": input_size / 1000, "AP50": 0.5, "images": 7}

    monkeypatch.setattr(grmpose.evaluate_run, "evaluate_checkpoint", evaluate)
    monkeypatch.setattr(benchmarks.test_size, "RESULTS", tmp_path)
    argv = ["--runs", str(run), "--factors", "1", "1.25", "1.26"]
    benchmarks.test_size.main(argv)
    # 192 x 1.25 = 240; 192 x 1.26 = 241.9, also 240 at a multiple of 16: measured once
    assert calls == [("data", 192), ("data", 240), ("320x240_seed101", 192), ("320x240_seed101", 240)]
    table = (tmp_path / "test_size.md").read_text()
    assert "| own held-out set | 7 | 0.1920 | 0.2400 |" in table
    assert "| 320x240_seed101 | 7 | 0.1920 | 0.2400 |" in table
    return tmp_path / "test_size.json", "python -m benchmarks.test_size " + shlex.join(argv)


def _adaptive_conv(monkeypatch, tmp_path):
    import benchmarks.adaptive_conv

    monkeypatch.setattr(benchmarks.adaptive_conv, "CASES", (("small", 2, 3, 8, 6),))
    monkeypatch.setattr(benchmarks.adaptive_conv, "RESULTS", tmp_path)
    argv = ["--repeats", "1"]
    benchmarks.adaptive_conv.main(argv)
    table = (tmp_path / "adaptive_conv.md").read_text()
    assert "| small (batch 2, 3 x 8 channels, 6²) | forward + backward |" in table
    return tmp_path / "adaptive_conv.json", "python -m benchmarks.adaptive_conv " + shlex.join(argv)


WRITERS = {
    "adaptive_conv": _adaptive_conv,
    "decoders": _decoders,
    "test_size": _test_size,
    "demo": _demo,
    "overfit_coco": _overfit,
    "train_synthetic": _train_synthetic,
    "yolo": _yolo,
    "run_all": _run_all,
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_every_benchmark_writer_records_provenance(writer, monkeypatch, tmp_path):
    before = head_revision()
    path, command = WRITERS[writer](monkeypatch, tmp_path)
    after = head_revision()
    saved = json.loads(path.read_text())
    assert_revision(saved["provenance"]["git"], before, after)
    assert saved["provenance"]["command"].startswith(command)
    if not command.startswith("called from"):
        assert saved["provenance"]["command"] == command


# modules of benchmarks/ that name .json files that are not results files
NOT_RESULTS = {
    "memory": "its temporary annotation and results files, measured, not kept",
    "provenance": "the helper itself",
}


def test_every_benchmark_module_that_writes_json_uses_the_helper():
    """A writer added to benchmarks/ (a module naming a ".json" file) must call write_results_json;
    the ones above are also run, with stubs."""
    writers = set()
    for path in sorted((REPO / "benchmarks").glob("*.py")):
        source = path.read_text()
        if path.stem in NOT_RESULTS or '.json"' not in source:
            continue
        writers.add(path.stem)
        assert "write_results_json(" in source, f"benchmarks/{path.name} writes JSON without provenance"
    assert set(WRITERS) <= writers


def test_committed_results_record_their_revision_and_command():
    """Every results JSON in benchmarks/results/ says which revision and command made it."""
    files = sorted((REPO / "benchmarks" / "results").glob("*.json"))
    assert files
    for path in files:
        record = json.loads(path.read_text()).get("provenance")
        assert record is not None, f"{path.name} has no provenance"
        base = record["git"].removesuffix("-dirty")
        assert len(base) == 40 and all(c in "0123456789abcdef" for c in base), (path.name, record["git"])
        # a benchmark module, or the console command that made it (the main job: grmpose demo)
        assert record["command"].startswith(("python -m benchmarks.", "grmpose ")), (
            path.name,
            record["command"],
        )
