"""benchmarks.gpu: the GPU check runs end to end in its CPU smoke mode, and picks the CUDA branches on CUDA."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.gpu import GpuConfig, cuda_branches, main, plan, smoke_config


def test_cuda_device_takes_every_cuda_branch() -> None:
    with_gpu_ort = cuda_branches("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert with_gpu_ort == {"grad_scaler": True, "pin_memory": True, "non_blocking": True, "ddp_backend": "nccl",
                            "sync_batchnorm": True, "ort_provider": "CUDAExecutionProvider"}  # fmt: skip
    assert cuda_branches("cuda", ["CPUExecutionProvider"])["ort_provider"] is None  # a row says why
    cpu = cuda_branches("cpu", ["CPUExecutionProvider"])
    assert cpu["ddp_backend"] == "gloo" and not cpu["grad_scaler"] and not cpu["sync_batchnorm"]


def test_plan_covers_the_issue_grid() -> None:
    cases = plan(GpuConfig())
    train = {(c["preset"], c["amp"], c["channels_last"], c["compile"]) for c in cases if c["kind"] == "train"}
    for preset in ("grmpose-w32", "dekr-w32"):
        for amp in ("bfloat16", "float16"):
            assert {
                (preset, amp, False, False),
                (preset, amp, True, False),
                (preset, amp, True, True),
            } <= train
        assert {"infer", "ort"} <= {c["kind"] for c in cases if c["preset"] == preset}
    assert [c["kind"] for c in cases].count("ddp") == 1
    assert GpuConfig().batch == 16 and GpuConfig().input_size == 512 and GpuConfig().infer_batches == (1, 16)


@pytest.mark.slow
def test_smoke_run_writes_every_row(tmp_path) -> None:
    main(["--smoke", "--no-ort", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "gpu.json").read_text())
    rows = result["rows"]
    assert len(rows) == len(plan(smoke_config(ort=False)))
    assert all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"]
    for r in rows:
        rates = r.get("images_per_s")
        values = rates.values() if isinstance(rates, dict) else [rates] if rates is not None else []
        assert all(math.isfinite(v) and v > 0 for v in values), r
    fp16 = [r for r in rows if r["kind"] == "train" and r["amp"] == "float16"]
    assert fp16 and not any(r["grad_scaler"] for r in fp16)  # GradScaler only on CUDA
    (ddp,) = [r for r in rows if r["kind"] == "ddp"]
    assert ddp["backend"] == "gloo" and ddp["step"] == "ok" and math.isfinite(ddp["loss"])
    assert "| tiny | float16 | True | True |" in (tmp_path / "gpu.md").read_text()
