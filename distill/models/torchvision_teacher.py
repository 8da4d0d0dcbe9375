"""torchvision's COCO detectors as teachers (teacher.source: torchvision:<name>): a wrapper around the
model's own backbone, FPN and head that gives the distiller and the evaluator edgekd's raw-output
contract, decoding every row as torchvision does (its rounded anchors at x * stride, BoxCoder(1, 1, 1, 1)
for RetinaNet, BoxLinearCoder(normalize_by_size=True) and sqrt(class x centerness) for FCOS).

torchvision's transform (resize and normalise) is skipped: edgekd's inputs are already letterboxed and
normalised with the same ImageNet mean and std in RGB. torchvision spaces each level's anchors by
image_size // grid_size, the nominal stride only where the input is a multiple of 128 (P7's stride), so
other input sizes are refused. The class logits are cut to the dataset's classes, chosen by name among
torchvision's COCO categories.
"""

from __future__ import annotations

import http.client
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import clip_boxes_to_image

from deploy.errors import InputError
from deploy.files import atomic_path
from distill.checkpoint import check_sha256, error_line, file_damage
from distill.models.config import ModelConfig

MODELS = {  # torchvision builder -> its COCO weights enum
    "retinanet_resnet50_fpn_v2": "RetinaNet_ResNet50_FPN_V2_Weights",
    "retinanet_resnet50_fpn": "RetinaNet_ResNet50_FPN_Weights",
    "fcos_resnet50_fpn": "FCOS_ResNet50_FPN_Weights",
}
LARGEST_STRIDE = 128
# Seconds to connect and, then, for each read: a proxy that accepts and never answers fails here instead of
# hanging for ever (torch.hub's download has no timeout).
FETCH_TIMEOUT_S = 30.0
CHUNK = 1 << 20


@dataclass
class TorchvisionConfig:
    """What the distiller and the pipeline read of a teacher's config (ModelConfig's fields they use)."""

    name: str
    input_size: list[int] = field(default_factory=lambda: [512, 512])
    source: str = ""
    weights: str = ""  # the file read: teacher.checkpoint, or torchvision's download (the loader hashes it)


