"""The ``grmpose`` command: one entry point, thin subcommands over importable functions."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
from pathlib import Path

log = logging.getLogger("grmpose")


class UserError(Exception):
    """An error the CLI reports as one line, without a traceback."""


# ---------------------------------------------------------------- summary
def cmd_summary(args: argparse.Namespace) -> int:
    from grmpose.config import PRESETS
    from grmpose.flops import summarize

    names = args.presets or list(PRESETS)
    for name in names:
        if name not in PRESETS:
            raise UserError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    rows = [summarize(name, args.spec, args.input_size) for name in names]
    if args.json:
        out = [{k: r[k] for k in ("preset", "input_size", "params", "gmacs", "gflops")} for r in rows]
        print(json.dumps(out[0] if len(out) == 1 else out, indent=None))
        return 0
    print(f"{'preset':<20} {'input':>6} {'params (M)':>11} {'GMACs':>9} {'GFLOPs':>9}")
    for r in rows:
        print(
            f"{r['preset']:<20} {r['input_size']:>6} {r['params'] / 1e6:>11.2f} {r['gmacs']:>9.2f} {r['gflops']:>9.2f}"
        )
    print("GMACs = multiply-adds (the papers' 'GFLOPs'); GFLOPs = 2 x GMACs. Keypoint spec:", args.spec)
    return 0


# ---------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> int:
    from grmpose.api import ONNX_OPSET, write_sidecar
    from grmpose.checkpoint import load_model
    from grmpose.config import get_preset
    from grmpose.export import export_int8, export_onnx
    from grmpose.model.net import build_model
    from grmpose.spec import get_spec

    if args.int8 and not args.calibration:
        raise UserError("--int8 needs --calibration IMAGES (a folder or a quoted glob of images)")
    if args.calibration and not args.int8:
        raise UserError("--calibration is only used with --int8")
    if args.preset and (args.preset.endswith((".safetensors", ".pt")) or Path(args.preset).is_file()):
        if args.checkpoint:  # a checkpoint given twice
            raise UserError(f"give the checkpoint once: {args.preset} or --checkpoint {args.checkpoint}")
        args.checkpoint, args.preset = args.preset, None
    if args.checkpoint:
        model, config, spec = load_model(args.checkpoint)
    elif args.preset:
        config, spec = get_preset(args.preset), get_spec(args.spec)
        model = build_model(config, spec)
    else:
        raise UserError("give a PRESET or --checkpoint")
    size = args.input_size or config.input_size
    if args.int8:
        from grmpose.export import calibration_images

        images = calibration_images(args.calibration, args.calibration_images)
        report = export_int8(
            model, args.output, images, size, opset=args.opset, keep_ops=tuple(args.keep_fp32),
            reduce_range=not args.full_range,
        )  # fmt: skip
        write_sidecar(args.output, config, spec, opset=args.opset, precision="int8")
        print(
            f"wrote {report.path} (int8 QDQ, per-channel weights, {report.calibration_images} calibration images)"
        )
        print("int8 nodes: " + ", ".join(f"{op} {n}" for op, n in report.quantized_ops.items()))
        print("float32 compute nodes: " + ", ".join(f"{op} {n}" for op, n in report.kept_fp32_ops.items()))
        return 0
    path = export_onnx(model, args.output, input_size=size, opset=args.opset)
    write_sidecar(path, config, spec, opset=args.opset or ONNX_OPSET)
    print(f"wrote {path} (dynamic batch, height and width; multiples of 32)")
    return 0


# ---------------------------------------------------------------- synth
def cmd_synth(args: argparse.Namespace) -> int:
    from grmpose.data.synthetic import synth_main

    if len(args.image_size) > 2:
        raise ValueError(f"--image-size takes SIZE or WIDTH HEIGHT, got {len(args.image_size)} numbers")
    size = args.image_size[0] if len(args.image_size) == 1 else tuple(args.image_size)

    with _bar(args.images + (args.val_images or max(1, args.images // 10)), "synthesise", args.quiet) as bar:
        path = synth_main(
            args.out, args.spec, args.images, args.seed, val_images=args.val_images,
            image_size=size, max_people=args.max_people, progress=bar,
            height_range=tuple(args.height_range) if args.height_range else None,
        )  # fmt: skip
    print(f"wrote {path}")
    return 0


class _bar:
    """A tqdm bar usable as the synthetic generator's progress callback (``progress(n)``)."""

    def __init__(self, total: int, desc: str, quiet: bool) -> None:
        self.total, self.desc, self.quiet, self.tqdm = total, desc, quiet, None

    def __enter__(self):
        if self.quiet:
            return None
        from tqdm import tqdm

        self.tqdm = tqdm(total=self.total, desc=self.desc, dynamic_ncols=True)
        return self

    def __call__(self, iterable):
        for item in iterable:
            yield item
            self.tqdm.update(1)

    def __exit__(self, *exc):
        if self.tqdm is not None:
            self.tqdm.close()
        return False


