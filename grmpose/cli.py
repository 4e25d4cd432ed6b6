"""The ``grmpose`` command: one entry point, thin subcommands over importable functions."""

from __future__ import annotations

import argparse
import json
import logging
import sys

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
    from grmpose.checkpoint import load_model
    from grmpose.config import get_preset
    from grmpose.export import export_onnx
    from grmpose.model.net import build_model

    if args.checkpoint:
        model, config, _ = load_model(args.checkpoint)
    elif args.preset:
        config = get_preset(args.preset)
        model = build_model(config, args.spec)
    else:
        raise UserError("give a PRESET or --checkpoint")
    path = export_onnx(model, args.output, input_size=args.input_size or config.input_size, opset=args.opset)
    print(f"wrote {path} (dynamic batch, height and width; multiples of 32)")
    return 0


# ---------------------------------------------------------------- parser
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
    p.add_argument("preset", nargs="?", help="preset name (random weights) when no --checkpoint is given")
    p.add_argument("--checkpoint", help="a .safetensors or .pt checkpoint")
    p.add_argument("--spec", default="coco", help="keypoint spec for a preset")
    p.add_argument("--output", required=True, help="output .onnx file")
    p.add_argument("--input-size", type=int, default=None, help="example input size used for tracing")
    p.add_argument("--opset", type=int, default=18)
    p.set_defaults(func=cmd_export)

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
    except (UserError, ValueError, FileNotFoundError, PermissionError, IsADirectoryError, OSError) as err:
        if args.verbose:
            raise
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"grmpose: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