class TorchvisionHead(nn.Module):
    """The decode side of the adapter: edgekd's head interface over torchvision's outputs."""

    def __init__(self, detector: nn.Module, fcos: bool):
        super().__init__()
        self.detector, self.fcos = detector, fcos
        self.anchors_per_location = detector.anchor_generator.num_anchors_per_location()[0]

    def decode(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(boxes [N, A, 4] xyxy input pixels, clipped to the input as torchvision does; scores [N, A, C])."""
        n, a, _ = outputs["box_regression"].shape
        anchors = outputs["anchors"].repeat(n, 1)
        regression = outputs["box_regression"].reshape(n * a, 4).float()
        coder = self.detector.box_coder
        boxes = coder.decode(regression, anchors) if self.fcos else coder.decode_single(regression, anchors)
        boxes = clip_boxes_to_image(boxes.reshape(n, a, 4), tuple(outputs["image_size"].tolist()))
        scores = outputs["cls_logits"].float().sigmoid()
        if self.fcos:
            scores = torch.sqrt(scores * outputs["centerness"].float().sigmoid()[..., None])
        return boxes, scores

    def distill_boxes(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.decode(outputs)[0]


class TorchvisionTeacher(nn.Module):
    """A torchvision RetinaNet or FCOS behind edgekd's detector interface: forward(images) -> raw outputs
    cls_logits [N, A, C] (the dataset's classes), box_regression [N, A, 4], centerness [N, A] (FCOS),
    anchors [A, 4], points [A, 2] (anchor centres), strides [A]; decode(outputs) -> boxes, scores."""

    def __init__(self, detector: nn.Module, class_rows: list[int], cfg: TorchvisionConfig):
        super().__init__()
        self.cfg, self.fcos = cfg, cfg.name.startswith("fcos")
        self.model = detector
        self.head = TorchvisionHead(detector, self.fcos)
        self.register_buffer("rows", torch.tensor(class_rows), persistent=False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = images.shape[-2:]
        if height % LARGEST_STRIDE or width % LARGEST_STRIDE:
            raise InputError(f"{self.cfg.source}: input {height}x{width}; torchvision places P6/P7 anchors at the "
                             f"nominal stride only for inputs that are multiples of {LARGEST_STRIDE} (set "
                             "teacher.model.input_size)")
        features = list(self.model.backbone(images).values())
        head = self.model.head(features)
        anchors = self.model.anchor_generator(ImageList(images, [(height, width)] * images.shape[0]), features)[0]
        sizes = [f.shape[-2] * f.shape[-1] * self.head.anchors_per_location for f in features]
        strides = torch.cat([torch.full((s,), float(height // f.shape[-2]), device=images.device)
                             for s, f in zip(sizes, features)])
        out = {"cls_logits": head["cls_logits"][..., self.rows], "box_regression": head["bbox_regression"],
               "anchors": anchors, "points": (anchors[:, :2] + anchors[:, 2:]) / 2, "strides": strides,
               "image_size": torch.tensor([height, width])}
        if self.fcos:
            out["centerness"] = head["bbox_ctrness"][..., 0]
        return out

    def decode(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head.decode(outputs)


def coco_categories(name: str) -> list[str]:
    """torchvision's 91 COCO category names for a model (index = its label; '__background__', 'N/A' gaps)."""
    return list(getattr(torchvision.models.detection, MODELS[name]).COCO_V1.meta["categories"])


def fetch_weights(url: str, timeout: float = FETCH_TIMEOUT_S, folder: str | Path | None = None) -> Path:
    """The file at `url`, downloaded once into `folder` (default: torch.hub's checkpoints, where torchvision
    keeps it) under its own name, renamed into place only when complete; one line naming the URL if not."""
    path = Path(folder or Path(torch.hub.get_dir()) / "checkpoints") / Path(urllib.parse.urlparse(url).path).name
    if path.is_file():
        return path
    request = urllib.request.Request(url, headers={"User-Agent": "edgekd"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, atomic_path(path) as tmp:
            expected = int(response.headers.get("Content-Length") or -1)
            with open(tmp, "wb") as f:
                while block := response.read(CHUNK):
                    f.write(block)
            if expected >= 0 and tmp.stat().st_size != expected:  # urllib ends a cut transfer quietly
                raise http.client.IncompleteRead(b"", expected - tmp.stat().st_size)
    except (OSError, http.client.HTTPException) as e:  # refused, timed out, cut short, HTTP errors, disk
        reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise InputError(f"{url}: download failed ({reason[:160]}; {timeout:g} s allowed to connect and per read): "
                         "download it by hand and set teacher.checkpoint to the file") from e
    return path


def read_weights(path: Path, url: str) -> dict[str, torch.Tensor]:
    """A torchvision weights file's state dict (weights_only); one line naming the file when it is not one."""
    if not path.is_file():
        raise InputError(f"teacher.checkpoint: {path} not found; torchvision's file is {url}")
    damage = file_damage(path)
    if damage:
        raise InputError(f"{path}: {damage}; download {url} again and set teacher.checkpoint to the file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  cut inside, or pickled objects weights_only refuses
        raise InputError(f"{path}: unreadable with weights_only=True "
                         f"({error_line(e)}); torchvision's file is {url}") from e
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise InputError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors; "
                         f"torchvision's file is {url}")
    return state


def torchvision_teacher(source: str, checkpoint: str | Path | None, dataset_classes: list[str],
                        model: ModelConfig | None = None, expected_sha256: str | None = None) -> TorchvisionTeacher:
    """The teacher `torchvision:<name>` with its COCO weights (from `checkpoint`, else downloaded once with
    a timeout), checked against `expected_sha256` when stated, cut to the dataset's classes; its input size
    from teacher.model.input_size."""
    name = source.removeprefix("torchvision:")
    if not source.startswith("torchvision:") or name not in MODELS:
        raise InputError(f"teacher.source: {source!r}; valid: {', '.join('torchvision:' + m for m in MODELS)}")
    categories = coco_categories(name)
    index = {c: i for i, c in enumerate(categories) if c not in ("__background__", "N/A")}
    missing = [c for c in dataset_classes if c not in index]
    if missing:
        raise InputError(f"teacher.source: {source} knows COCO's 80 classes, not "
                         f"{', '.join(repr(c) for c in missing[:3])}; distil from a teacher trained on your classes")
    input_size = list(model.input_size) if model is not None else [512, 512]
    if input_size[0] % LARGEST_STRIDE or input_size[1] % LARGEST_STRIDE:
        raise InputError(f"teacher.model.input_size {input_size}: a torchvision teacher "
                         f"needs multiples of {LARGEST_STRIDE} (its anchors sit "
                         "at image_size // grid_size, the nominal stride only there)")
    url = getattr(torchvision.models.detection, MODELS[name]).COCO_V1.url  # settings checked: now the weights
    path = Path(checkpoint) if checkpoint else fetch_weights(url)
    check_sha256(path, expected_sha256, "teacher.checkpoint")
    state = read_weights(path, url)
    detector = getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None,
                                                           num_classes=len(categories))
    try:
        missing_keys, unexpected = detector.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes that differ
        missing_keys, unexpected = [str(e).strip().splitlines()[-1].strip()[:120]], []
    if missing_keys or unexpected:
        raise InputError(f"{path}: not {name}'s weights (missing {missing_keys[:2]}, unexpected {unexpected[:2]}); "
                         f"torchvision's file is {url}")
    cfg = TorchvisionConfig(name=name, input_size=input_size, source=source, weights=str(path))
    return TorchvisionTeacher(detector.eval(), [index[c] for c in dataset_classes], cfg).eval()
