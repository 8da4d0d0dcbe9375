from dataclasses import asdict

import pytest
import torch

from distill.checkpoint import save_checkpoint
from distill.models.detector import ModelConfig, build_detector
from export.onnx import export_onnx
from pipeline.config import DataConfig
from pipeline.stage_data import load_split

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
