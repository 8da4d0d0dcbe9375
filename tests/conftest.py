import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deploy.errors import InputError
from distill.data.fashion_mnist import load_fashion_mnist
from distill.data.fashion_scenes import FashionScenesConfig, generate

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
            Image.fromarray(np.full((img["height"], img["width"], 3), 128, np.uint8)).save(root / split / img["file_name"])
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path
