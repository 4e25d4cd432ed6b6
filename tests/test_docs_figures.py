"""The speed, memory and decoder figures quoted in README.md and docs/performance.md are those of
``benchmarks/results/``: re-measure a benchmark without updating the text (or edit the text alone)
and this fails. Each quoted figure is rebuilt here from the JSON with the text's own rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def results(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def model_row(result: dict, preset: str, backend: str) -> dict:
    (row,) = [r for r in result["models"] if r["preset"] == preset and r["backend"] == backend]
    return row


def decoding_ms(result: dict, decoder: str, flip: bool, people: int) -> float:
    (row,) = [
        d
        for d in result["decoding"]
        if d["decoder"] == decoder and d["flip"] == flip and d["people"] == people
    ]
    return row["median_ms"]


def bench_quotes() -> dict[str, list[str]]:
    """Sentences of README.md and docs/performance.md with their figures taken from bench.json."""
    b = results("bench.json")
    eager = model_row(b, "grmpose-w32", "eager")
    dekr = model_row(b, "dekr-w32", "eager")
    ort = model_row(b, "grmpose-w32", "onnxruntime")
    dekr_ort = model_row(b, "dekr-w32", "onnxruntime")
    comp, dekr_comp = model_row(b, "grmpose-w32", "compile"), model_row(b, "dekr-w32", "compile")
    flip30 = decoding_ms(b, "regression", True, 30)
    predict = {p["flip"]: p["peak_rss_mib"] for p in b["memory"]["predict"]}
    train_mib = b["memory"]["train"]["peak_rss_mib"]
    mac_ratio = eager["gmacs"] / dekr["gmacs"]
    readme = [
        f"(`benchmarks/results/bench.md`, {b['date'][:10]} {b['date'][11:16]} UTC;",
        f"grmpose-w32 takes {eager['median_ms'] / dekr['median_ms']:.2f}× dekr-w32's latency eager",
        f"({eager['median_ms']:.0f} vs {dekr['median_ms']:.0f} ms, BatchNorm folded)",
        f"{ort['median_ms'] / dekr_ort['median_ms']:.2f}× in ONNX Runtime "
        f"({ort['median_ms']:.0f} vs {dekr_ort['median_ms']:.0f} ms)",
        f"the MAC ratio is {mac_ratio:.2f}",
        f"Regression decoding with flip takes {flip30:.1f} ms at 30 people",
        f"`grmpose predict` peaks at {predict[False]:.0f} MiB",
        f"`tiny` training peaks at {train_mib / 1024:.1f} GiB",
    ]
    performance = [
        f"one run on {b['date'][:10]} ({b['date'][11:16]}",
        f"eager (BN folded) {eager['median_ms']:.0f} / {dekr['median_ms']:.0f} ms = "
        f"**{eager['median_ms'] / dekr['median_ms']:.2f}**",
        f"ONNX Runtime {ort['median_ms']:.0f} / {dekr_ort['median_ms']:.0f} = "
        f"**{ort['median_ms'] / dekr_ort['median_ms']:.2f}**",
        f"torch.compile {comp['median_ms']:.0f} / {dekr_comp['median_ms']:.0f} = "
        f"{comp['median_ms'] / dekr_comp['median_ms']:.2f}",
        f"**{ort['median_ms']:.0f} ms** (min {ort['min_ms']:.0f})",
        f"regression **{flip30:.1f} ms** at 30",
        f"**{predict[False]:.0f} MiB** without flip",
        f"{predict[True]:.0f} MiB with flip",
        f"**{train_mib:.0f} MiB**",
        f"a MAC ratio of {mac_ratio:.2f}",
    ]
    return {"README.md": readme, "docs/performance.md": performance}


def yolo_quotes() -> dict[str, list[str]]:
    """The separate YOLO run, quoted in docs/performance.md with its own grmpose/dekr pair."""
    y = results("yolo.json")
    rows = {(r["preset"], r["backend"]): r for r in y["models"] + y["yolo"] if r.get("status", "ok") == "ok"}
    g, d = rows[("grmpose-w32", "eager")], rows[("dekr-w32", "eager")]
    go, do = rows[("grmpose-w32", "onnxruntime")], rows[("dekr-w32", "onnxruntime")]
    n, s, m = (rows[(f"yolo11{x}-pose", "onnxruntime")]["median_ms"] for x in "nsm")
    return {
        "docs/performance.md": [
            f"{y['date'][:10]} {y['date'][11:16]} UTC",
            f"{n:.0f} / {s:.0f} / {m:.0f} ms",
            f"{g['median_ms']:.0f} / {d['median_ms']:.0f} ms = {g['median_ms'] / d['median_ms']:.2f} eager",
            f"{go['median_ms']:.0f} / {do['median_ms']:.0f} ms = {go['median_ms'] / do['median_ms']:.2f} ORT",
        ]
    }


def decoder_quotes() -> dict[str, list[str]]:
    r = results("decoders.json")
    rows = {(x["decoder"], x["flip"], x["multi_scale"]): x["AP"] for x in r["rows"]}
    best = r["best"]
    assert best["decoder"] == "regression", "the README says regression decoding is the best"
    assert max(rows.values()) == best["AP"]
    return {
        "README.md": [
            f"With flip and multi-scale it reaches AP {rows[('regression', True, True)]:.3f}",
            f"hybrid reaches {rows[('hybrid', True, True)]:.3f}",
            f"raises that row to AP {r['rescore']['AP_with']:.3f}",
        ]
    }


@pytest.mark.parametrize("source", [bench_quotes, yolo_quotes, decoder_quotes], ids=lambda f: f.__name__)
def test_docs_quote_the_results_files(source):
    for doc, quotes in source().items():
        text = " ".join((REPO / doc).read_text().split())  # line breaks count as spaces
        missing = [q for q in quotes if " ".join(q.split()) not in text]
        assert not missing, f"{doc} does not quote benchmarks/results as: {missing}"


def test_docs_quote_one_run_for_the_pair():
    """The YOLO run's own grmpose/dekr ratios are never presented as the main figures."""
    y = results("yolo.json")
    g = [r for r in y["models"] if r["preset"] == "grmpose-w32" and r["backend"] == "eager"][0]
    other = f"{g['median_ms_vs_dekr-w32']:.2f}×"
    assert other not in (REPO / "README.md").read_text()
