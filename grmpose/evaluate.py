"""OKS keypoint evaluation (COCO and CrowdPose protocols) on top of faster-coco-eval.

The metric itself is computed by the library, never re-implemented here: ``COCOeval_faster`` with
``iouType="keypoints"`` reproduces pycocotools exactly, and ``iouType="keypoints_crowd"`` with
``use_area=False`` reproduces xtcocotools and the official CrowdPose tools (OKS scale
``0.53 * bbox_w * bbox_h`` because CrowdPose GT has no ``area``; easy/medium/hard from the image
``crowdIndex`` with the thresholds coded in those tools, easy < 0.2 <= medium < 0.8 <= hard, rounded to
4 decimals; the paper's text says 0.1). The per-keypoint OKS constants always come from the
``KeypointSpec``, so a custom spec loaded from YAML is scored with its own sigmas.

What this module adds: clear errors before scoring (missing file, malformed JSON, GT without
keypoints, results that do not fit the GT), a coverage report (GT images without any prediction),
and a streaming writer for COCO-format results files.

A metric of -1 means "undefined": no ground truth in that bucket (for example no easy image).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

from grmpose.spec import KeypointSpec, get_spec

logger = logging.getLogger(__name__)

# Library stat label -> our metric name, in report order.
COCO_METRICS: dict[str, str] = {
    "AP_all": "AP", "AP_50": "AP50", "AP_75": "AP75", "AP_medium": "APm", "AP_large": "APl",
    "AR_all": "AR", "AR_50": "AR50", "AR_75": "AR75", "AR_medium": "ARm", "AR_large": "ARl",
}  # fmt: skip
CROWD_METRICS: dict[str, str] = {
    "AP_all": "AP", "AP_50": "AP50", "AP_75": "AP75", "AR_all": "AR", "AR_50": "AR50", "AR_75": "AR75",
    "AP_easy": "AP_easy", "AP_medium": "AP_medium", "AP_hard": "AP_hard",
}  # fmt: skip


class EvalError(ValueError):
    """Ground truth or results that cannot be scored; the message names the file and the entry."""


@dataclass(frozen=True)
class GtIndex:
    """What result validation and coverage need to know about a ground-truth file.

    Attributes:
        source: file name (or ``"<gt dict>"``) used in error messages.
        image_ids: ids of all GT images.
        category_ids: ids of all GT categories.
        num_keypoints: K, the keypoints per annotation (3K numbers).
        people_image_ids: images with at least one scored person (not crowd, num_keypoints > 0).
    """

    source: str
    image_ids: frozenset[int]
    category_ids: frozenset[int]
    num_keypoints: int
    people_image_ids: frozenset[int]


@dataclass(frozen=True)
class Coverage:
    """Which GT images received at least one prediction.

    Images without predictions are legitimate (nothing detected); they still count in the metric.
    """

    num_images: int
    num_evaluated: int
    missing: tuple[int, ...]
    missing_with_people: int

    def summary(self) -> str:
        text = f"{self.num_evaluated} of {self.num_images} images evaluated"
        if self.missing:
            text += (
                f" ({len(self.missing)} without predictions, "
                f"{self.missing_with_people} of them with labelled people)"
            )
        return text


# ----------------------------------------------------------------------------------------- loading


def _load_json(path: str | Path, what: str) -> object:
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"{what} file not found: {path}")
    try:
        with path.open("rb") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EvalError(f"{path}: malformed JSON ({what}): {err}") from err


def load_ground_truth(gt: str | Path | dict) -> tuple[dict, str]:
    """Return ``(gt_dict, source)``; a dict argument is deep-copied (the library mutates GT)."""
    if isinstance(gt, dict):
        return copy.deepcopy(gt), "<gt dict>"
    data = _load_json(gt, "ground truth")
    if not isinstance(data, dict):
        raise EvalError(f"{gt}: ground truth must be a COCO JSON object, got {type(data).__name__}")
    return data, str(gt)


def load_results(results: str | Path | Sequence[dict]) -> tuple[list, str]:
    """Return ``(results_list, source)``; a list argument is returned as a new list."""
    if isinstance(results, (str, Path)):
        data = _load_json(results, "results")
        source = str(results)
    else:
        data, source = results, "<results>"
    if not isinstance(data, (list, tuple)):
        raise EvalError(f"{source}: results must be a JSON array of detections, got {type(data).__name__}")
    return list(data), source


# -------------------------------------------------------------------------------------- validation


_JSON_NUMBER_TYPES = {int, float}


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def check_ground_truth(gt: dict, spec: KeypointSpec, source: str = "<gt dict>") -> GtIndex:
    """Check that ``gt`` is a keypoint GT the evaluator can score with ``spec``; return its index.

    Raises:
        EvalError: missing sections, no keypoint annotations, wrong keypoint count, fields the
            evaluator needs (``bbox``, ``num_keypoints``, ``area`` for COCO, ``crowdIndex`` for crowd).
    """
    for key in ("images", "annotations", "categories"):
        if not isinstance(gt.get(key), list):
            raise EvalError(f"{source}: ground truth has no {key!r} list (not a COCO annotation file?)")
    image_ids: set[int] = set()
    for i, img in enumerate(gt["images"]):
        if not isinstance(img, dict) or not _is_number(img.get("id")):
            raise EvalError(f"{source}: images[{i}] has no numeric 'id'")
        image_ids.add(img["id"])
    category_ids = {c["id"] for c in gt["categories"] if isinstance(c, dict) and "id" in c}
    anns = gt["annotations"]
    if not any(isinstance(a, dict) and "keypoints" in a for a in anns):
        raise EvalError(f"{source}: ground truth has no keypoint annotations (a detection/instances file?)")
    k = spec.num_keypoints
    people: set[int] = set()
    for i, ann in enumerate(anns):
        if not isinstance(ann, dict):
            raise EvalError(f"{source}: annotations[{i}] is not an object")
        where = f"{source}: annotations[{i}] (id {ann.get('id')})"
        kps = ann.get("keypoints")
        if not isinstance(kps, list) or len(kps) != 3 * k:
            n = len(kps) if isinstance(kps, list) else "no"
            raise EvalError(f"{where}: {n} keypoint values, spec {spec.name!r} needs 3*{k} = {3 * k}")
        if not ({type(v) for v in kps} <= _JSON_NUMBER_TYPES and math.isfinite(sum(kps))):
            for j, v in enumerate(kps):
                if not _is_number(v) or not math.isfinite(v):
                    raise EvalError(f"{where}: keypoints[{j}] = {v!r} is not a finite number")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise EvalError(f"{where}: needs a 'bbox' [x, y, w, h]")
        if not _is_number(ann.get("num_keypoints")):
            raise EvalError(f"{where}: needs 'num_keypoints' (persons without it would be ignored)")
        if not spec.crowd_eval and not _is_number(ann.get("area")):
            raise EvalError(
                f"{where}: has no 'area', which COCO evaluation needs for the OKS scale "
                "(CrowdPose-style GT needs a spec with crowd_eval, e.g. --spec crowdpose)"
            )
        if ann.get("image_id") not in image_ids:
            raise EvalError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
        if not ann.get("iscrowd", 0) and ann["num_keypoints"] > 0:
            people.add(ann["image_id"])
    for i, img in enumerate(gt["images"]):
        if spec.crowd_eval and not _is_number(img.get("crowdIndex")):
            raise EvalError(
                f"{source}: images[{i}] (id {img['id']}) has no 'crowdIndex'; spec {spec.name!r} evaluates "
                "the CrowdPose way (crowd_eval), which needs it on every image"
            )
    return GtIndex(source, frozenset(image_ids), frozenset(category_ids), k, frozenset(people))


def validate_results(
    results: Sequence[dict], gt_index: GtIndex, spec: KeypointSpec, source: str = "<results>"
) -> None:
    """Check every result entry before scoring; an empty list is valid.

    Each entry needs an ``image_id`` present in the GT, a ``category_id`` of a GT category,
    ``keypoints`` with 3K finite numbers and a finite ``score``.

    Raises:
        EvalError: naming ``source``, the index of the first bad entry and the field.
    """
    k3 = 3 * spec.num_keypoints
    if gt_index.num_keypoints != spec.num_keypoints:
        raise EvalError(
            f"{gt_index.source}: GT has {gt_index.num_keypoints} keypoints, spec {spec.name!r} has "
            f"{spec.num_keypoints}"
        )
    for i, r in enumerate(results):
        where = f"{source}: result {i}"
        if not isinstance(r, dict):
            raise EvalError(f"{where}: not an object")
        if "image_id" not in r:
            raise EvalError(f"{where}: missing 'image_id'")
        if r["image_id"] not in gt_index.image_ids or isinstance(r["image_id"], bool):
            raise EvalError(f"{where}: image_id {r['image_id']!r} is not in the ground truth")
        if "category_id" not in r:
            raise EvalError(f"{where}: missing 'category_id'")
        if r["category_id"] not in gt_index.category_ids:
            raise EvalError(f"{where}: category_id {r['category_id']!r} is not a GT category")
        kps = r.get("keypoints")
        if not isinstance(kps, (list, tuple)) or len(kps) != k3:
            n = len(kps) if isinstance(kps, (list, tuple)) else "no"
            raise EvalError(f"{where}: 'keypoints' has {n} values, expected 3*{spec.num_keypoints} = {k3}")
        # Fast path: plain JSON numbers whose sum is finite; otherwise find the culprit.
        if not ({type(v) for v in kps} <= _JSON_NUMBER_TYPES and math.isfinite(sum(kps))):
            for j, v in enumerate(kps):
                if not _is_number(v) or not math.isfinite(v):
                    raise EvalError(f"{where}: keypoints[{j}] = {v!r} is not a finite number")
        score = r.get("score")
        if not _is_number(score) or not math.isfinite(score):
            raise EvalError(f"{where}: 'score' = {score!r} is not a finite number")


def coverage(gt: dict | GtIndex, results_image_ids: Iterable[int]) -> Coverage:
    """Report which GT images have no prediction entry at all.

    Args:
        gt: a GT dict or its ``GtIndex``.
        results_image_ids: the ``image_id`` of every result (repeats are fine).
    """
    if isinstance(gt, GtIndex):
        all_ids, people = gt.image_ids, gt.people_image_ids
    else:
        all_ids = frozenset(img["id"] for img in gt.get("images", []))
        people = frozenset(
            a["image_id"]
            for a in gt.get("annotations", [])
            if not a.get("iscrowd", 0) and a.get("num_keypoints", 0) > 0
        )
    seen = all_ids & set(results_image_ids)
    missing = tuple(sorted(all_ids - seen))
    return Coverage(len(all_ids), len(seen), missing, sum(1 for i in missing if i in people))


# ---------------------------------------------------------------------------------------- scoring


def _silent(*args: object, **kwargs: object) -> None:
    return None


def _score(gt: dict, results: list[dict], spec: KeypointSpec, verbose: bool) -> dict[str, float]:
    """Run faster-coco-eval on checked data that this module owns (the library mutates both)."""
    printer = print if verbose else _silent
    iou_type = "keypoints_crowd" if spec.crowd_eval else "keypoints"
    names = CROWD_METRICS if spec.crowd_eval else COCO_METRICS
    coco_gt = COCO(gt, print_function=printer)
    coco_dt = coco_gt.loadRes(results)
    evaluator = COCOeval_faster(
        coco_gt,
        coco_dt,
        iouType=iou_type,
        kpt_oks_sigmas=list(spec.sigmas),
        use_area=not spec.crowd_eval,
        print_function=printer,
    )
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    stats = evaluator.stats_as_dict
    return {ours: float(stats[theirs]) for theirs, ours in names.items()}


def evaluate_keypoints(
    gt: str | Path | dict, results: str | Path | Sequence[dict], spec: KeypointSpec, verbose: bool = False
) -> dict[str, float]:
    """OKS AP/AR of keypoint ``results`` against ``gt``, the official way for ``spec``.

    Args:
        gt: COCO-format GT file or dict (not modified).
        results: COCO-format results file (JSON array) or list of result dicts (not modified).
        spec: keypoint spec; its sigmas are always used, ``spec.crowd_eval`` picks CrowdPose mode.
        verbose: let the library print its usual summary to stdout.

    Returns:
        COCO mode: AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl.
        CrowdPose mode: AP, AP50, AP75, AR, AR50, AR75, AP_easy, AP_medium, AP_hard.
        Empty results give 0 wherever ground truth exists.

    Raises:
        EvalError: unreadable files or inputs that do not fit each other (see ``validate_results``).
    """
    gt_dict, gt_source = load_ground_truth(gt)
    index = check_ground_truth(gt_dict, spec, gt_source)
    res_list, res_source = load_results(results)
    validate_results(res_list, index, spec, res_source)
    return _score(gt_dict, [dict(r) for r in res_list], spec, verbose)


def format_metrics(metrics: dict[str, float]) -> str:
    """A two-column text table of ``metrics`` (-1 is shown as ``n/a``: no GT in that bucket)."""
    width = max([len("metric"), *(len(name) for name in metrics)])
    lines = [f"{'metric':<{width}}   value", f"{'-' * width}  ------"]
    for name, value in metrics.items():
        shown = "   n/a" if value < 0 else f"{value:6.4f}"
        lines.append(f"{name:<{width}}  {shown}")
    return "\n".join(lines)


def eval_results_main(
    gt: str | Path,
    results: str | Path,
    spec_name_or_yaml: str | Path | KeypointSpec = "coco",
    as_json: bool = False,
    verbose: bool = False,
) -> dict:
    """Everything ``grmpose eval --gt GT.json --results RESULTS.json [--spec S] [--json]`` does.

    Returns:
        A report dict: ``gt``, ``results``, ``spec``, ``metrics``, ``images``, ``images_evaluated``,
        ``images_without_predictions``, ``images_without_predictions_with_people`` and ``text``,
        the string for the CLI to print (the report as JSON when ``as_json``, else a table and a
        coverage line "N of M images evaluated").
    """
    spec = get_spec(spec_name_or_yaml)
    gt_dict, gt_source = load_ground_truth(gt)
    index = check_ground_truth(gt_dict, spec, gt_source)
    res_list, res_source = load_results(results)
    validate_results(res_list, index, spec, res_source)
    cov = coverage(index, (r["image_id"] for r in res_list))
    logger.info("%s", cov.summary())
    metrics = _score(gt_dict, [dict(r) for r in res_list], spec, verbose)
    report: dict = {
        "gt": gt_source,
        "results": res_source,
        "spec": spec.name,
        "metrics": metrics,
        "images": cov.num_images,
        "images_evaluated": cov.num_evaluated,
        "images_without_predictions": len(cov.missing),
        "images_without_predictions_with_people": cov.missing_with_people,
    }
    if as_json:
        report["text"] = json.dumps(report, indent=2)
    else:
        header = f"{spec.name} keypoint evaluation: {res_source} vs {gt_source}"
        report["text"] = f"{header}\n{format_metrics(metrics)}\n{cov.summary()}"
    return report


# ----------------------------------------------------------------------------------------- writing


def poses_to_results(
    image_id: int,
    poses: np.ndarray,
    scores: np.ndarray,
    category_id: int = 1,
    decimals: int = 2,
    score_decimals: int = 4,
) -> list[dict]:
    """COCO-format result dicts for the N poses of one image.

    Args:
        image_id: the GT image id.
        poses: N x K x 3 array of (x, y, keypoint score) in image pixels.
        scores: N person scores.
        category_id: the person category id of the GT.
        decimals: digits kept for x and y; ``score_decimals`` for keypoint and person scores.

    No ``bbox`` is written on purpose: the COCO tools would then take the box area as the
    detection area instead of the keypoint extent.

    Raises:
        ValueError: wrong shapes or non-finite values.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    poses = np.asarray(poses, dtype=np.float64)
    if scores.size == 0 and poses.size == 0:
        return []
    if poses.ndim != 3 or poses.shape[2] != 3 or poses.shape[0] != scores.shape[0]:
        raise ValueError(f"poses must be N x K x 3 with N = {scores.shape[0]} scores, got {poses.shape}")
    if not (np.isfinite(poses).all() and np.isfinite(scores).all()):
        raise ValueError(f"image {image_id}: poses or scores contain NaN or inf")
    # Vectorised rounding: rint(v * 10^d) / 10^d is the double nearest to the decimal, so it
    # prints as short as Python's round() would.
    rounded = np.empty_like(poses)
    rounded[..., :2] = np.round(poses[..., :2], decimals)
    rounded[..., 2] = np.round(poses[..., 2], score_decimals)
    flat_poses = rounded.reshape(len(rounded), -1).tolist()
    out = [
        {"image_id": int(image_id), "category_id": int(category_id), "keypoints": flat, "score": score}
        for flat, score in zip(flat_poses, np.round(scores, score_decimals).tolist())
    ]
    return out


