"""The speed, memory and decoder figures quoted in README.md and docs/performance.md are those of
``benchmarks/results/``: re-measure a benchmark without updating the text (or edit the text alone)
and this fails. Each quoted figure is rebuilt here from the JSON with the text's own rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.op_profile import OTHER as OP_OTHER

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


def throughput_quotes() -> dict[str, list[str]]:
    r = results("train_throughput.json")
    base, new = r["rows"][0], r["rows"][-1]
    assert base["case"].startswith("baseline") and new["case"] == "this code (default)"
    return {
        "README.md": [
            f"{new['images_per_s']:.1f} images/s against {base['images_per_s']:.1f} for the code at {r['baseline']}",
            f"**{new['ratio']:.2f}×**",
        ]
    }


def layout_quotes() -> dict[str, list[str]]:
    r = results("train_step_layouts.json")
    rows, ms = {x["variant"]: x for x in r["rows"]}, r["onednn"]["ms_per_step"]
    as_is, cl, mm4, mm = rows["as_is"], rows["channels_last"], rows["matmul_stride4"], rows["matmul_all"]
    return {
        "README.md": [
            f"{ms['convolution']:.0f} ms of a {as_is['median_ms']:.0f} ms step",
            f"blocked one at {ms['reorder']:.0f} ms",
            f"channels-last {cl['median_ms']:.0f} ms ({cl['vs_as_is']:.2f}×)",
            f"matrix products {mm4['median_ms']:.0f} ms ({mm4['vs_as_is']:.2f}×), every 1×1 convolution so "
            f"{mm['median_ms']:.0f} ms ({mm['vs_as_is']:.2f}×)",
        ],
        "docs/performance.md": [
            f"primitives at {ms['convolution']:.0f} ms of a {as_is['median_ms']:.0f} ms step and those conversions at "
            f"{ms['reorder']:.0f} ms",
            f"channels-last (which oneDNN reads directly) took {cl['median_ms']:.0f} ms",
            f"as plain matrix products {mm4['median_ms']:.0f} ms, every 1×1 convolution so {mm['median_ms']:.0f} ms",
        ],
    }


def demo_levers_quotes() -> dict[str, list[str]]:
    rows = {r["case"]: r for r in results("demo_levers.json")["rows"]}
    base, flips, flips8, unit8 = rows["base128"], rows["flips"], rows["flips_unit8"], rows["unit8"]
    at192, noaug, rot0 = rows["dekr_aug"], rows["lr2e-3"], rows["rot0"]
    lr4, lr8 = rows["base@2026-12-05"], rows["lr8e-3"]  # the demo's settings, measured beside the lr rows
    today, blocks2, ch15 = rows["base@2026-12-06"], rows["offset_blocks2"], rows["offset_ch15"]
    mirror, mirror_noflip = rows["base@2026-12-07a"], rows["noflips"]  # the mirror-symmetric scenes
    head, w24 = rows["dekr_offset_head"], rows["width24"]
    a1, a2, beta4, u8 = rows["adaptive_A1I"], rows["adaptive_A2I"], rows["offset_beta4"], rows["unit8_192"]
    b2, b3, t_mean, t_mean_a1 = (
        rows["base@2026-12-07b"], rows["base@2026-12-07c"], rows["adaptive_t_mean"], rows["adaptive_t_mean_A1"]
    )
    progressive, radius2, person = rows["progressive_128"], rows["offset_radius2"], rows["offset_person_scale"]
    person_small, dense8, dense12 = rows["offset_person_scale_small_step"], rows["train_people8"], rows["train_people12"]
    person_supervised = rows["offset_person_scale_supervised"]
    evening = [rows["base@2026-12-07d"], rows["base@2026-12-07e"], rows["base@2026-12-07f"]]
    night, deep, h64 = [rows["base@2026-12-07g"], rows["base"]], rows["intermediate_heatmaps"], rows["head64"]
    h32 = [rows["head32@2026-12-07a"], rows["head32"]]
    ema99, ema98, radius8, zero_res = rows["ema99"], rows["ema98"], rows["offset_radius8"], rows["zero_init_residual"]
    w12 = [rows["width12@2026-12-07a"], rows["width12@2026-12-07b"], rows["width12"]]
    return {
        "README.md": [
            f"no flips: {base['steps']} steps, PCK {base['heatmap_pck']:.3f}, AP {base['AP']:.4f}",
            f"192 px, {at192['steps']} steps, PCK {at192['heatmap_pck']:.3f}, AP {at192['AP']:.4f}",
            f"shift (±40): {noaug['steps']} steps, PCK {noaug['heatmap_pck']:.3f}, AP {noaug['AP']:.4f} "
            f"(AR50 {noaug['AR50']:.3f}), against {at192['steps']} steps, PCK {at192['heatmap_pck']:.3f}, "
            f"AP {at192['AP']:.4f} with them; without the rotation alone {rot0['AP']:.4f}",
            f"4e-3 made {lr4['steps']} steps, PCK {lr4['heatmap_pck']:.3f}, AP {lr4['AP']:.4f} (AR50 "
            f"{lr4['AR50']:.3f}), 8e-3 {lr8['steps']} steps, PCK {lr8['heatmap_pck']:.3f}, AP {lr8['AP']:.4f}",
            f"with flips: {flips['steps']} steps, PCK {flips['heatmap_pck']:.3f}, AP {flips['AP']:.4f}",
            f"units of 8 map px: PCK {flips8['heatmap_pck']:.3f}, AP {flips8['AP']:.4f} with flips and "
            f"PCK {unit8['heatmap_pck']:.3f}, AP {unit8['AP']:.4f} without",
            f"the demo's settings made {today['steps']} steps, PCK {today['heatmap_pck']:.3f}, AP {today['AP']:.4f}",
            f"instead of tiny's one, {blocks2['steps']} steps, AP {blocks2['AP']:.4f}",
            f"instead of 8, {ch15['steps']} steps, AP {ch15['AP']:.4f}",
            f"(DEKR's whole offset head), {head['steps']} steps, AP {head['AP']:.4f}",
            f"(the preset patched), {w24['steps']} steps, AP {w24['AP']:.4f}",
            f"{a1['steps']} steps, AP {a1['AP']:.4f}; at twice the identity, {a2['steps']} steps, AP {a2['AP']:.4f}",
            f"{beta4['steps']} steps, PCK {beta4['heatmap_pck']:.3f}, AP {beta4['AP']:.4f}; DEKR's loss kept",
            f"units of 8 map px at 192 px: {u8['steps']} steps, AP {u8['AP']:.4f}; DEKR's unit kept",
            f"the demo's settings (flips, flip test) made {mirror['steps']} steps, PCK {mirror['heatmap_pck']:.3f}, "
            f"AP {mirror['AP']:.4f}; without flips in training and test {mirror_noflip['steps']} steps, "
            f"PCK {mirror_noflip['heatmap_pck']:.3f}, AP {mirror_noflip['AP']:.4f}",
            f"the demo's settings made {b2['steps']} steps, PCK {b2['heatmap_pck']:.3f}, AP {b2['AP']:.4f} and, run "
            f"again, {b3['steps']} steps, AP {b3['AP']:.4f}",
            f"not on the centre): {t_mean['steps']} steps, AP {t_mean['AP']:.4f}; the same with A at the identity: "
            f"AP {t_mean_a1['AP']:.4f}",
            f"128 px, then 192): {progressive['steps']} steps, AP {progressive['AP']:.4f}",
            f"4: AP {radius2['AP']:.4f}",
            f"that starts at 0): AP {person['AP']:.4f}, PCK {person['heatmap_pck']:.3f}",
            f"with s at a 50x smaller step: AP {person_small['AP']:.4f}",
            f"log of each person's size: {person_supervised['steps']} steps, PCK {person_supervised['heatmap_pck']:.3f}, "
            f"AP {person_supervised['AP']:.4f}",
            f"(1.5x the people), {dense8['steps']} steps, PCK {dense8['heatmap_pck']:.3f}, AP {dense8['AP']:.4f}; "
            f"up to 12 (2.2x), AP {dense12['AP']:.4f}",
            f"three runs: {evening[0]['steps']}, {evening[1]['steps']} and {evening[2]['steps']} steps, AP "
            f"{evening[0]['AP']:.4f}, {evening[1]['AP']:.4f} and {evening[2]['AP']:.4f}",
            f"{w12[0]['steps']}, {w12[1]['steps']} and {w12[2]['steps']} steps, AP {w12[0]['AP']:.4f}, "
            f"{w12[1]['AP']:.4f} and {w12[2]['AP']:.4f} (mean {sum(r['AP'] for r in w12) / 3:.4f} against "
            f"{sum(r['AP'] for r in evening) / 3:.4f})",
            f"decay 0.99: {ema99['steps']} steps, AP **{ema99['AP']:.4f}**; decay 0.98: AP {ema98['AP']:.4f}",
            f"(4x the cells): AP {radius8['AP']:.4f}",
            f"(zero scale on its last BatchNorm, Goyal et al.): AP {zero_res['AP']:.4f}",
            f"two runs: {night[0]['steps']} and {night[1]['steps']} steps, PCK {night[0]['heatmap_pck']:.3f} and "
            f"{night[1]['heatmap_pck']:.3f}, AP {night[0]['AP']:.4f} and {night[1]['AP']:.4f}",
            f"factor 1 each: {deep['steps']} steps, PCK {deep['heatmap_pck']:.3f}, AP {deep['AP']:.4f}",
            f"width 32, two runs: PCK {h32[0]['heatmap_pck']:.3f} and {h32[1]['heatmap_pck']:.3f}, AP "
            f"{h32[0]['AP']:.4f} and {h32[1]['AP']:.4f}; width 64: {h64['steps']} steps, PCK "
            f"{h64['heatmap_pck']:.3f}, AP {h64['AP']:.4f}",
            f"hybrid decoder's AP {min(r['hybrid_AP'] for r in [*h32, h64]):.4f}-"
            f"{max(r['hybrid_AP'] for r in [*h32, h64]):.4f} against {min(r['hybrid_AP'] for r in night):.4f}-"
            f"{max(r['hybrid_AP'] for r in night):.4f}",
        ],
        "docs/architecture.md": [
            f"AP {mirror['AP']:.4f} with flips and the flip test against {mirror_noflip['AP']:.4f} without",
        ]
    }


def head_capacity_quotes() -> dict[str, list[str]]:
    rows = {r["head"]: r for r in results("heatmap_head_capacity.json")["rows"]}
    fresh = ", ".join(f"{rows[w]['pck_after']:.3f}" for w in ("16", "32", "64"))
    return {
        "README.md": [
            f"own head, trained on, goes from PCK {rows['trained']['pck_before']:.3f} to "
            f"{rows['trained']['pck_after']:.3f}",
            f"fresh heads of width 16, 32 and 64 reach {fresh}",
            f"three BasicBlocks of 16 channels {rows['16x3']['pck_after']:.3f}",
        ]
    }


def demo_quotes() -> dict[str, list[str]]:
    r = results("demo.json")
    t, m = r["train"], r["metrics"]
    return {
        "README.md": [
            f"for {r['config']['minutes']:g} minutes ({t['steps']} steps, {t['images_per_s']:.1f} images/s)",
            f"with the flip test: **AP {m['AP']:.4f}** (AP50 {m['AP50']:.3f})",
            f"without the flip test: AP {r['metrics_no_flip_test']['AP']:.4f}",
            f"without DEKR's rescoring net: AP {r['metrics_no_rescore']['AP']:.4f}",
            f"heatmap PCK {r['heatmap_pck']['pck']:.3f}",
            "AP " + ", ".join(f"{o['AP']:.3f} ({o['width']}×{o['height']})" for o in r["other_sets"]),
        ]
    }


def ap_breakdown_quotes() -> dict[str, list[str]]:
    rows = {(r["model"], r["split"]): r for r in results("ap_breakdown.json")["rows"]}
    old = {(r["model"], r["split"]): r for r in results("ap_breakdown_side_cue.json")["rows"]}
    short, train = rows["8 min", "val"], rows["8 min", "train"]
    before, long, long_train = old["8 min", "val"], old["30 min", "val"], old["30 min", "train"]
    a, d = short["at_true_centre"], short["best_decoded"]
    wrists = sorted(round(short["error_over_scale"][k], 2) for k in ("left_wrist", "right_wrist"))
    ankles = sorted(round(short["error_over_scale"][k], 2) for k in ("left_ankle", "right_ankle"))
    curve = results("demo_30min.json")
    return {
        "README.md": [
            f"recorded run ({short['steps']} steps, AP {short['demo_AP']:.4f})",
            f"mean OKS {a['mean_oks']:.3f} and bound AP at {a['ap_bound']:.3f}",
            f"the decoded poses {d['mean_oks']:.3f} and {d['ap_bound']:.3f}",
            f"reads {short['centre_heat_median']:.2f} at the true centres",
            f"wrists lie {wrists[0]:.2f}-{wrists[1]:.2f} of the person's scale",
            f"ankles {ankles[0]:.2f}-{ankles[1]:.2f} (0.18)",
            f"the bound rises from {a['ap_bound']:.3f} to {short['at_true_centre_sides_free']['ap_bound']:.3f}",
            f"On training images the bound is {train['at_true_centre']['ap_bound']:.3f}",
            f"a run of {before['steps']} steps (AP {before['demo_AP']:.4f} without the flip test) had a bound of "
            f"{before['at_true_centre']['ap_bound']:.3f}",
            f"{long['steps']} steps, `benchmarks/results/demo_30min.json`",
            f"reached **AP {curve['metrics']['AP']:.4f}** (AP50 {curve['metrics']['AP50']:.3f})",
            f"mean OKS {long['at_true_centre']['mean_oks']:.3f} and bound {long['at_true_centre']['ap_bound']:.3f}",
            f"on training images {long_train['at_true_centre']['ap_bound']:.3f}",
        ]
    }


def op_profile_quotes() -> dict[str, list[str]]:
    rows = {(r["part"], r["model"], r["input"]): r for r in results("op_profile.json")["rows"]}
    t192, t256 = rows["training", "tiny", 192], rows["training", "tiny", 256]
    g512, g1024 = rows["inference", "grmpose-w32", 512], rows["inference", "grmpose-w32", 1024]
    d512, d1024 = rows["inference", "dekr-w32", 512], rows["inference", "dekr-w32", 1024]
    k192, k256, g, d = t192["by_kind_ms"], t256["by_kind_ms"], g1024["by_kind_ms"], d1024["by_kind_ms"]
    fwd, bwd = "convolutions, forward", "convolutions, backward"
    afwd, abwd = "adaptive convolution (fused kernel), forward", "adaptive convolution (fused kernel), backward"
    rest, copies, mm = OP_OTHER, "copies and concatenations", "matrix products"
    return {
        "README.md": [
            f"at 192 px {t192['wall_ms']:.0f} ms unprofiled; convolutions {k192[fwd]:.0f} ms forward and "
            f"{k192[bwd]:.0f} ms backward, the fused adaptive convolution {k192[afwd]:.0f} + {k192[abwd]:.0f} ms, "
            f"BatchNorm {k192['BatchNorm']:.0f} ms, copies and concatenations {k192[copies]:.0f} ms",
            f"the rest {k192[rest]:.0f} ms, the optimiser {k192['optimiser']:.0f} ms",
            f"256 px {t256['wall_ms']:.0f} ms; convolutions {k256[fwd]:.0f} + {k256[bwd]:.0f} ms, the adaptive "
            f"convolution {k256[afwd]:.0f} + {k256[abwd]:.0f} ms",
            f"the convolutions alone take {k256[fwd] + k256[bwd]:.0f} ms",
        ],
        "docs/performance.md": [
            f"grmpose-w32's {g1024['profiled_ms']:.0f} profiled ms at 1024 at convolutions {g[fwd]:.0f}",
            f"A/t predictor {g[afwd]:.0f}, element-wise work and the rest {g[rest]:.0f}, matrix products (the "
            f"upsampling among them) {g[mm]:.0f}",
            f"concatenations {g[copies]:.0f}; dekr-w32's {d1024['profiled_ms']:.0f} ms at {d[fwd]:.0f}, {d[afwd]:.0f}, "
            f"{d[rest]:.0f}, {d[mm]:.0f} and {d[copies]:.0f}",
            f"grows {g1024['profiled_ms'] / g512['profiled_ms']:.1f}× ({g512['profiled_ms']:.0f} to "
            f"{g1024['profiled_ms']:.0f} ms), dekr-w32's {d1024['profiled_ms'] / d512['profiled_ms']:.1f}× "
            f"({d512['profiled_ms']:.0f} to {d1024['profiled_ms']:.0f})",
        ],
    }


@pytest.mark.parametrize(
    "source",
    [
        bench_quotes,
        yolo_quotes,
        decoder_quotes,
        throughput_quotes,
        layout_quotes,
        demo_levers_quotes,
        head_capacity_quotes,
        demo_quotes,
        op_profile_quotes,
        ap_breakdown_quotes,
    ],
    ids=lambda f: f.__name__,
)
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


def printed_matches(text: str, value: float) -> bool:
    """``text`` (e.g. "0.034", "**1,298**", "5.0") is ``value`` rounded to the digits it shows."""
    digits = text.strip("* ").replace(",", "")
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    return abs(float(digits) - value) <= 0.5 * 10**-decimals + 1e-12


def test_readme_training_table_matches_the_runs():
    """Each row of the README's synthetic-crowd table is one train_synthetic*.json, as printed."""
    runs = []
    for path in sorted(RESULTS.glob("train_synthetic*.json")):
        r = json.loads(path.read_text())
        runs.append((path.name, r, r["config"].get("offset_loss", 0.03)))  # 0.03: the default before the flag
    readme = (REPO / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.strip().startswith("|") and " min |" in line]
    assert rows, "README has no training table"
    for line in rows:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        minutes, factor, steps, ips, ap, ap50, ar50 = cells
        matching = [
            (name, r)
            for name, r, off in runs
            if r["config"]["minutes"] == float(minutes.split()[0]) and off == float(factor.split()[0])
        ]
        assert len(matching) == 1, f"README row {line!r}: {len(matching)} results files match"
        name, r = matching[0]
        for text, value in ((steps, r["steps"]), (ips, r["train_images_per_s"]), (ap, r["eval"]["AP"]),
                            (ap50, r["eval"]["AP50"]), (ar50, r["eval"]["AR50"])):  # fmt: skip
            assert printed_matches(text, value), f"README row {line!r}: {text} vs {value} in {name}"


def test_readme_overfit_figure_matches_the_run():
    r = results("overfit_coco.json")
    text = " ".join((REPO / "README.md").read_text().split())
    assert f"`tiny` trained for {r['steps']} steps" in text
    assert f"reaches **AP {r['metrics']['AP']:.3f}**" in text


def test_readme_decoder_ranking_matches_the_run():
    """ "regression decoding is the best of the three in every flip / multi-scale setting"."""
    rows = {(x["decoder"], x["flip"], x["multi_scale"]): x["AP"] for x in results("decoders.json")["rows"]}
    for flip in (False, True):
        for multi in (False, True):
            others = [rows[(d, flip, multi)] for d in ("ae", "hybrid")]
            assert rows[("regression", flip, multi)] >= max(others), (flip, multi)

