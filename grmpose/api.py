"""The Python API: ``PoseEstimator`` turns images (paths, arrays, video frames) into ``Pose`` lists.

    from grmpose.api import PoseEstimator
    estimator = PoseEstimator.from_checkpoint("grmpose-w32.safetensors", flip=True)
    for pose in estimator("people.jpg"):
        print(pose.score, pose.box, pose.keypoints.shape)  # K×3 (x, y, score) in image pixels

Two backends run the same network: ``torch`` (the model on ``device``) and ``onnxruntime`` (an
``InferenceSession`` of the exported model). Either one is a ``forward(batch B×3×H×W) ->
(heatmaps, offsets, tags)`` callable; test-time augmentation (flip, scales) and decoding are
shared (``grmpose.tta.predict_poses``), so both give the same poses. For ONNX Runtime a checkpoint
is exported once into a cache folder, with a ``<name>.json`` sidecar holding the model config and
keypoint spec, which ``from_onnx`` reads back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from grmpose.checkpoint import CheckpointError, load_model
from grmpose.config import ModelConfig, get_preset
from grmpose.data.coco import load_image
from grmpose.fileio import atomic_path
from grmpose.runtime import keep_freed_memory_for_inference
from grmpose.spec import KeypointSpec, get_spec
from grmpose.track import PoseTracker, TrackConfig
from grmpose.tta import predict_batch, predict_poses, run_forward

log = logging.getLogger(__name__)

__all__ = [
    "Forward",
    "Pose",
    "PoseEstimator",
    "TrackedPose",
    "default_cache_dir",
    "predict_poses",
    "video_frames",
]

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
Source = str | Path | np.ndarray

ONNX_OPSET = 18
SIDECAR_FORMAT = "grmpose-onnx"


# ------------------------------------------------------------------------------------------ poses
@dataclass(frozen=True, eq=False)
class Pose:
    """One person (compared by identity: it holds an array).

    Attributes:
        keypoints: K×3 float array (x, y, score) in image pixels.
        score: person score (mean keypoint score).
        box: (x0, y0, x1, y1), the extent of the keypoints (computed).
    """

    keypoints: np.ndarray
    score: float
    box: tuple[float, float, float, float] = field(init=False)

    def __post_init__(self) -> None:
        kps = np.asarray(self.keypoints, dtype=np.float64)
        if kps.ndim != 2 or kps.shape[1] != 3:
            raise ValueError(f"keypoints must be K×3 (x, y, score), got {kps.shape}")
        object.__setattr__(self, "keypoints", kps)
        object.__setattr__(self, "score", float(self.score))
        lo, hi = kps[:, :2].min(0), kps[:, :2].max(0)
        object.__setattr__(self, "box", (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])))

    def to_coco(self, image_id: int, category_id: int = 1) -> dict:
        """A COCO keypoint-results entry (no ``bbox``, as ``grmpose.evaluate.poses_to_results``)."""
        from grmpose.evaluate import poses_to_results

        return poses_to_results(image_id, self.keypoints[None], np.array([self.score]), category_id)[0]


@dataclass(frozen=True, eq=False)
class TrackedPose(Pose):
    """A ``Pose`` with its identity across video frames (``PoseEstimator.track``)."""

    track_id: int = -1


def poses_from_arrays(poses: np.ndarray, scores: np.ndarray) -> list[Pose]:
    """``Pose`` objects from ``(N×K×3, N)`` arrays."""
    return [Pose(p, s) for p, s in zip(np.asarray(poses), np.asarray(scores).tolist())]


# ------------------------------------------------------------------------------------------ backends
def _torch_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested, but this PyTorch build sees no CUDA device")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {str(device)!r} requested, but MPS is not available")
    return dev


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str, device: torch.device) -> torch.dtype:
    """The weights' dtype for ``name`` (``float32``, ``bfloat16``; ``float16`` on CUDA only)."""
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    if name == "float16" and device.type != "cuda":
        raise ValueError("dtype float16 runs on CUDA only; use bfloat16 on the CPU")
    return DTYPES[name]


class TorchForward:
    """``forward`` of a PyTorch model on ``device``: inputs are moved there, outputs stay there.

    With ``dtype`` ``bfloat16`` (or ``float16`` on CUDA) the weights and the input batch are cast to
    it and the outputs are cast back to float32, so decoding always reads float32 maps.
    """

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu", dtype: str = "float32") -> None:
        self.device = _torch_device(device)
        self.dtype = torch_dtype(dtype, self.device)
        self.model = model.to(self.device, self.dtype).eval()

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        heat, off, tags = self.model(batch.to(self.device, self.dtype, non_blocking=True))
        if self.dtype != torch.float32:
            heat, off, tags = heat.float(), off.float(), tags.float()
        return heat, off, tags


