"""Crash-safe training: SIGKILL mid-epoch + resume == an uninterrupted run, bit for bit (CPU);
atomic checkpoints; non-finite losses skip steps and stop the run with the last good checkpoint kept."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import grmpose.train
from grmpose.checkpoint import read_checkpoint
from grmpose.data.synthetic import synth_main
from grmpose.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
STEPS = 8  # 8 images, batch 2, 2 epochs
# Same thread count in every process: float sums must be ordered the same to compare bits.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synth_main(str(out), "coco", images=8, seed=3, val_images=2, image_size=96, max_people=4)
    return out


def train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "grmpose.cli", "train", "--data", str(data), "--out", str(out),
            "--preset", "tiny", "--input-size", "64", "--batch-size", "2", "--workers", "0",
            "--checkpoint-every", "1", "--epochs", "2", "--val-every", "0", "--seed", "5", "--quiet",
            *extra]  # fmt: skip


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def finite_state(state: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_sigkill_mid_epoch_then_resume_is_bit_identical(synth, tmp_path):
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    reference = subprocess.Popen(train_argv(synth, full), env=ENV, cwd=REPO, stdout=subprocess.DEVNULL)

    victim = subprocess.Popen(
        train_argv(synth, crashed), env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 120
    while not (crashed / "last.pt").exists():  # appears (whole, by rename) after the first step
        assert victim.poll() is None, victim.stderr.read().decode()
        assert time.time() < deadline, "no checkpoint within 2 minutes"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    assert not (crashed / "last.safetensors").exists() and not (crashed / "summary.json").exists()

    _, _, _, extra = read_checkpoint(crashed / "last.pt")  # the killed run's checkpoint loads
    assert 1 <= extra["global_step"] < STEPS
    killed_at = extra["global_step"]

    resumed = subprocess.run(
        train_argv(synth, crashed, "--resume", str(crashed / "last.pt")),
        env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["steps"] == STEPS
    assert reference.wait(timeout=300) == 0
    assert json.loads((full / "summary.json").read_text())["steps"] == STEPS

    a, b = load_file(str(full / "last.safetensors")), load_file(str(crashed / "last.safetensors"))
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == [], f"killed after step {killed_at}: {len(different)} tensors differ"
    assert temp_files(crashed) == [] and temp_files(full) == []
    log = [json.loads(line) for line in (crashed / "log.jsonl").read_text().splitlines()]
    assert log, "the resumed run logs"


def test_stale_temp_files_of_a_killed_run_are_removed(synth, tmp_path, one_thread):
    """A SIGKILL during a checkpoint write leaves ``.last.pt.tmpPID``; the next run clears it."""
    out = tmp_path / "run"
    out.mkdir()
    stale = [out / ".last.pt.tmp99999", out / ".last.safetensors.tmp99999"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    train(quick(synth, out, max_steps=1))
    assert temp_files(out) == []
    assert read_checkpoint(out / "last.pt")[3]["global_step"] == 1


def quick(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        data=str(data), out=str(out), preset="tiny", epochs=2, batch_size=2, input_size=64, workers=0,
        val_every=0, progress=False, log_every=1, seed=5, checkpoint_every=1,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def poison_batches(monkeypatch, bad_calls: set[int]) -> None:
    """Batches number ``bad_calls`` (1-based) get NaN images: the forward pass itself goes NaN."""
    real = grmpose.train.TargetCollate.__call__
    calls = []

    def call(self, samples):
        batch = real(self, samples)
        calls.append(1)
        if len(calls) in bad_calls:
            batch["image"] = torch.full_like(batch["image"], float("nan"))
        return batch

    monkeypatch.setattr(grmpose.train.TargetCollate, "__call__", call)


def test_nonfinite_losses_stop_the_run_and_keep_the_last_good_checkpoint(
    synth, tmp_path, monkeypatch, caplog, one_thread
):
    poison_batches(monkeypatch, {3, 4, 5, 6})
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        summary = train(quick(synth, out, max_nonfinite=3))
    assert summary["stop_reason"] == "3 non-finite losses in a row"
    assert summary["steps"] == 2
    assert caplog.text.count("step skipped") == 3 and "last good checkpoint is kept" in caplog.text
    state, _, _, extra = read_checkpoint(out / "last.pt")
    assert extra["global_step"] == 2 and finite_state(state)
    weights = load_file(str(out / "last.safetensors"))
    assert finite_state(weights)  # BatchNorm running statistics included
    for key, value in state.items():
        assert torch.equal(weights[key], value), key


def test_one_nonfinite_batch_is_skipped_and_training_goes_on(
    synth, tmp_path, monkeypatch, caplog, one_thread
):
    poison_batches(monkeypatch, {3})
    with caplog.at_level(logging.WARNING):
        summary = train(quick(synth, tmp_path / "run", max_nonfinite=3))
    assert summary["stop_reason"] == "finished" and summary["steps"] == STEPS - 1
    assert caplog.text.count("step skipped") == 1
    assert finite_state(load_file(str(tmp_path / "run" / "last.safetensors")))


def test_nonfinite_stop_through_the_cli_exits_non_zero(synth, tmp_path, monkeypatch, capsys, one_thread):
    from grmpose.cli import main

    poison_batches(monkeypatch, set(range(1, 10)))
    rc = main(["train", "--data", str(synth), "--out", str(tmp_path / "run"), "--input-size", "64",
               "--batch-size", "2", "--workers", "0", "--val-every", "0", "--quiet"])  # fmt: skip
    assert rc == 1
    assert json.loads(capsys.readouterr().out)["stop_reason"] == "5 non-finite losses in a row"
    assert finite_state(read_checkpoint(tmp_path / "run" / "last.pt")[0])
