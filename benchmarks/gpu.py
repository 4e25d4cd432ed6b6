"""GPU readiness in one command: training and inference throughput on one CUDA device, and one DDP step.

    python -m benchmarks.gpu                 # on a CUDA machine: about 8 minutes, writes gpu.json + gpu.md
    python -m benchmarks.gpu --smoke --out D # anywhere: tiny, one step per case, on the CPU (a test runs it)

What it measures (``GpuConfig``, each case a row of the table):

* training images/s of grmpose-w32 and dekr-w32 at 512, batch 16: AMP float16 (through
  ``grmpose.train._train_step`` with an enabled ``GradScaler``) and AMP bfloat16 (the same step with
  a bfloat16 autocast and no scaler: ``_train_step`` autocasts to float16 only), channels-last
  off/on, then ``torch.compile`` on (channels-last, both AMP types);
* inference images/s at batch 1 and 16: eager (``grmpose.api.TorchForward``, float32 and bfloat16,
  inputs from pinned memory with ``non_blocking`` copies) and ONNX Runtime's CUDA provider when
  onnxruntime-gpu is installed (a row saying why otherwise);
* one DDP step in a 1-process group: NCCL on CUDA (gloo on the CPU), ``SyncBatchNorm`` on CUDA.

Cases run in that order under a time budget (``--budget``, default 480 s): a case that would start
after the budget is spent is recorded as skipped, so the run always ends with a table. Every case
on CUDA calls ``torch.cuda.synchronize`` before reading the clock.

Smoke mode (``--smoke``): the ``tiny`` preset at 64 px, batch 2, one timed step per case, on the
CPU unless ``--device`` says otherwise; ``torch.compile`` uses the ``eager`` backend (graph capture
only, no code generation); the ONNX Runtime rows export with the same exporter as ``grmpose
export`` unless ``--no-ort``. The CUDA-only branches (GradScaler, NCCL, SyncBatchNorm, the CUDA
provider) are chosen by ``cuda_branches`` from the device type, so the smoke run takes the same
code path and a test checks the choice for ``cuda``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import platform
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from benchmarks.provenance import write_results_json
from grmpose.api import OnnxForward, TorchForward
from grmpose.losses import LossWeights, collate_targets, total_loss
from grmpose.model.net import build_model
from grmpose.spec import get_spec
from grmpose.targets import build_targets
from grmpose.train import DistInfo, TrainConfig, _train_step, build_optimizer

log = logging.getLogger("benchmarks.gpu")

RESULTS = Path(__file__).resolve().parent / "results"
STRIDE = 4


@dataclass(frozen=True)
class GpuConfig:
    """What ``run`` measures. The defaults are the full GPU run; ``smoke_config`` the CPU smoke test."""

    presets: tuple[str, ...] = ("grmpose-w32", "dekr-w32")
    input_size: int = 512
    batch: int = 16
    amp: tuple[str, ...] = ("bfloat16", "float16")
    train_warmup: int = 3
    train_steps: int = 10
    infer_batches: tuple[int, ...] = (1, 16)
    infer_dtypes: tuple[str, ...] = ("float32", "bfloat16")
    infer_warmup: int = 3
    infer_repeats: int = 10
    compile_backend: str = "inductor"
    ort: bool = True
    budget_s: float = 480.0
    spec: str = "coco"


def smoke_config(ort: bool = True) -> GpuConfig:
    """Tiny, 64 px, batch 2, one step per case: every branch in seconds on a CPU."""
    return GpuConfig(presets=("tiny",), input_size=64, batch=2, train_warmup=0, train_steps=1,
                     infer_batches=(1, 2), infer_warmup=0, infer_repeats=1, compile_backend="eager",
                     ort=ort, budget_s=600.0)  # fmt: skip


def cuda_branches(device_type: str, ort_providers: list[str]) -> dict:
    """The device-dependent choices of this script (what a GPU run reaches that a CPU run cannot).

    Returns:
        ``{"grad_scaler": float16 AMP uses an enabled GradScaler, "pin_memory", "non_blocking",
        "ddp_backend": "nccl" | "gloo", "sync_batchnorm", "ort_provider": provider name or None}``.
    """
    cuda = device_type == "cuda"
    if cuda:
        provider = "CUDAExecutionProvider" if "CUDAExecutionProvider" in ort_providers else None
    else:
        provider = "CPUExecutionProvider" if "CPUExecutionProvider" in ort_providers else None
    return {
        "grad_scaler": cuda,
        "pin_memory": cuda,
        "non_blocking": cuda,
        "ddp_backend": "nccl" if cuda else "gloo",
        "sync_batchnorm": cuda,
        "ort_provider": provider,
    }


def _ort_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------ data
def make_batch(spec_name: str, input_size: int, batch: int, pin: bool, seed: int = 0) -> dict:
    """A training batch of random images with 3 random people each and their real targets.

    Returns:
        ``{"image": B×3×S×S float32, "targets": collate_targets(...)}`` (pinned when ``pin``).
    """
    spec = get_spec(spec_name)
    rng = np.random.default_rng(seed)
    k, size = spec.num_keypoints, input_size // STRIDE
    targets = []
    for _ in range(batch):
        kpts = np.zeros((3, k, 3))
        centre = rng.uniform(0.25, 0.75, (3, 1, 2)) * input_size
        kpts[..., :2] = centre + rng.normal(0, input_size / 12, (3, k, 2))
        kpts[..., 2] = 2
        targets.append(build_targets(kpts, (size, size), stride=STRIDE))
    images = torch.from_numpy(rng.standard_normal((batch, 3, input_size, input_size), dtype=np.float32))
    out = {"image": images, "targets": collate_targets(targets)}
    if pin:
        out["image"] = out["image"].pin_memory()
        out["targets"] = {key: v.pin_memory() for key, v in out["targets"].items()}
    return out


# ------------------------------------------------------------------------------------ training
def _bf16_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict, device: torch.device
) -> float:
    """``_train_step`` with a bfloat16 autocast (no GradScaler: bfloat16 has float32's range)."""
    images = batch["image"].to(device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        outputs = model(images)
    loss, _ = total_loss(tuple(o.float() for o in outputs), batch["targets"], LossWeights())
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def train_case(
    cfg: GpuConfig, device: torch.device, preset: str, amp: str, channels_last: bool, compiled: bool
) -> dict:
    """Training images/s of one (preset, AMP type, layout, compile) case."""
    branches = cuda_branches(device.type, [])
    torch.manual_seed(0)
    model = build_model(preset, cfg.spec).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model, backend=cfg.compile_backend) if compiled else model
    optimizer = build_optimizer(model, TrainConfig(data="-", out="-", lr=1e-4))  # grmpose train's (fused Adam)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "float16" and branches["grad_scaler"])
    batch = make_batch(cfg.spec, cfg.input_size, cfg.batch, pin=branches["pin_memory"])
    if channels_last:
        batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)

    def step() -> None:
        if amp == "float16":
            _train_step(net, optimizer, scaler, batch, device, True, 1, DistInfo(), LossWeights())
        else:
            _bf16_step(net, optimizer, batch, device)

    t0 = time.perf_counter()
    step()  # the first step: compilation, cuDNN autotuning, allocations
    _sync(device)
    first_s = time.perf_counter() - t0
    for _ in range(cfg.train_warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(cfg.train_steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - t0
    row = {"images_per_s": cfg.batch * cfg.train_steps / seconds, "first_step_s": first_s,
           "grad_scaler": scaler.is_enabled()}  # fmt: skip
    if device.type == "cuda":
        row["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return row


# ------------------------------------------------------------------------------------ inference
def _time_forward(forward: Callable, batch: torch.Tensor, warmup: int, repeats: int, device) -> float:
    for _ in range(warmup):
        forward(batch)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        forward(batch)
    _sync(device)
    return len(batch) * repeats / (time.perf_counter() - t0)


def infer_case(cfg: GpuConfig, device: torch.device, preset: str, dtype: str) -> dict:
    """Eager inference images/s at each batch of ``cfg.infer_batches`` (BatchNorm folded, pinned inputs)."""
    from grmpose.fuse import fuse_model

    branches = cuda_branches(device.type, [])
    torch.manual_seed(0)
    forward = TorchForward(fuse_model(build_model(preset, cfg.spec).eval()), device, dtype)
    rates = {}
    for b in cfg.infer_batches:
        x = torch.randn(b, 3, cfg.input_size, cfg.input_size)
        if branches["pin_memory"]:
            x = x.pin_memory()  # TorchForward copies with non_blocking=True
        rates[f"batch_{b}"] = _time_forward(forward, x, cfg.infer_warmup, cfg.infer_repeats, device)
    return {"images_per_s": rates}


def ort_case(cfg: GpuConfig, device: torch.device, preset: str, workdir: Path) -> dict:
    """ONNX Runtime images/s at each batch, on the CUDA provider for a CUDA device."""
    from grmpose.export import export_onnx

    provider = cuda_branches(device.type, _ort_providers())["ort_provider"]
    if provider is None:
        wanted = "onnxruntime-gpu (CUDAExecutionProvider)" if device.type == "cuda" else "onnxruntime"
        return {"status": "n/a", "reason": f"{wanted} not installed; providers: {_ort_providers()}"}
    torch.manual_seed(0)
    path = export_onnx(
        build_model(preset, cfg.spec).eval(), workdir / f"{preset}.onnx", input_size=cfg.input_size
    )
    forward = OnnxForward(path, "cuda" if device.type == "cuda" else "cpu")
    used = forward.session.get_providers()[0]
    rates = {}
    for b in cfg.infer_batches:
        x = torch.randn(b, 3, cfg.input_size, cfg.input_size)
        rates[f"batch_{b}"] = _time_forward(forward, x, cfg.infer_warmup, cfg.infer_repeats, device)
    return {"images_per_s": rates, "provider": used}


# ------------------------------------------------------------------------------------ DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_case(cfg: GpuConfig, device: torch.device, preset: str) -> dict:
    """One ``_train_step`` of a DDP model in a 1-process group (NCCL + SyncBatchNorm on CUDA)."""
    branches = cuda_branches(device.type, [])
    if dist.is_initialized():
        raise RuntimeError("a process group is already initialised in this process")
    dist.init_process_group(branches["ddp_backend"], init_method=f"tcp://127.0.0.1:{_free_port()}",
                            rank=0, world_size=1)  # fmt: skip
    try:
        torch.manual_seed(0)
        model = build_model(preset, cfg.spec).to(device).train()
        if branches["sync_batchnorm"]:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index or 0] if device.type == "cuda" else None
        )
        optimizer = build_optimizer(ddp, TrainConfig(data="-", out="-", lr=1e-4))
        scaler = torch.amp.GradScaler(device.type, enabled=branches["grad_scaler"])
        batch = make_batch(cfg.spec, cfg.input_size, cfg.batch, pin=branches["pin_memory"])
        t0 = time.perf_counter()
        loss, _, step_status = _train_step(ddp, optimizer, scaler, batch, device, branches["grad_scaler"], 1,
                                      DistInfo(0, 1, 0), LossWeights())  # fmt: skip
        _sync(device)
        sync_bn = sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
        return {"backend": dist.get_backend(), "loss": loss, "step": step_status, "seconds": time.perf_counter() - t0,
                "sync_batchnorm_layers": sync_bn}  # fmt: skip
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------ the run
def plan(cfg: GpuConfig) -> list[dict]:
    """The cases in run order: eager training, inference, DDP, then compiled training."""
    cases = []
    for preset in cfg.presets:
        for amp in cfg.amp:
            for cl in (False, True):
                cases.append(
                    {"kind": "train", "preset": preset, "amp": amp, "channels_last": cl, "compile": False}
                )
    for preset in cfg.presets:
        for dtype in cfg.infer_dtypes:
            cases.append({"kind": "infer", "preset": preset, "dtype": dtype})
        if cfg.ort:
            cases.append({"kind": "ort", "preset": preset})
    cases.append({"kind": "ddp", "preset": cfg.presets[0]})
    for preset in cfg.presets:
        for amp in cfg.amp:
            cases.append(
                {"kind": "train", "preset": preset, "amp": amp, "channels_last": True, "compile": True}
            )
    return cases  # fmt: skip


def run(cfg: GpuConfig, device: str, out_dir: Path) -> dict:
    """Run every case of ``plan(cfg)`` on ``device`` within ``cfg.budget_s``; write JSON + Markdown."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: this PyTorch build sees no CUDA device (use --smoke on a CPU)")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="grmpose-gpu-") as tmp:
        for case in plan(cfg):
            elapsed = time.perf_counter() - start
            if elapsed > cfg.budget_s:
                rows.append(
                    {**case, "status": "skipped", "reason": f"time budget {cfg.budget_s:.0f} s spent"}
                )
                continue
            log.info("%s", case)
            t0 = time.perf_counter()
            try:
                if case["kind"] == "train":
                    result = train_case(
                        cfg, dev, case["preset"], case["amp"], case["channels_last"], case["compile"]
                    )
                elif case["kind"] == "infer":
                    result = infer_case(cfg, dev, case["preset"], case["dtype"])
                elif case["kind"] == "ort":
                    result = ort_case(cfg, dev, case["preset"], Path(tmp))
                else:
                    result = ddp_case(cfg, dev, case["preset"])
            except (
                Exception
            ) as err:  # a failing case is a result (e.g. out of memory), not the end of the run
                result = {
                    "status": "failed",
                    "reason": f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}",
                }
            result.setdefault("status", "ok")
            rows.append({**case, **result, "case_s": time.perf_counter() - t0})
            if dev.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(dev)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": dataclasses.asdict(cfg),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "ort_providers": _ort_providers(),
        "branches": cuda_branches(dev.type, _ort_providers()),
        "seconds": time.perf_counter() - start,
        "rows": rows,
    }  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    write_results_json(out_dir / "gpu.json", result, "benchmarks.gpu", indent=1)
    (out_dir / "gpu.md").write_text(markdown(result))
    return result


def _rate(row: dict, key: str | None = None) -> str:
    if row.get("status") != "ok":
        return f"{row.get('status')}: {row.get('reason', '')}"
    value = row["images_per_s"] if key is None else row["images_per_s"].get(key)
    return "n/a" if value is None else f"{value:.1f}"


def markdown(result: dict) -> str:
    """Tables of the run: training, inference, DDP."""
    cfg = result["config"]
    lines = [f"# GPU check ({result['date']}, {result['device']}: {result['device_name']})", "",
             f"torch {result['torch']}, CUDA {result['cuda']}, ONNX Runtime providers {result['ort_providers']}; "
             f"{result['seconds']:.0f} s in all (budget {cfg['budget_s']:.0f} s). Input {cfg['input_size']}, "
             f"training batch {cfg['batch']}.", "",
             "## Training (images/s)", "", "| preset | AMP | channels-last | compile | images/s | first step s | peak MiB |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["rows"]:
        if r["kind"] == "train":
            first = f"{r['first_step_s']:.1f}" if "first_step_s" in r else ""
            peak = f"{r['peak_memory_mib']:.0f}" if "peak_memory_mib" in r else ""
            lines.append(f"| {r['preset']} | {r['amp']} | {r['channels_last']} | {r['compile']} | {_rate(r)} | {first} | {peak} |")  # fmt: skip
    batches = [f"batch_{b}" for b in cfg["infer_batches"]]
    lines += ["", "## Inference (images/s)", "", "| preset | runtime | " + " | ".join(batches) + " |",
              "|---|---|" + "---|" * len(batches)]  # fmt: skip
    for r in result["rows"]:
        if r["kind"] in ("infer", "ort"):
            runtime = (
                f"eager {r['dtype']}"
                if r["kind"] == "infer"
                else f"onnxruntime {r.get('provider', '')}".strip()
            )
            cells = (
                [_rate(r, b) for b in batches]
                if r.get("status") == "ok"
                else [_rate(r)] + [""] * (len(batches) - 1)
            )
            lines.append(f"| {r['preset']} | {runtime} | " + " | ".join(cells) + " |")  # fmt: skip
    for r in result["rows"]:
        if r["kind"] == "ddp":
            detail = (f"backend {r['backend']}, loss {r['loss']:.4f}, step {r['step']}, {r['seconds']:.2f} s, "
                      f"{r['sync_batchnorm_layers']} SyncBatchNorm layers") if r.get("status") == "ok" else _rate(r)  # fmt: skip
            lines += ["", f"DDP step ({r['preset']}, 1 process): {detail}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="tiny, 64 px, one step per case (CPU test)")
    parser.add_argument(
        "--no-ort", action="store_true", help="skip the ONNX Runtime rows (export is slow on a CPU)"
    )
    parser.add_argument("--budget", type=float, default=None, help="seconds (default 480)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = (
        smoke_config(ort=not args.no_ort)
        if args.smoke
        else dataclasses.replace(GpuConfig(), ort=not args.no_ort)
    )
    if args.budget is not None:
        cfg = dataclasses.replace(cfg, budget_s=args.budget)
    if args.smoke and args.out is None:
        raise SystemExit("--smoke needs --out (the smoke run must not replace the GPU results)")
    device = args.device or ("cpu" if args.smoke else "cuda")
    result = run(cfg, device, args.out or RESULTS)
    print(markdown(result))


if __name__ == "__main__":
    main()
