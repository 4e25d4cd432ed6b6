"""Training throughput of ``grmpose train``, side by side with an earlier revision of the code.

Each case is one real ``grmpose train`` process (forward + backward + optimiser + data loading and
target building) on the same synthetic crowds, ``--max-steps`` steps, no
validation. The baseline is the code of ``--baseline`` (a git revision, unpacked with
``git archive`` into a temporary folder), run the same way. Cases are interleaved and repeated; the
table quotes medians of images/s (the run's images over its loop time, data waits included) and
the ratio to the baseline, and each process's peak memory (max RSS).

    python -m benchmarks.train_throughput [--baseline d2b0737] [--steps 30] [--repeats 3]

Writes ``benchmarks/results/train_throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.provenance import write_results_json

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent

#: The revision before the faster training path (issue "A main job whose model visibly works").
BASELINE = "d2b0737"


def unpack_revision(rev: str, dest: Path) -> Path:
    """The source tree of git revision ``rev`` in ``dest`` (``git archive``; nothing else touched)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def run_case(
    source: Path, data: Path, out: Path, args: argparse.Namespace, extra: list[str], env_extra: dict | None = None
) -> dict:
    """One ``grmpose train`` process from ``source`` (``env_extra`` added to its environment); its
    summary plus the child's peak RSS."""
    if out.exists():
        shutil.rmtree(out)
    cmd = [
        sys.executable, "-c", "import sys; from grmpose.cli import main; sys.exit(main(sys.argv[1:]))", "train", "--data", str(data), "--out", str(out), "--preset", "tiny",
        "--input-size", str(args.input_size), "--batch-size", str(args.batch_size),
        "--max-steps", str(args.steps), "--val-every", "0", "--quiet", *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(source), **(env_extra or {})}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=source, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {
        "images_per_s": summary["images_per_s"],
        "compute_images_per_s": summary["compute_images_per_s"],
        "steps": summary["steps"],
        "wall_s": wall,
        "user_s": usage.ru_utime,
        "system_s": usage.ru_stime,
        "max_rss_mib": usage.ru_maxrss / 1024,  # Linux reports KiB
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", default=BASELINE, help="git revision to compare with")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="DataLoader workers of the baseline and of the 'N workers' case",
    )
    parser.add_argument("--images", type=int, default=240, help="synthetic training images (crowd level)")
    parser.add_argument("--data", default="runs/throughput_data")
    args = parser.parse_args(argv)

    from grmpose.data.synthetic import generate

    data = Path(args.data)
    if not (data / "train.json").is_file():
        generate(data, "coco", args.images, 8, 0, 512, 15)
    data = data.resolve()
    rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="grmpose-throughput-") as tmp:
        baseline_src = unpack_revision(rev, Path(tmp) / "baseline")
        workers = ["--workers", str(args.workers)]
        no_kernel = {"GRMPOSE_ADAPTIVE_KERNEL": "0"}
        cases = [
            (f"baseline ({rev})", baseline_src, workers, {}),
            (f"this code, {args.workers} DataLoader worker(s)", ROOT, workers, {}),
            ("this code, grid_sample instead of the fused adaptive-conv kernel", ROOT, [], no_kernel),
            ("this code (default)", ROOT, [], {}),
        ]
        runs: dict[str, list[dict]] = {name: [] for name, _, _, _ in cases}
        for r in range(args.repeats):
            for name, source, extra, env_extra in cases:
                rec = run_case(source, data, Path(tmp) / "run", args, extra, env_extra)
                runs[name].append(rec)
                print(f"[{r + 1}/{args.repeats}] {name}: {rec['images_per_s']:.2f} images/s", flush=True)
    base = statistics.median([r["images_per_s"] for r in runs[cases[0][0]]])
    rows = []
    for name, _, extra, env_extra in cases:
        rs = runs[name]
        ips = statistics.median([r["images_per_s"] for r in rs])
        rows.append({
            "case": name,
            "flags": extra,
            "env": env_extra,
            "images_per_s": ips,
            "ratio": ips / base,
            "compute_images_per_s": statistics.median([r["compute_images_per_s"] for r in rs]),
            "system_s": statistics.median([r["system_s"] for r in rs]),
            "user_s": statistics.median([r["user_s"] for r in rs]),
            "max_rss_mib": statistics.median([r["max_rss_mib"] for r in rs]),
            "runs": rs,
        })  # fmt: skip
    record = {
        "what": f"grmpose train, tiny at {args.input_size} px, batch {args.batch_size}, {args.steps} steps per run, "
        f"{args.repeats} interleaved repeats (medians); the baseline with {args.workers} DataLoader worker(s), "
        "this code with as many and with its default (0 on the CPU)",
        "baseline": rev,
        "cpu_threads": os.cpu_count(),
        "rows": rows,
    }  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_results_json(RESULTS / "train_throughput.json", record, "benchmarks.train_throughput", argv)
    lines = [
        "# Training throughput (`grmpose train`, side by side)",
        "",
        record["what"] + f"; baseline = the code at {rev}. Images/s counts data waits (the run's loop time); "
        "compute excludes them. System time and peak memory are the whole process's.",
        "",
        "| case | images/s | vs baseline | compute images/s | system s | user s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['case']} | {row['images_per_s']:.2f} | {row['ratio']:.2f}x | {row['compute_images_per_s']:.2f} "
            f"| {row['system_s']:.1f} | {row['user_s']:.1f} | {row['max_rss_mib']:.0f} |"
        )
    (RESULTS / "train_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return record


if __name__ == "__main__":
    main()
