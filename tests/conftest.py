import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deploy.errors import InputError
from distill.checkpoint import save_checkpoint
from distill.data.fashion_mnist import load_fashion_mnist
from distill.data.fashion_scenes import FashionScenesConfig, generate
from distill.models.detector import ModelConfig, build_detector
from export.onnx import export_onnx
from pipeline.config import DataConfig
from pipeline.stages.data import load_split

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def fashion_mnist_available() -> None:
    try:
        load_fashion_mnist("test")
    except InputError as e:
        pytest.skip(f"Fashion-MNIST unavailable ({e}); `make setup` installs it as root")


@pytest.fixture(scope="session")
def tiny_scenes(tmp_path_factory, fashion_mnist_available) -> Path:
    """A tiny fashion-scenes dataset, generated once per test session."""
    root = tmp_path_factory.mktemp("data") / "fashion-scenes"
    generate(FashionScenesConfig(size="tiny", workers=1), root, progress=False)
    return root


def write_coco(root: Path, images: list[dict], annotations: list[dict], categories: list[dict],
               split: str = "val", write_images: bool = True) -> Path:
    """A COCO-layout dataset under root; images are plain grey JPEGs of the declared size."""
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    if write_images:
        for img in images:
            Image.fromarray(np.full((img["height"], img["width"], 3), 128, np.uint8)).save(
                root / split / img["file_name"])
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


# ImageNet backbone + random head: outputs that depend on the image, built in a second.
SMALL = ModelConfig(backbone="efficientnet_lite0", pretrained="imagenet", input_size=[128, 128], fpn_channels=16,
                    head_channels=16, head_convs=1)


@pytest.fixture(scope="session")
def tiny_splits(tiny_scenes):
    data = DataConfig(root=str(tiny_scenes))
    return load_split(data, "train"), load_split(data, "val")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_splits):
    """(detector, classes, checkpoint path) of a small GFL detector."""
    classes = tiny_splits[0].class_names
    detector = build_detector(SMALL, len(classes), seed=0).eval()
    # Untrained, the class prior (0.01) makes every score nearly equal; at 0.5 they spread as a trained
    # detector's do, so INT8-vs-FP32 agreement is measured on scores that vary.
    torch.nn.init.zeros_(detector.head.cls_out.bias)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, {"model": detector.state_dict(), "config": asdict(SMALL), "classes": classes})
    return detector, classes, path


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_model):
    detector, classes, path = tiny_model
    return export_onnx(detector, classes, tmp_path_factory.mktemp("onnx") / "model.onnx", (128, 128), source=str(path))


def hand_qdq_model(zero=0, axis=0, act_scale=0.1, with_zero=True, batch=1, zero_dtype=np.int8):
    """x -> Q/DQ -> Conv(w behind its own Q/DQ pair, per output channel) -> y: the form TensorRT takes,
    unless an argument breaks it (a uint8 (zero_dtype) or non-zero zero point, another axis, per-channel
    activations)."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    ws = numpy_helper.from_array(np.full(4, 0.01, np.float32), "ws")
    wz = numpy_helper.from_array(np.zeros(4, np.int8), "wz")
    xs = numpy_helper.from_array(np.asarray(act_scale, np.float32), "xs")
    xz = numpy_helper.from_array(np.asarray(zero, zero_dtype), "xz")
    x_zero = ["xz"] if with_zero else []
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", *x_zero], ["xq"], name="q_x"),
             helper.make_node("DequantizeLinear", ["xq", "xs", *x_zero], ["xd"], name="dq_x"),
             helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"], name="q_w", axis=axis),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], name="dq_w", axis=axis),
             helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4, 4, 4])],
                              [w, ws, wz, xs, xz])
    return helper.make_model(graph)