# ---------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from grmpose.train import TrainConfig, train

    cfg = TrainConfig(
        data=args.data, out=args.out, preset=args.preset, epochs=args.epochs, batch_size=args.batch_size,
        accumulate=args.accumulate, lr=args.lr, input_size=args.input_size, workers=args.workers,
        seed=args.seed, val_every=args.val_every, val_images=args.val_images, max_minutes=args.max_minutes,
        val_pck_images=args.val_pck_images,
        max_steps=args.max_steps, checkpoint_every=args.checkpoint_every, device=args.device,
        resume=args.resume, amp=not args.no_amp, progress=not args.quiet, schedule=args.schedule,
        lr_steps=tuple(args.lr_steps) if args.lr_steps else None, offset_loss=args.offset_loss,
        center_sigma=args.center_sigma, sigma=args.sigma, skip_empty_images=not args.keep_empty_images,
        optimizer=args.optimizer, weight_decay=args.weight_decay, lr_schedule=args.lr_schedule,
        warmup_steps=args.warmup_steps, min_lr_ratio=args.min_lr_ratio, ema=args.ema,
        offset_mean_pose=args.offset_mean_pose, flip_prob=args.flip_prob, init=args.init,
        max_rotation=args.max_rotation, scale_range=tuple(args.scale_range), max_translate=args.max_translate,
        offset_unit=args.offset_unit, offset_blocks=args.offset_blocks,
        offset_channels=args.offset_channels, heatmap_loss=args.heatmap_loss,
        keep_freed_memory=not args.return_freed_memory,
        log_every=args.log_every, pretrained=args.pretrained,
    )  # fmt: skip
    summary = train(cfg)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if main_rank:
        print(json.dumps(summary, indent=2))
    if "signal" in summary:  # preempted: the checkpoint is written, say how to go on
        if main_rank:
            print(
                f"grmpose: training {summary['stop_reason']}; resumable checkpoint written: continue with "
                f"the same command plus --resume {summary['resume']}",
                file=sys.stderr,
            )
        return 128 + int(getattr(signal, summary["signal"], signal.SIGTERM))
    return 0 if not summary["stop_reason"].endswith("in a row") else 1


# ---------------------------------------------------------------- eval
def cmd_eval(args: argparse.Namespace) -> int:
    if args.gt or args.results:
        if not (args.gt and args.results):
            raise UserError("scoring a results file needs both --gt and --results")
        from grmpose.evaluate import eval_results_main

        report = eval_results_main(args.gt, args.results, args.spec or "coco", as_json=args.json)
        print(report["text"])
        return 0
    if not (args.checkpoint and args.data):
        raise UserError("give --checkpoint and --data (or --gt and --results to score a results file)")
    from grmpose.evaluate_run import evaluate_checkpoint

    metrics = evaluate_checkpoint(
        args.checkpoint, args.data, split=args.split, out=args.out, flip=args.flip,
        multi_scale=args.multi_scale, decoder=args.decoder, backend=args.backend, device=args.device,
        max_images=args.max_images, rescore=args.rescore, progress=not args.quiet, dtype=args.dtype,
        batch_size=args.batch_size, workers=args.workers, input_size=args.input_size,
    )  # fmt: skip
    if args.json:
        print(json.dumps(metrics))
    else:
        from grmpose.evaluate import format_metrics

        print(format_metrics({k: v for k, v in metrics.items() if isinstance(v, float)}))
        unreadable = metrics.get("images_unreadable", 0)
        print(
            f"{metrics['images']} of {metrics['images_total']} images evaluated"
            + (f" ({unreadable} unreadable, kept in the ground truth)" if unreadable else "")
            + f"; results in {metrics['results']}"
        )
    return 0


