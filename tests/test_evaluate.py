"""Tests of grmpose.evaluate against reference values and an independent evaluator (pycocotools)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from grmpose.evaluate import (
    COCO_METRICS,
    CROWD_METRICS,
    EvalError,
    ResultsWriter,
    check_ground_truth,
    coverage,
    eval_results_main,
    evaluate_keypoints,
    format_metrics,
    poses_to_results,
    validate_results,
)
from grmpose.spec import COCO, CROWDPOSE, KeypointSpec

REF = Path(__file__).parent / "data" / "eval_reference"
EXPECTED = json.loads((REF / "expected_stats.json").read_text())
# expected_stats.json names -> our metric names
RENAME = {"AP_M": "APm", "AP_L": "APl", "AR_M": "ARm", "AR_L": "ARl"}


def load(rel: str):
    return json.loads((REF / rel).read_text())


def gt_as_results(gt: dict) -> list[dict]:
    """Every scored GT person (not crowd, num_keypoints > 0) as a prediction with score 1."""
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "keypoints": a["keypoints"],
            "score": 1.0,
        }
        for a in gt["annotations"]
        if not a.get("iscrowd", 0) and a["num_keypoints"] > 0
    ]


def perturbed(results: list[dict], seed: int, pixels: float) -> list[dict]:
    """Copies of ``results`` with Gaussian noise on x, y and on the score."""
    rng = np.random.default_rng(seed)
    out = []
    for r in results:
        kps = np.asarray(r["keypoints"], dtype=np.float64).reshape(-1, 3)
        kps[:, :2] += rng.normal(0.0, pixels, size=(kps.shape[0], 2))
        score = float(np.clip(r["score"] + rng.normal(0.0, 0.1), 0.0, 1.0))
        out.append({**r, "keypoints": kps.ravel().tolist(), "score": score})
    return out


def pycocotools_stats(gt: dict, results: list[dict], sigmas: tuple[float, ...]) -> dict[str, float]:
    """The independent evaluator: pycocotools, named with our metric names."""
    from pycocotools.coco import COCO as PyCOCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = PyCOCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco_gt, coco_dt, "keypoints")
        ev.params.kpt_oks_sigmas = np.asarray(sigmas)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return dict(zip(COCO_METRICS.values(), (float(s) for s in ev.stats)))


# ------------------------------------------------------------------------------ reference values


@pytest.mark.parametrize("name", ["coco_example", "coco_iscrowd_example"])
def test_coco_reference_pairs(name: str) -> None:
    ref = EXPECTED[name]
    assert tuple(ref["sigmas"]) == COCO.sigmas
    got = evaluate_keypoints(REF / ref["gt"], REF / ref["preds"], COCO)
    want = {RENAME.get(k, k): v for k, v in ref["stats"].items()}
    assert list(got) == list(COCO_METRICS.values())
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


def test_crowdpose_reference_pair() -> None:
    ref = EXPECTED["crowdpose_example"]
    assert tuple(ref["sigmas"]) == CROWDPOSE.sigmas
    got = evaluate_keypoints(REF / ref["gt"], REF / ref["preds"], CROWDPOSE)
    assert list(got) == list(CROWD_METRICS.values())
    for key, value in ref["stats"].items():
        if key.startswith("AP_"):  # easy/medium/hard: rounded to 4 decimals by the tools
            assert round(got[key], 4) == value, key
        else:
            assert got[key] == pytest.approx(value, abs=1e-9), key


def test_inputs_are_not_modified_and_dicts_accepted() -> None:
    gt, preds = load("coco_example/gt.json"), load("coco_example/preds.json")
    gt0, preds0 = copy.deepcopy(gt), copy.deepcopy(preds)
    got = evaluate_keypoints(gt, preds, COCO)
    assert gt == gt0 and preds == preds0
    assert got["AP"] == pytest.approx(EXPECTED["coco_example"]["stats"]["AP"], abs=1e-9)


# ------------------------------------------------------------------------------ sanity and parity


@pytest.mark.parametrize(
    "gt_file, spec", [("coco_example/gt.json", COCO), ("crowdpose_example/gt.json", CROWDPOSE)]
)
def test_ground_truth_as_results_is_perfect(gt_file: str, spec: KeypointSpec) -> None:
    gt = load(gt_file)
    got = evaluate_keypoints(gt, gt_as_results(gt), spec)
    assert got["AP"] == 1.0
    assert all(v == 1.0 for v in got.values()), got


@pytest.mark.parametrize("seed, pixels", [(0, 2.0), (1, 6.0), (2, 15.0)])
def test_equals_pycocotools_on_perturbed_predictions(seed: int, pixels: float) -> None:
    gt = load("coco_example/gt.json")
    results = perturbed(load("coco_example/preds.json"), seed, pixels)
    results += perturbed(gt_as_results(gt), seed + 100, pixels)
    ours = evaluate_keypoints(gt, results, COCO)
    theirs = pycocotools_stats(gt, results, COCO.sigmas)
    assert 0.0 < ours["AP"] < 1.0
    for key in ours:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-12), key


def test_custom_sigmas_are_used() -> None:
    """A custom spec (as from YAML) is scored with its own sigmas, like pycocotools with them."""
    gt = load("coco_example/gt.json")
    results = perturbed(load("coco_example/preds.json"), 3, 4.0)
    wide = KeypointSpec.from_dict({**COCO.to_dict(), "name": "wide", "sigmas": [2 * s for s in COCO.sigmas]})
    ours_wide = evaluate_keypoints(gt, results, wide)
    assert ours_wide["AP"] > evaluate_keypoints(gt, results, COCO)["AP"]
    theirs = pycocotools_stats(gt, results, wide.sigmas)
    for key in ours_wide:
        assert ours_wide[key] == pytest.approx(theirs[key], abs=1e-12), key


@pytest.mark.parametrize(
    "gt_file, spec", [("coco_example/gt.json", COCO), ("crowdpose_example/gt.json", CROWDPOSE)]
)
def test_empty_results_score_zero(gt_file: str, spec: KeypointSpec) -> None:
    got = evaluate_keypoints(REF / gt_file, [], spec)
    assert got and all(v == 0.0 for v in got.values()), got


def test_silent_unless_verbose(capsys: pytest.CaptureFixture[str]) -> None:
    evaluate_keypoints(REF / "crowdpose_example/gt.json", REF / "crowdpose_example/preds.json", CROWDPOSE)
    assert capsys.readouterr().out == ""
    evaluate_keypoints(REF / "coco_example/gt.json", REF / "coco_example/preds.json", COCO, verbose=True)
    assert "Average Precision" in capsys.readouterr().out


# ----------------------------------------------------------------------------------- validation


def _bad(index: int, **change) -> list[dict]:
    results = copy.deepcopy(load("coco_example/preds.json"))
    results[index].update(change)
    return results


@pytest.mark.parametrize(
    "results, needle",
    [
        (_bad(3, image_id=999), "result 3: image_id 999"),
        (_bad(5, category_id=7), "result 5: category_id 7"),
        (_bad(2, keypoints=[1.0] * 50), "result 2: 'keypoints' has 50 values"),
        (_bad(4, keypoints=[1.0] * 20 + [math.nan] + [1.0] * 30), "result 4: keypoints[20]"),
        (_bad(6, keypoints=[1.0] * 50 + ["x"]), "result 6: keypoints[50]"),
        (_bad(1, score=math.inf), "result 1: 'score'"),
        (_bad(0, score=None), "result 0: 'score'"),
    ],
)
def test_bad_results_name_file_entry_and_field(tmp_path: Path, results: list[dict], needle: str) -> None:
    path = tmp_path / "res.json"
    path.write_text(json.dumps(results, allow_nan=True))
    with pytest.raises(EvalError, match="res.json") as info:
        evaluate_keypoints(REF / "coco_example/gt.json", path, COCO)
    assert needle in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_field_and_not_an_array() -> None:
    gt = load("coco_example/gt.json")
    index = check_ground_truth(gt, COCO)
    results = load("coco_example/preds.json")
    del results[7]["category_id"]
    with pytest.raises(EvalError, match="result 7: missing 'category_id'"):
        validate_results(results, index, COCO, "r.json")
    with pytest.raises(EvalError, match="JSON array"):
        evaluate_keypoints(gt, {"annotations": []}, COCO)  # type: ignore[arg-type]
    validate_results([], index, COCO)


def test_file_errors(tmp_path: Path) -> None:
    gt = REF / "coco_example/gt.json"
    with pytest.raises(EvalError, match="results file not found"):
        evaluate_keypoints(gt, tmp_path / "nope.json", COCO)
    with pytest.raises(EvalError, match="ground truth file not found"):
        evaluate_keypoints(tmp_path / "nope.json", [], COCO)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"image_id": 1,')
    with pytest.raises(EvalError, match="broken.json: malformed JSON"):
        evaluate_keypoints(gt, broken, COCO)


def test_ground_truth_errors() -> None:
    gt = load("coco_example/gt.json")
    no_kps = copy.deepcopy(gt)
    for a in no_kps["annotations"]:
        del a["keypoints"]
    with pytest.raises(EvalError, match="no keypoint annotations"):
        evaluate_keypoints(no_kps, [], COCO)
    with pytest.raises(EvalError, match="needs 3\\*14"):
        evaluate_keypoints(gt, [], CROWDPOSE)  # COCO GT with a 14-keypoint spec
    crowd_gt = load("crowdpose_example/gt.json")
    as_coco = KeypointSpec.from_dict({**CROWDPOSE.to_dict(), "crowd_eval": False})
    with pytest.raises(EvalError, match="no 'area'"):
        evaluate_keypoints(crowd_gt, [], as_coco)
    del crowd_gt["images"][1]["crowdIndex"]
    with pytest.raises(EvalError, match=r"images\[1\].*crowdIndex"):
        evaluate_keypoints(crowd_gt, [], CROWDPOSE)
    with pytest.raises(EvalError, match="'images'"):
        evaluate_keypoints({"annotations": []}, [], COCO)


def test_coverage_reports_images_without_predictions() -> None:
    gt = load("coco_example/gt.json")
    ids = sorted(img["id"] for img in gt["images"])
    results = [r for r in load("coco_example/preds.json") if r["image_id"] != ids[0]]
    cov = coverage(gt, (r["image_id"] for r in results))
    assert (cov.num_images, cov.num_evaluated, cov.missing, cov.missing_with_people) == (4, 3, (ids[0],), 1)
    assert cov.summary().startswith("3 of 4 images evaluated")
    assert coverage(check_ground_truth(gt, COCO), [r["image_id"] for r in results]) == cov
    assert coverage(gt, []).num_evaluated == 0


# ------------------------------------------------------------------------------------ CLI helper


def test_eval_results_main(tmp_path: Path) -> None:
    ref = EXPECTED["crowdpose_example"]
    report = eval_results_main(REF / ref["gt"], REF / ref["preds"], "crowdpose", as_json=False)
    assert report["metrics"]["AP"] == pytest.approx(ref["stats"]["AP"], abs=1e-9)
    assert (
        report["images"] == 4
        and report["images_evaluated"] == report["images"] - report["images_without_predictions"]
    )
    assert "images evaluated" in report["text"] and "AP_hard" in report["text"]
    as_json = eval_results_main(REF / "coco_example/gt.json", REF / "coco_example/preds.json", "coco", True)
    parsed = json.loads(as_json["text"])
    assert parsed["metrics"] == as_json["metrics"] and parsed["spec"] == "coco"
    yaml_spec = tmp_path / "mine.yaml"
    yaml_spec.write_text(json.dumps({**COCO.to_dict(), "name": "mine"}))  # JSON is valid YAML
    assert eval_results_main(REF / "coco_example/gt.json", [], str(yaml_spec))["spec"] == "mine"  # type: ignore[arg-type]


def test_format_metrics() -> None:
    text = format_metrics({"AP": 0.86089, "AP_easy": -1.0})
    lines = text.splitlines()
    assert lines[0].split() == ["metric", "value"]
    assert lines[2].split() == ["AP", "0.8609"] and lines[3].split() == ["AP_easy", "n/a"]


# --------------------------------------------------------------------------------------- writing


def test_poses_to_results_shapes_and_rounding() -> None:
    poses = np.array([[[10.123456, 20.987654, 0.123456], [1.0, 2.0, 0.5]]])
    out = poses_to_results(7, poses, np.array([0.987654]))
    assert out == [
        {"image_id": 7, "category_id": 1, "keypoints": [10.12, 20.99, 0.1235, 1.0, 2.0, 0.5], "score": 0.9877}
    ]
    assert poses_to_results(7, np.zeros((0, 17, 3)), np.zeros(0)) == []
    with pytest.raises(ValueError, match="N x K x 3"):
        poses_to_results(7, np.zeros((2, 17, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="NaN"):
        poses_to_results(7, np.full((1, 17, 3), np.nan), np.ones(1))


def _gt_poses(gt: dict) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    by_image: dict[int, list] = {img["id"]: [] for img in gt["images"]}
    for r in gt_as_results(gt):
        by_image[r["image_id"]].append(r["keypoints"])
    return {
        i: (np.asarray(k, dtype=np.float64).reshape(len(k), -1, 3), np.ones(len(k)))
        for i, k in by_image.items()
    }


def test_results_writer_round_trip_scores_perfectly(tmp_path: Path) -> None:
    gt = load("crowdpose_example/gt.json")
    path = tmp_path / "out" / "results.json"
    with ResultsWriter(path) as writer:
        for image_id, (poses, scores) in _gt_poses(gt).items():
            writer.write(image_id, poses, scores)
    written = json.loads(path.read_text())
    assert len(written) == writer.num_results == len(gt_as_results(gt))
    assert writer.num_images == len(gt["images"])
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]
    assert evaluate_keypoints(gt, path, CROWDPOSE)["AP"] == 1.0


def test_results_writer_empty_and_error(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    with ResultsWriter(path) as writer:
        writer.write(1, np.zeros((0, 17, 3)), [])
    assert json.loads(path.read_text()) == []
    assert evaluate_keypoints(REF / "coco_example/gt.json", path, COCO)["AP"] == 0.0

    failing = tmp_path / "failing.json"
    with pytest.raises(RuntimeError, match="boom"):
        with ResultsWriter(failing) as writer:
            writer.write(1, np.ones((2, 17, 3)), [0.5, 0.4])
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no half-written file
    with pytest.raises(RuntimeError, match="outside"):
        writer.write(1, np.ones((1, 17, 3)), [0.5])