class ResultsWriter:
    """Write a COCO-format results JSON array one image at a time; memory stays flat.

    The array goes to a temporary file next to ``path`` that is renamed onto ``path`` only when
    the ``with`` block ends without an exception; on an exception it is deleted, so ``path``
    never holds a half-written file. Use::

        with ResultsWriter("results.json") as writer:
            for image_id, poses, scores in predictions:  # poses N x K x 3, scores N
                writer.write(image_id, poses, scores)
    """

    def __init__(
        self, path: str | Path, category_id: int = 1, decimals: int = 2, score_decimals: int = 4
    ) -> None:
        self.path = Path(path)
        self.category_id = category_id
        self.decimals = decimals
        self.score_decimals = score_decimals
        self.num_results = 0
        self.num_images = 0
        self._fh = None
        self._tmp: Path | None = None

    def __enter__(self) -> ResultsWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A unique name in the same directory, so the final rename is atomic (same file system).
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        self._fh = self._tmp.open("x", encoding="utf-8")
        self._fh.write("[")
        return self

    def write(self, image_id: int, poses: np.ndarray | Sequence, scores: np.ndarray | Sequence) -> int:
        """Append the poses of one image (N x K x 3, N scores); return how many were written."""
        if self._fh is None:
            raise RuntimeError("ResultsWriter.write outside its 'with' block")
        entries = poses_to_results(
            image_id, poses, scores, self.category_id, self.decimals, self.score_decimals
        )
        for entry in entries:
            self._fh.write(",\n" if self.num_results else "\n")
            self._fh.write(json.dumps(entry, separators=(",", ":")))
            self.num_results += 1
        self.num_images += 1
        return len(entries)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        fh, tmp = self._fh, self._tmp
        self._fh, self._tmp = None, None
        if fh is None or tmp is None:
            return
        try:
            if exc_type is None:
                fh.write("\n]\n")
                fh.flush()
                os.fsync(fh.fileno())
            fh.close()
            if exc_type is None:
                os.replace(tmp, self.path)
                logger.info("wrote %d results, %d images: %s", self.num_results, self.num_images, self.path)
        finally:
            if tmp.exists():
                tmp.unlink()