# ---------------------------------------------------------------- predict
def cmd_predict(args: argparse.Namespace) -> int:
    from grmpose.predict import predict_main

    if not (args.checkpoint or args.preset):
        raise UserError("give --checkpoint CKPT (or --preset NAME for random weights)")
    summary = predict_main(
        args.source, args.out, checkpoint=args.checkpoint, preset=args.preset, spec=args.spec,
        device=args.device, backend=args.backend, flip=args.flip, multi_scale=args.multi_scale,
        decoder=args.decoder, show_maps=args.show_maps, score_threshold=args.score_threshold,
        progress=not args.quiet, max_frames=args.max_frames, input_size=args.input_size, dtype=args.dtype,
        batch_size=args.batch_size, workers=args.workers,
    )  # fmt: skip
    print(json.dumps(summary, indent=2, default=str))
    return 0


# ---------------------------------------------------------------- track
def cmd_track(args: argparse.Namespace) -> int:
    from grmpose.track import OneEuroConfig, TrackConfig
    from grmpose.track_video import track_main

    if not (args.checkpoint or args.preset):
        raise UserError("give --checkpoint CKPT (or --preset NAME for random weights)")
    smoothing = None
    if args.smooth:
        smoothing = OneEuroConfig(min_cutoff=args.min_cutoff, beta=args.beta, d_cutoff=args.d_cutoff)
    config = TrackConfig(
        max_missed=args.max_missed, min_oks=args.min_oks, min_score=args.min_score, smoothing=smoothing
    )
    summary = track_main(
        args.source, args.out, checkpoint=args.checkpoint, preset=args.preset, spec=args.spec,
        device=args.device, backend=args.backend, flip=args.flip, decoder=args.decoder, config=config,
        trail=args.trail, score_threshold=args.score_threshold, fps=args.fps, progress=not args.quiet,
        max_frames=args.max_frames, input_size=args.input_size,
    )  # fmt: skip
    print(json.dumps(summary, indent=2, default=str))
    return 0


# ---------------------------------------------------------------- rescore-fit
def cmd_rescore_fit(args: argparse.Namespace) -> int:
    from grmpose.rescore import rescore_fit_main

    info = rescore_fit_main(
        args.checkpoint, args.data, args.out, split=args.split, max_images=args.max_images,
        flip=not args.no_flip, epochs=args.epochs, device=args.device, progress=not args.quiet,
        input_size=args.input_size,
    )  # fmt: skip
    print(json.dumps(info, indent=2, default=str))
    return 0


# ---------------------------------------------------------------- bench
def cmd_bench(args: argparse.Namespace) -> int:
    from grmpose.bench import add_ratios, bench_models, bench_yolo

    presets = args.presets or (["tiny"] if args.quick else ["tiny", "grmpose-w32", "dekr-w32"])
    repeats, warmup = (2, 1) if args.quick else (args.repeats, args.warmup)
    rows = bench_models(
        presets, input_size=args.input_size, threads=args.threads, repeats=repeats, warmup=warmup,
        backends=args.backends,
    )  # fmt: skip
    if args.yolo:
        backends = tuple(b for b in args.backends if b != "compile")
        rows += bench_yolo(threads=args.threads, repeats=repeats, warmup=warmup, backends=backends)
        add_ratios(rows, keys=("median_ms",))
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    print(
        f"{'preset':<20} {'backend':<12} {'input':>5} {'latency ms':>11} {'vs dekr-w32':>11} {'peak MiB':>9}"
    )
    for r in rows:
        ratio = r.get("median_ms_vs_dekr-w32")
        print(f"{r['preset']:<20} {r['backend']:<12} {r.get('input_size', '-'):>5} {_fmt(r.get('median_ms')):>11} "
              f"{_fmt(ratio, 2):>11} {_fmt(r.get('peak_rss_mib'), 0):>9}")  # fmt: skip
    print("full suite with decoding, memory and a Markdown table: python -m benchmarks.run_all")
    return 0