class OnnxForward:
    """``forward`` of an ONNX model in ONNX Runtime (CPU, or CUDA when asked for and available)."""

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise ImportError(
                "the onnxruntime backend needs the onnxruntime package (pip install 'grmpose[onnx]')"
            ) from err
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        dev = str(device)
        available = ort.get_available_providers()
        if dev.startswith("cuda"):
            if "CUDAExecutionProvider" not in available:
                raise ValueError(
                    f"device {dev!r} requested, but onnxruntime offers only {', '.join(available)}"
                )
            index = int(dev.split(":")[1]) if ":" in dev else 0
            providers: list = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        elif dev == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise ValueError(f"the onnxruntime backend runs on cpu or cuda, not {dev!r}")
        options = ort.SessionOptions()
        # No busy-waiting worker threads between runs: decoding runs in PyTorch in the same process
        # and would otherwise compete with spinning ONNX Runtime threads for the cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            raise CheckpointError(f"{self.path}: cannot load ONNX model ({err})") from err
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        # A model exported with a static batch (an int, not a symbol) runs one image at a time.
        batch_dim = model_input.shape[0] if model_input.shape else None
        self.static_batch = batch_dim if isinstance(batch_dim, int) else None
        if self.static_batch is not None:
            log.info("%s has a static batch size of %d; larger batches run in pieces", self.path, batch_dim)
        self.device = torch.device("cpu")
        log.info("onnxruntime session for %s on %s", self.path, self.session.get_providers()[0])

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        step = self.static_batch or len(x)
        if step < 1 or len(x) % step:
            raise ValueError(f"{self.path}: static batch {step} does not divide a batch of {len(x)}")
        parts = [
            self.session.run(None, {self.input_name: x[i : i + step]})[:3] for i in range(0, len(x), step)
        ]
        heat, off, tags = (np.concatenate([p[j] for p in parts]) for j in range(3))
        return torch.from_numpy(heat), torch.from_numpy(off), torch.from_numpy(tags)


