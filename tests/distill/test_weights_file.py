"""Weights files (the shipped teacher's form) and the checks every teacher checkpoint passes."""

from dataclasses import replace

import pytest
import torch

from deploy.errors import InputError
from deploy.files import sha256_file as sha256
from distill.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from distill.data.fashion_mnist import CLASSES
from distill.models.detector import build_detector
from distill.weights_file import PREPROCESS, check_weights, write_weights
from tests.conftest import REPO, SMALL


def test_a_weights_file_is_float16_and_loads_back_into_the_same_outputs(tiny_model, tmp_path):
    detector, classes, ckpt = tiny_model
    out = tmp_path / "w.pt"
    write_weights(ckpt, out, {"note": "test"})
    state = check_weights(out, SMALL, classes, sha256(out))
    assert all(v.dtype == torch.float16 for v in state["model"].values() if v.is_floating_point())
    assert state["preprocess"] == PREPROCESS and state["note"] == "test"
    model = build_detector(SMALL, len(classes)).eval()
    load_model_state(model, state["model"], str(out))
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        a, b = detector(x)["cls_logits"], model(x)["cls_logits"]
    assert (a - b).abs().max() < 5e-2  # float16 weights: the same model to 3 significant digits
    assert out.stat().st_size < 0.6 * ckpt.stat().st_size


def test_every_bad_teacher_is_one_line_naming_the_file(tiny_model, tmp_path):
    _, classes, ckpt = tiny_model
    out = tmp_path / "w.pt"
    write_weights(ckpt, out)
    digest = sha256(out)
    with pytest.raises(InputError, match=rf"w.pt: SHA-256 {digest} does not match "
                                         r"teacher.checkpoint_sha256 0+ .*restore it"):
        check_weights(out, SMALL, classes, "0" * 64)
    with pytest.raises(InputError, match=r"w.pt: trained on classes .* the dataset has \['x'.*: set "
                                         r"teacher.checkpoint=null to train one on this dataset \(with "
                                         r"teacher.train\), or teacher.checkpoint=PATH"):
        check_weights(out, SMALL, ["x"] * len(classes))
    with pytest.raises(InputError, match=r"architecture differs from the model config: "
                                         r"head_channels: 16 there vs 32 here"):
        check_weights(out, replace(SMALL, head_channels=32), classes)
    state = load_checkpoint(out)
    save_checkpoint(tmp_path / "bgr.pt", {**state, "preprocess": {**PREPROCESS, "color": "BGR"}})
    with pytest.raises(InputError, match=r"bgr.pt: saved with other preprocessing"):
        check_weights(tmp_path / "bgr.pt", SMALL, classes)
    with pytest.raises(InputError, match=r"teacher.checkpoint: .*none.pt not found \(set teacher.checkpoint: null"):
        check_weights(tmp_path / "none.pt", SMALL, classes)


@pytest.mark.slow
def test_the_shipped_teacher_matches_its_hash_and_the_default_config(tiny_splits):
    from pipeline.config import load_config

    cfg = load_config(REPO / "configs" / "pipelines" / "default.yaml")
    if not cfg.teacher.checkpoint:
        pytest.fail("the default pipeline names no shipped teacher")
    path = REPO / cfg.teacher.checkpoint

    state = check_weights(path, cfg.teacher.model, list(CLASSES), cfg.teacher.checkpoint_sha256)
    assert path.stat().st_size <= 12 * 2**20
    model = build_detector(replace(cfg.teacher.model, pretrained="none"), len(CLASSES)).eval()
    load_model_state(model, state["model"], str(path))
    from distill.validate import evaluate_model

    metrics, _ = evaluate_model(model, tiny_splits[1], tuple(cfg.teacher.model.input_size), 8, torch.device("cpu"),
                                False)
    # the full-val AP is in the model card; on the 24 tiny val scenes a converged teacher is far above chance
    assert metrics["num_images"] == 24 and metrics["AP"] > 0.2, metrics["AP"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: the model is moved from the CPU to it")
def test_a_model_built_on_the_cpu_is_evaluated_on_the_device_asked(tiny_model, tiny_splits):
    import copy

    from distill.validate import evaluate_model

    detector, _, _ = tiny_model
    model = copy.deepcopy(detector)  # the fixture is shared; evaluate_model moves the model it is given
    cpu, _ = evaluate_model(model, tiny_splits[1], tuple(SMALL.input_size), 8, torch.device("cpu"))
    cuda, _ = evaluate_model(model, tiny_splits[1], tuple(SMALL.input_size), 8, torch.device("cuda"))
    assert next(model.parameters()).device.type == "cuda"
    assert cuda["AP"] == pytest.approx(cpu["AP"], abs=0.01)