def _fmt(value, digits: int = 1) -> str:
    return "n/a" if value is None or isinstance(value, str) else f"{value:.{digits}f}"


# ---------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    from grmpose.demo import DemoConfig, run_demo

    cfg = DemoConfig(
        out=args.out, train_images=args.train_images, val_images=args.val_images,
        seed=args.seed, progress=not args.quiet, workers=args.workers,
    )  # fmt: skip
    if args.minutes is not None:
        cfg = dataclasses.replace(cfg, minutes=args.minutes)
    result = run_demo(cfg)
    from grmpose.evaluate import format_metrics

    m = result["metrics"]
    t = result["train"]
    print(f"trained tiny for {t['minutes']:.1f} min: {t['steps']} steps, {t['images_per_s']:.1f} images/s")
    test = "flip test" if result["flip_test"] else "no flip test"
    print(f"held-out synthetic people ({m['images']} images from another seed, {test}):")
    print(format_metrics({k: v for k, v in m.items() if not k.startswith("images") and k != "results"}))
    met = "met" if m["AP"] >= result["goal_AP"] else "NOT met"
    print(f"AP {m['AP']:.3f} against the goal of {result['goal_AP']:g}: {met}")
    if result["flip_test"]:
        print(f"AP without the flip test: {result['metrics_no_flip_test']['AP']:.3f}")
    else:
        print(f"AP with the flip test: {result['metrics_flip_test']['AP']:.3f}")
    if result["rescore"]:
        print(f"AP without the rescoring net: {result['metrics_no_rescore']['AP']:.3f}")
    pck = result["heatmap_pck"]
    print(
        f"joints the heatmaps place within 0.1 of the person's size (PCK, given the person): {pck['pck']:.3f}"
    )
    print(f"pictures: {Path(result['pictures'][0]).parent if result['pictures'] else '-'}")
    if result.get("learning_curve"):
        print(f"learning curve: {result['learning_curve']}")
    print(f"everything: {Path(args.out) / 'demo.json'}")
    return 0