def default_cache_dir() -> Path:
    """Where exported ONNX models are cached: ``$GRMPOSE_CACHE`` (+ ``/onnx``), else ``~/.cache/grmpose/onnx``."""
    if os.environ.get("GRMPOSE_CACHE"):
        return Path(os.environ["GRMPOSE_CACHE"]) / "onnx"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "grmpose" / "onnx"


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sidecar_path(onnx_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.json``."""
    return Path(onnx_path).with_suffix(".json")


def write_sidecar(onnx_path: str | Path, config: ModelConfig, spec: KeypointSpec, **extra: object) -> Path:
    """Store the model config and keypoint spec next to an ONNX file (atomically)."""
    path = sidecar_path(onnx_path)
    payload = {"format": SIDECAR_FORMAT, "config": config.to_dict(), "spec": spec.to_dict(), **extra}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2))
    return path


def read_sidecar(onnx_path: str | Path) -> tuple[ModelConfig, KeypointSpec] | None:
    """``(config, spec)`` from the sidecar of an ONNX file, or ``None`` when there is none."""
    path = sidecar_path(onnx_path)
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text())
        if payload.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"format is {payload.get('format')!r}, not {SIDECAR_FORMAT!r}")
        return ModelConfig.from_dict(payload["config"]), KeypointSpec.from_dict(payload["spec"], str(path))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path}: unreadable ONNX sidecar ({err})") from err


def export_cached(
    model: nn.Module, config: ModelConfig, spec: KeypointSpec, onnx_path: Path, **extra: object
) -> Path:
    """Export ``model`` to ``onnx_path`` with its sidecar unless both are already there."""
    if onnx_path.is_file() and sidecar_path(onnx_path).is_file():
        log.info("using cached ONNX model %s", onnx_path)
        return onnx_path
    from grmpose.export import export_onnx

    log.info("exporting ONNX model to %s (once; later runs reuse it)", onnx_path)
    export_onnx(model.cpu().eval(), onnx_path, input_size=config.input_size, opset=ONNX_OPSET)
    write_sidecar(onnx_path, config, spec, opset=ONNX_OPSET, **extra)
    return onnx_path


# ------------------------------------------------------------------------------------------ inputs
def _as_rgb(source: Source, color: str) -> np.ndarray:
    """An RGB uint8 H×W×3 array from a path (EXIF orientation applied) or an array."""
    if isinstance(source, (str, Path)):
        return load_image(source, exif_transpose=True)
    if not isinstance(source, np.ndarray):
        raise TypeError(f"expected an image path or a uint8 array, got {type(source).__name__}")
    if source.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, got {source.dtype}")
    if source.ndim == 2:
        source = np.repeat(source[..., None], 3, 2)
    if source.ndim != 3 or source.shape[2] not in (3, 4):
        raise ValueError(f"image arrays must be H×W×3 (or H×W×4, H×W), got shape {source.shape}")
    if source.shape[0] == 0 or source.shape[1] == 0:
        raise ValueError(f"image array is empty: shape {source.shape}")
    source = source[..., :3]
    if color == "bgr":
        source = source[..., ::-1]
    elif color != "rgb":
        raise ValueError(f"color must be 'rgb' or 'bgr', got {color!r}")
    return np.ascontiguousarray(source)


def video_frames(source: str | Path | int, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """RGB uint8 frames of a video file or camera (an int or a string of digits), via OpenCV.

    Raises:
        FileNotFoundError: a video file that does not exist.
        OSError: a source OpenCV cannot open (named in the message).
    """
    cap = open_video(source)
    try:
        count = 0
        while max_frames is None or count < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            count += 1
            yield frame[..., ::-1].copy()
    finally:
        cap.release()


def open_video(source: str | Path | int):  # -> cv2.VideoCapture
    """An opened ``cv2.VideoCapture`` for a file or a camera index, or a clear error."""
    try:
        import cv2
    except ImportError as err:
        raise ImportError("video input needs OpenCV (pip install 'grmpose[video]')") from err
    if isinstance(source, str) and source.isdigit():
        source = int(source)
    if isinstance(source, int):
        cap, what = cv2.VideoCapture(source), f"camera {source}"
    else:
        if not Path(source).is_file():
            raise FileNotFoundError(f"video file not found: {source}")
        cap, what = cv2.VideoCapture(str(source)), f"video file {source}"
    if not cap.isOpened():
        cap.release()
        raise OSError(f"cannot open {what} (OpenCV VideoCapture failed)")
    return cap


# ------------------------------------------------------------------------------------------ estimator
class PoseEstimator:
    """Multi-person pose estimation for images and video frames.

    Build one with ``from_checkpoint``, ``from_onnx`` or ``from_preset`` (random weights, for
    smoke tests and timing). Calling it on one image gives that image's ``list[Pose]``; on a list
    of images, a list of such lists.

    Attributes:
        forward: the backend's ``forward(batch) -> (heatmaps, offsets, tags)``; evaluation code
            can pass it to ``predict_poses``.
        spec, input_size, flip, scales, decoder, max_people, backend, device: as given.
        dtype: the torch backend's compute dtype (``float32``, ``bfloat16`` or ``float16``).
    """

    def __init__(
        self,
        forward: Forward,
        spec: KeypointSpec,
        input_size: int,
        *,
        flip: bool = False,
        scales: Sequence[float] = (1.0,),
        decoder: str = "regression",
        max_people: int = 30,
        backend: str = "torch",
        device: str = "cpu",
        config: ModelConfig | None = None,
    ) -> None:
        if input_size <= 0:
            raise ValueError(f"input_size must be positive, got {input_size}")
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"scales must be positive numbers, got {tuple(scales)}")
        self.forward = forward
        self.spec = spec
        self.input_size = int(input_size)
        self.flip = bool(flip)
        self.scales = tuple(float(s) for s in scales)
        self.decoder = decoder
        self.max_people = int(max_people)
        self.backend = backend
        self.device = str(device)
        self.config = config
        self.dtype = "float32"  # of the torch backend's weights; set by the constructors
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        if backend == "torch" and self.device.startswith("cpu"):
            # malloc keeps freed memory for the next forward (grmpose.runtime; GRMPOSE_KEEP_FREED_MEMORY=0: off)
            keep_freed_memory_for_inference()

    def __repr__(self) -> str:
        return (
            f"PoseEstimator(spec={self.spec.name!r}, input_size={self.input_size}, backend={self.backend!r}, "
            f"device={self.device!r}, dtype={self.dtype!r}, flip={self.flip}, scales={self.scales}, decoder={self.decoder!r})"
        )

    # ---------------------------------------------------------------- constructors
    @classmethod
    def _from_model(
        cls,
        model: nn.Module,
        config: ModelConfig,
        spec: KeypointSpec,
        *,
        device: str,
        backend: str,
        onnx_path: Path | None,
        input_size: int | None,
        dtype: str = "float32",
        **options: object,
    ) -> PoseEstimator:
        size = input_size or config.input_size
        if backend == "torch":
            from grmpose.fuse import fuse_model

            forward = TorchForward(fuse_model(model, inplace=True), device, dtype)  # BatchNorm folded
            est = cls(forward, spec, size, backend=backend, device=device, config=config, **options)
            est.dtype = dtype
            return est
        if dtype != "float32":
            raise ValueError(
                f"dtype {dtype!r} runs with backend 'torch'; export with --int8 for ONNX Runtime"
            )
        if backend == "onnxruntime":
            assert onnx_path is not None
            forward = OnnxForward(export_cached(model, config, spec, onnx_path), device)
            return cls(forward, spec, size, backend=backend, device=device, config=config, **options)
        raise ValueError(f"unknown backend {backend!r}: choose 'torch' or 'onnxruntime'")

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str = "cpu",
        backend: str = "torch",
        flip: bool = False,
        scales: Sequence[float] = (1.0,),
        decoder: str = "regression",
        max_people: int = 30,
        input_size: int | None = None,
        cache_dir: str | Path | None = None,
        dtype: str = "float32",
    ) -> PoseEstimator:
        """From a ``.safetensors``/``.pt`` checkpoint (or a ``.onnx`` file with its sidecar).

        With ``backend="onnxruntime"`` the checkpoint is exported once to
        ``cache_dir/<stem>-<sha256 prefix>.onnx`` (default ``default_cache_dir()``) with a ``.json``
        sidecar; later calls reuse it. ``input_size`` defaults to the checkpoint's config.
        ``dtype``: ``float32``, ``bfloat16`` (torch backend, CPU or CUDA) or ``float16`` (CUDA).
        An int8 model is an ``.onnx`` file from ``grmpose export --int8``.
        """
        path = Path(path)
        options = dict(flip=flip, scales=scales, decoder=decoder, max_people=max_people)
        if path.suffix == ".onnx":
            if backend != "onnxruntime":
                raise ValueError(f"{path}: an ONNX file runs with backend='onnxruntime', not {backend!r}")
            if dtype != "float32":
                raise ValueError(f"{path}: dtype {dtype!r} needs the torch backend and a checkpoint")
            return cls.from_onnx(path, input_size=input_size, device=device, **options)
        if backend not in ("torch", "onnxruntime"):
            raise ValueError(f"unknown backend {backend!r}: choose 'torch' or 'onnxruntime'")
        model, config, spec = load_model(path, device="cpu")
        onnx_path = None
        if backend == "onnxruntime":
            digest = _file_digest(path)[:16]
            onnx_path = Path(cache_dir or default_cache_dir()) / f"{path.stem}-{digest}.onnx"
        return cls._from_model(
            model,
            config,
            spec,
            device=device,
            backend=backend,
            onnx_path=onnx_path,
            input_size=input_size,
            dtype=dtype,
            **options,
        )

    @classmethod
    def from_preset(
        cls,
        name: str,
        spec: str | KeypointSpec = "coco",
        device: str = "cpu",
        backend: str = "torch",
        flip: bool = False,
        scales: Sequence[float] = (1.0,),
        decoder: str = "regression",
        max_people: int = 30,
        input_size: int | None = None,
        seed: int = 0,
        dtype: str = "float32",
    ) -> PoseEstimator:
        """A preset's network with random (seeded) weights: poses are noise; for smoke tests and
        timing. The ONNX backend exports into a temporary folder that lives as long as the
        estimator."""
        from grmpose.model.net import GRMPoseNet

        config = get_preset(name)
        kspec = get_spec(spec)
        if backend not in ("torch", "onnxruntime"):
            raise ValueError(f"unknown backend {backend!r}: choose 'torch' or 'onnxruntime'")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = GRMPoseNet(config, kspec.num_keypoints).eval()
        tmpdir, onnx_path = None, None
        if backend == "onnxruntime":
            tmpdir = tempfile.TemporaryDirectory(prefix="grmpose-onnx-")
            onnx_path = Path(tmpdir.name) / f"{name}.onnx"
        est = cls._from_model(
            model,
            config,
            kspec,
            device=device,
            backend=backend,
            onnx_path=onnx_path,
            input_size=input_size,
            flip=flip,
            scales=scales,
            decoder=decoder,
            max_people=max_people,
            dtype=dtype,
        )
        est._tmpdir = tmpdir
        return est

    @classmethod
    def from_onnx(
        cls,
        path: str | Path,
        spec: str | KeypointSpec | None = None,
        input_size: int | None = None,
        device: str = "cpu",
        flip: bool = False,
        scales: Sequence[float] = (1.0,),
        decoder: str = "regression",
        max_people: int = 30,
    ) -> PoseEstimator:
        """From an exported ONNX model. ``spec`` and ``input_size`` default to the ``<name>.json``
        sidecar written at export; without a sidecar both must be given."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        stored = read_sidecar(path)
        config = stored[0] if stored else None
        if spec is not None:
            kspec = get_spec(spec)
            if stored and stored[1].num_keypoints != kspec.num_keypoints:
                raise CheckpointError(
                    f"{path}: model has {stored[1].num_keypoints} keypoints ({stored[1].name}), "
                    f"spec {kspec.name!r} has {kspec.num_keypoints}"
                )
        elif stored:
            kspec = stored[1]
        else:
            raise ValueError(f"{path}: no sidecar {sidecar_path(path).name}; give the keypoint spec")
        if input_size is None:
            if config is None:
                raise ValueError(f"{path}: no sidecar {sidecar_path(path).name}; give the input size")
            input_size = config.input_size
        forward = OnnxForward(path, device)
        return cls(
            forward,
            kspec,
            input_size,
            flip=flip,
            scales=scales,
            decoder=decoder,
            max_people=max_people,
            backend="onnxruntime",
            device=device,
            config=config,
        )

    # ---------------------------------------------------------------- prediction
    def predict_arrays(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(N×K×3 (x, y, score) in image pixels, N scores)`` of one RGB uint8 image."""
        return predict_poses(
            self.forward,
            image,
            self.spec,
            self.input_size,
            flip=self.flip,
            scales=self.scales,
            decoder=self.decoder,
            max_people=self.max_people,
        )

    def predict_many(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``predict_arrays`` for several RGB uint8 images; images whose prepared inputs have the same
        size share one forward call (``grmpose.tta.predict_batch``)."""
        return predict_batch(
            self.forward,
            images,
            self.spec,
            self.input_size,
            flip=self.flip,
            scales=self.scales,
            decoder=self.decoder,
            max_people=self.max_people,
        )

    def predict_one(self, source: Source, color: str = "rgb") -> list[Pose]:
        """Poses of one image (path or array), best first."""
        return poses_from_arrays(*self.predict_arrays(_as_rgb(source, color)))

    def __call__(
        self, source: Source | Sequence[Source], color: str = "rgb"
    ) -> list[Pose] | list[list[Pose]]:
        """Poses of one image (``list[Pose]``) or of a list of images (``list[list[Pose]]``).

        Args:
            source: image path, RGB (or with ``color="bgr"``, BGR) uint8 array H×W×3, or a
                list/tuple of those. Paths are always read as RGB with EXIF orientation applied.
            color: channel order of array inputs.
        """
        if isinstance(source, (list, tuple)):
            results = self.predict_many([_as_rgb(s, color) for s in source])
            return [poses_from_arrays(poses, scores) for poses, scores in results]
        return self.predict_one(source, color)

    def stream(self, frames: Iterable[np.ndarray], color: str = "rgb") -> Iterator[list[Pose]]:
        """Poses per frame of an iterable of frames (e.g. ``video_frames(path)``), lazily."""
        for frame in frames:
            yield self.predict_one(frame, color)

    def track(
        self, frames: Iterable[np.ndarray], color: str = "rgb", config: TrackConfig | None = None
    ) -> Iterator[list[TrackedPose]]:
        """Poses per frame with identities kept across frames (``grmpose.track.PoseTracker``), lazily.

        Args:
            frames: consecutive video frames (RGB, or BGR with ``color="bgr"``, uint8 H×W×3).
            config: tracker settings (occlusion limit, thresholds, One-Euro smoothing).

        Yields:
            Per frame, the tracked poses (people scored below ``config.min_score`` are left out),
            best first; keypoints One-Euro smoothed when ``config.smoothing`` is set.
        """
        tracker = PoseTracker(self.spec.sigmas, config)
        for frame in frames:
            image = _as_rgb(frame, color)
            poses, scores = self.predict_arrays(image)
            ids = tracker.update(poses, scores, (image.shape[1], image.shape[0]))
            kps = tracker.smoothed(poses, ids)
            yield [TrackedPose(kps[n], scores[n], track_id=int(ids[n])) for n in np.flatnonzero(ids >= 0)]

    def maps(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """The network maps behind a prediction, at scale 1 (flip-averaged when ``flip``).

        Returns:
            ``(heatmaps (K+1)×h×w, offsets 2K×h×w, image_to_input 2×3)`` on the CPU.
        """
        from grmpose.inference import prepare_image

        tensor, m = prepare_image(image, self.input_size)
        heat, off, _ = run_forward(self.forward, tensor[None], self.spec.flip_index if self.flip else None)
        return heat[0].cpu(), off[0].cpu(), m