# ---------------------------------------------------------------- parser
def _add_speed_flags(p: argparse.ArgumentParser) -> None:
    """--dtype, --batch-size, --workers of predict and eval."""
    p.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
        help="torch backend compute type (float16: CUDA only); int8: export --int8, then --backend onnxruntime",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=1, help="images per network call (similar sizes)")
    p.add_argument("--workers", type=int, default=2, help="threads reading images ahead (0: none)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grmpose", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("summary", help="parameters, GMACs and GFLOPs of presets")
    p.add_argument("presets", nargs="*", metavar="PRESET", help="preset names (default: all)")
    p.add_argument("--spec", default="coco", help="keypoint spec: coco, crowdpose or a YAML file")
    p.add_argument("--input-size", type=int, default=None, help="square input size (default: the preset's)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("export", help="export to ONNX (dynamic batch and image size)")
    p.add_argument(
        "preset", nargs="?", help="a checkpoint (.safetensors or .pt), or a preset name (random weights)"
    )
    p.add_argument("--checkpoint", help="a .safetensors or .pt checkpoint")
    p.add_argument("--spec", default="coco", help="keypoint spec for a preset")
    p.add_argument("--output", required=True, help="output .onnx file")
    p.add_argument("--input-size", type=int, default=None, help="example input size used for tracing")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--int8", action="store_true", help="static int8 quantisation (ONNX Runtime, QDQ)")
    p.add_argument("--calibration", help="--int8 calibration images: a folder or a quoted glob")
    p.add_argument("--calibration-images", type=int, default=64, help="use the first N (default 64)")
    p.add_argument(
        "--keep-fp32", nargs="*", default=["GridSample"], metavar="OP",
        help="ONNX op types left in float32 with their input paths (default: GridSample)",
    )  # fmt: skip
    p.add_argument(
        "--full-range", action="store_true", help="8-bit weights (default 7-bit: no VNNI overflow)"
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("synth", help="generate a synthetic crowd dataset (COCO format + dataset.yaml)")
    p.add_argument("out", help="output folder")
    p.add_argument("--spec", default="coco", help="coco or crowdpose")
    p.add_argument("--images", type=int, default=1000, help="training images")
    p.add_argument("--val-images", type=int, default=None, help="validation images (default: images / 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--image-size", type=int, nargs="+", default=[256], metavar="SIZE",
        help="SIZE (square) or WIDTH HEIGHT in pixels",
    )  # fmt: skip
    p.add_argument("--max-people", type=int, default=15)
    p.add_argument(
        "--height-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
        help="people's heights as fractions of the image height (default: the crowd level, smaller the "
        "more people; the demo's level: --max-people 5 --height-range 0.25 0.9)",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("train", help="train a model (single process or under torchrun)")
    p.add_argument("--preset", default="tiny")
    p.add_argument(
        "--data", required=True, help="COCO root, CrowdPose root, dataset.yaml or a folder with one"
    )
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--epochs", type=int, default=None, help="default: 140 (COCO), 300 (CrowdPose)")
    p.add_argument("--schedule", choices=["coco", "crowdpose"], default=None, help="lr schedule to scale")
    p.add_argument("--lr-steps", type=int, nargs="*", default=None, help="explicit lr-step epochs")
    p.add_argument("--batch-size", type=int, default=10, help="images per process")
    p.add_argument("--accumulate", type=int, default=1, help="split each batch into N chunks")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--input-size", type=int, default=None, help="training crop (default: the preset's)")
    p.add_argument(
        "--workers", type=int, default=None,
        help="DataLoader worker processes (default: 2 on CUDA, 0 on the CPU, where a worker slows the training's threads)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-every", type=int, default=1, help="validate every N epochs (0: never)")
    p.add_argument("--val-images", type=int, default=None, help="validate on the first N images")
    p.add_argument(
        "--val-pck-images", type=int, default=100,
        help="also measure the heatmap PCK (given the person) on the first N validation images (0: off)",
    )  # fmt: skip
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this much time")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N steps")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1")
    p.add_argument("--resume", default=None, help="a last.pt to continue from")
    p.add_argument(
        "--pretrained", default=None, metavar="FILE",
        help="official HRNet ImageNet weights for the backbone (e.g. hrnet_w32-36af842e.pth)",
    )  # fmt: skip
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.add_argument(
        "--return-freed-memory", action="store_true",
        help="CPU: let malloc give freed memory back to the system every step (glibc's default; "
        "slower: by default grmpose keeps it for reuse)",
    )  # fmt: skip
    p.add_argument("--offset-loss", type=float, default=0.03, help="offset loss factor (DEKR: 0.03)")
    p.add_argument(
        "--offset-mean-pose", action="store_true",
        help="start the offset head's bias at the data's mean pose (DEKR: 0); for short runs",
    )  # fmt: skip
    p.add_argument(
        "--flip-prob", type=float, default=0.5,
        help="probability of a horizontal flip in the augmentation (DEKR: 0.5); 0 when left and right "
        "are told apart by a cue a mirror does not keep",
    )  # fmt: skip
    p.add_argument(
        "--max-rotation", type=float, default=30.0, metavar="DEG",
        help="rotation of the augmentation, uniform in [-DEG, DEG] (DEKR: 30)",
    )  # fmt: skip
    p.add_argument(
        "--scale-range", type=float, nargs=2, default=[0.75, 1.5], metavar=("MIN", "MAX"),
        help="crop box side as a multiple of the image's short side, uniform in [MIN, MAX]; > 1 zooms "
        "out (DEKR: 0.75 1.5)",
    )  # fmt: skip
    p.add_argument(
        "--max-translate", type=float, default=40.0,
        help="shift of the crop per axis, uniform in [-T, T], in units of input size / 200 (DEKR: 40)",
    )  # fmt: skip
    p.add_argument(
        "--init", choices=["dekr", "kaiming"], default="dekr",
        help="weight initialisation (DEKR: N(0, 0.001) convs, made for a pretrained backbone); kaiming: "
        "He's rule for the hidden convs, for training from scratch",
    )  # fmt: skip
    p.add_argument(
        "--offset-unit", type=float, default=None,
        help="map pixels per unit of the offset head's last conv (default: the preset's, 1 as DEKR); a "
        "larger unit is a larger step for that layer, for short runs",
    )  # fmt: skip
    p.add_argument(
        "--offset-blocks", type=int, default=None,
        help="adaptive-conv blocks per keypoint in the offset head (default: the preset's; DEKR: 2, tiny: 1)",
    )  # fmt: skip
    p.add_argument(
        "--offset-channels", type=int, default=None,
        help="channels per keypoint in the offset head (default: the preset's; DEKR: 15, tiny: 8)",
    )  # fmt: skip
    p.add_argument(
        "--heatmap-loss", choices=["mse", "focal"], default=None,
        help="mse: DEKR's weighted MSE on raw heatmaps (the default for a new run); focal: sigmoid "
        "heatmaps and CornerNet's focal loss. When resuming: the checkpoint's",
    )  # fmt: skip
    p.add_argument("--optimizer", choices=["adam", "adamw"], default="adam", help="DEKR: adam")
    p.add_argument(
        "--weight-decay", type=float, default=0.0, help="on conv/linear weights, not norms or biases"
    )
    p.add_argument(
        "--lr-schedule",
        choices=["step", "cosine"],
        default="step",
        help="step: x0.1 at the schedule's epochs (DEKR); cosine: down to lr x --min-lr-ratio",
    )
    p.add_argument("--warmup-steps", type=int, default=0, help="linear lr warmup over N steps")
    p.add_argument("--min-lr-ratio", type=float, default=0.01, help="where the cosine schedule ends")
    p.add_argument(
        "--ema", type=float, default=0.0, help="weights' moving-average decay, e.g. 0.999 (0: off)"
    )
    p.add_argument("--log-every", type=int, default=10, help="log the loss every N steps")
    p.add_argument(
        "--center-sigma", type=float, default=None, help="centre heatmap sigma (default: COCO 4, CrowdPose 2)"
    )
    p.add_argument("--sigma", type=float, default=2.0, help="keypoint heatmap sigma in map pixels (DEKR: 2)")
    p.add_argument(
        "--keep-empty-images", action="store_true", help="also train on images without annotations"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on a dataset, or score a results file")
    p.add_argument("--checkpoint", help=".safetensors or .pt")
    p.add_argument("--data", help="dataset (as for train)")
    p.add_argument("--split", default="val")
    p.add_argument("--out", default=None, help="folder for results.json and metrics.json")
    p.add_argument("--flip", action="store_true", help="flip test")
    p.add_argument("--multi-scale", action="store_true", help="scales 0.5, 1, 2")
    p.add_argument("--decoder", default="regression", choices=["regression", "ae", "hybrid"])
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--rescore", default=None, help="rescoring net from grmpose rescore-fit")
    p.add_argument(
        "--input-size", type=int, default=None, help="short side at test time (default: the model's training size)"
    )
    _add_speed_flags(p)
    p.add_argument("--gt", help="ground-truth JSON (score an existing results file)")
    p.add_argument("--results", help="COCO-format results JSON")
    p.add_argument("--spec", default=None, help="coco, crowdpose or a YAML spec (with --gt/--results)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON dict")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="poses for an image, folder, glob, video or webcam")
    p.add_argument("source", help="image, folder, glob (quoted), video file or webcam index")
    p.add_argument("--checkpoint", help=".safetensors/.pt checkpoint or .onnx model")
    p.add_argument("--preset", help="random weights of a preset (smoke and speed tests)")
    p.add_argument("--spec", default="coco", help="keypoint spec for --preset")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    p.add_argument("--flip", action="store_true", help="flip test")
    p.add_argument("--multi-scale", action="store_true", help="scales 0.5, 1, 2")
    p.add_argument("--decoder", default="regression", choices=["regression", "ae", "hybrid"])
    p.add_argument("--show-maps", action="store_true", help="add heatmap/centre/offset panels")
    p.add_argument("--score-threshold", type=float, default=0.1)
    p.add_argument("--max-frames", type=int, default=None, help="video/webcam: stop after N frames")
    p.add_argument("--input-size", type=int, default=None, help="short side at test time")
    _add_speed_flags(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("track", help="people with identities through a video, webcam or folder of frames")
    p.add_argument("source", help="video file, webcam index, folder of frames or glob (quoted)")
    p.add_argument("--checkpoint", help=".safetensors/.pt checkpoint or .onnx model")
    p.add_argument("--preset", help="random weights of a preset (smoke tests)")
    p.add_argument("--spec", default="coco", help="keypoint spec for --preset")
    p.add_argument("--out", required=True, help="output folder (annotated video + tracks.json)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    p.add_argument("--flip", action="store_true", help="flip test")
    p.add_argument("--decoder", default="regression", choices=["regression", "ae", "hybrid"])
    p.add_argument("--max-missed", type=int, default=15, help="frames an unseen person keeps its id")
    p.add_argument("--min-oks", type=float, default=0.2, help="least OKS to continue a track")
    p.add_argument("--min-score", type=float, default=0.1, help="people scored below are not tracked")
    p.add_argument("--smooth", action="store_true", help="One-Euro smoothing of the keypoints")
    p.add_argument("--min-cutoff", type=float, default=1.0, help="One-Euro cut-off at rest (Hz)")
    p.add_argument("--beta", type=float, default=0.01, help="One-Euro speed coefficient")
    p.add_argument("--d-cutoff", type=float, default=1.0, help="One-Euro speed cut-off (Hz)")
    p.add_argument("--trail", type=int, default=20, help="frames of trail behind each person (0: none)")
    p.add_argument("--score-threshold", type=float, default=0.1, help="joints below are not drawn")
    p.add_argument("--fps", type=float, default=None, help="frame rate (folders; default 25 or the video's)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after N frames")
    p.add_argument("--input-size", type=int, default=None, help="short side at test time")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_track)

    p = sub.add_parser("rescore-fit", help="fit the rescoring net on a model's own training-set predictions")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--split", default="train")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--no-flip", action="store_true", help="predict without the flip test")
    p.add_argument(
        "--input-size", type=int, default=None,
        help="short side of the predictions (default: the model's training size); use the one you evaluate at",
    )  # fmt: skip
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_rescore_fit)

    p = sub.add_parser("bench", help="latency and memory of presets per backend, side by side with dekr-w32")
    p.add_argument("presets", nargs="*", metavar="PRESET", help="default: tiny, grmpose-w32, dekr-w32")
    p.add_argument(
        "--backends", nargs="+", default=["eager", "onnxruntime"], choices=["eager", "compile", "onnxruntime"]
    )
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="tiny only, few repeats (a smoke run)")
    p.add_argument(
        "--yolo",
        action="store_true",
        help="add YOLO11n/s/m-pose at 640 (needs the optional ultralytics package)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "demo", help="the main job: synthetic crowds -> train tiny on CPU -> evaluate -> pictures"
    )
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--minutes", type=float, default=None, help="training time budget (default: the demo's)")
    p.add_argument("--train-images", type=int, default=2000)
    p.add_argument("--val-images", type=int, default=200)
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: grmpose train's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("grmpose: interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, ImportError, OSError) as err:
        if args.verbose:
            raise
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"grmpose: error: {msg}", file=sys.stderr)
        return 2
    except Exception as err:  # a bug, not a bad input: still one line; -v shows the traceback
        if args.verbose:
            raise
        msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
        print(
            f"grmpose: error: unexpected {type(err).__name__}: {msg} (run with -v for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
