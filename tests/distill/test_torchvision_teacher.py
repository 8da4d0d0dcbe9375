"""torchvision's COCO detectors as teachers, offline: the adapter against torchvision's own eval forward
and postprocess_detections on random weights (saved to a file, as a user's download would be), and
distillation from it into an edgekd student."""

import contextlib
import http.server
import re
import socket
import threading
import time

import numpy as np
import pytest
import torch
import torchvision

from deploy.errors import InputError
from deploy.preprocess import MEAN, STD
from distill.distiller import Distiller, check_pair
from distill.models import torchvision_teacher as tv_module
from distill.models.detector import ModelConfig, build_detector
from distill.models.torchvision_teacher import coco_categories, fetch_weights, torchvision_teacher
from distill.settings import DistillConfig
from distill.teachers import load_teacher
from tests.distill.test_mmdet import teacher_config

CLASSES = ["dog", "person", "car"]  # a dataset's classes, in its own order
SIZE = 256


_SAVED = {}


def saved_detector(name, tmp_path):
    """Built once per name (a ResNet-50 build and save cost seconds); see _saved_detector."""
    if name not in _SAVED:
        _SAVED[name] = _saved_detector(name, tmp_path)
    return _SAVED[name]


def _saved_detector(name, tmp_path):
    """torchvision's model with random weights and the dataset classes' biases at 0 (so that their scores
    pass its 0.05 threshold and the rest stay near 0.01), saved as a weights file; and the model itself,
    its transform set to leave 256 x 256 alone."""
    torch.manual_seed(0)
    detector = getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None, num_classes=91,
                                                          min_size=SIZE, max_size=SIZE)
    with torch.no_grad():
        bias = detector.head.classification_head.cls_logits.bias  # [anchors x 91], anchor-major
        wanted = [coco_categories(name).index(c) for c in CLASSES]
        bias.view(-1, 91)[:, wanted] = 0.0
        # Spread the scores: the init leaves them all near 0.5 behind GroupNorm. v1's head has no
        # normalisation, where larger weights saturate every score at 1.
        std = 0.01 if name == "retinanet_resnet50_fpn" else 0.05
        for m in detector.head.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0, std)
    path = tmp_path / f"{name}.pth"
    torch.save(detector.state_dict(), path)
    return detector.eval(), path


@pytest.mark.slow
@pytest.mark.parametrize("name", ["retinanet_resnet50_fpn_v2", "retinanet_resnet50_fpn", "fcos_resnet50_fpn"])
def test_the_adapter_finds_torchvisions_own_detections(name, tmp_path):
    detector, path = saved_detector(name, tmp_path)
    teacher = torchvision_teacher(f"torchvision:{name}", path, CLASSES, ModelConfig(input_size=[SIZE, SIZE]))
    image = torch.rand(3, SIZE, SIZE)
    normalised = ((image * 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None])[None]
    with torch.no_grad():
        theirs = detector([image])[0]
        boxes, scores = teacher.decode(teacher(normalised))
    categories = coco_categories(name)
    wanted = [categories.index(c) for c in CLASSES]
    checked, worst = 0, 0.0
    for box, score, label in zip(theirs["boxes"], theirs["scores"], theirs["labels"]):
        if int(label) not in wanted or checked >= 50:
            continue
        column = scores[0, :, wanted.index(int(label))]
        rows = torch.nonzero((column - score).abs() < 1e-5)[:, 0]
        assert len(rows), f"no adapter row scores {score:.6f} for {categories[label]}"
        error = (boxes[0, rows] - box).abs().max(dim=1).values.min().item()
        worst, checked = max(worst, error), checked + 1
    print(f"{name}: {checked} of torchvision's top detections found, boxes within {worst:.2e} px")
    assert checked >= 20 and worst < 1e-3


@pytest.mark.slow
def test_distilling_from_a_torchvision_teacher_changes_only_the_student(tmp_path):
    _, path = saved_detector("fcos_resnet50_fpn", tmp_path)
    teacher = torchvision_teacher("torchvision:fcos_resnet50_fpn", path, CLASSES, ModelConfig(input_size=[SIZE, SIZE]))
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = ModelConfig(name="fcos", backbone="efficientnet_lite0", pretrained="none", input_size=[SIZE, SIZE],
                      fpn_channels=16, extra_levels=2, head_channels=16, head_convs=1, norm_groups=4, point_offset=0.0)
    student = build_detector(cfg, len(CLASSES), seed=0)
    check_pair(teacher, student, CLASSES, CLASSES, (SIZE, SIZE), "tv")
    before = {k: v.clone() for k, v in student.state_dict().items()}
    distiller = Distiller(teacher, cfg, DistillConfig(method="bckd"), torch.device("cpu"))
    images = torch.randn(2, 3, SIZE, SIZE)
    targets = [{"boxes": torch.tensor([[10.0, 20, 120, 200]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[50.0, 50, 250, 160]]), "labels": torch.tensor([2])}]
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01)
    student.train()
    for _ in range(2):
        losses = distiller(student, images, targets)
        assert losses["raw_bckd_cls"] > 0 and losses["raw_bckd_loc"] > 0
        optimizer.zero_grad()
        sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
        optimizer.step()
    assert all(torch.equal(frozen[k], v) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    # edgekd's cell-centre locations are half a stride off torchvision's: refused, with the setting to change
    other = build_detector(ModelConfig(**{**cfg.__dict__, "point_offset": 0.5}), len(CLASSES), seed=0)
    with pytest.raises(InputError, match="set student.model.point_offset"):
        check_pair(teacher, other, CLASSES, CLASSES, (SIZE, SIZE), "tv")
    with pytest.raises(InputError, match="ld distils GFL's box distributions; teacher is fcos_resnet50_fpn"):
        Distiller(teacher, cfg, DistillConfig(method="ld"), torch.device("cpu"))


@pytest.mark.slow
def test_a_retinanet_teacher_pairs_with_an_edgekd_retinanet_anchor_by_anchor(tmp_path):
    _, path = saved_detector("retinanet_resnet50_fpn_v2", tmp_path)
    teacher = torchvision_teacher("torchvision:retinanet_resnet50_fpn_v2", path, CLASSES,
                                  ModelConfig(input_size=[SIZE, SIZE]))
    cfg = ModelConfig(name="retinanet", backbone="efficientnet_lite0", pretrained="none", input_size=[SIZE, SIZE],
                      fpn_channels=16, extra_levels=2, head_channels=16, head_convs=1, norm_groups=4, point_offset=0.0)
    check_pair(teacher, build_detector(cfg, len(CLASSES), seed=0), CLASSES, CLASSES, (SIZE, SIZE), "tv")  # 1.6% apart


def test_bad_torchvision_teachers_are_one_line(tmp_path):
    with pytest.raises(InputError, match=r"torchvision:retinanet_resnet50_fpn_v2 "
                                         r"knows COCO's 80 classes, not 'Sneaker'"):
        torchvision_teacher("torchvision:retinanet_resnet50_fpn_v2", None, ["person", "Sneaker"])
    with pytest.raises(InputError, match=r"teacher.source: 'torchvision:maskrcnn'; valid: torchvision:retinanet"):
        torchvision_teacher("torchvision:maskrcnn", None, ["person"])
    _, path = saved_detector("fcos_resnet50_fpn", tmp_path)
    with pytest.raises(InputError, match=r"input_size \[320, 320\]: a torchvision teacher needs multiples of 128"):
        torchvision_teacher("torchvision:fcos_resnet50_fpn", path, ["person"], ModelConfig(input_size=[320, 320]))
    with pytest.raises(InputError, match=r"fcos_resnet50_fpn.pth: not retinanet_resnet50_fpn's weights"):
        torchvision_teacher("torchvision:retinanet_resnet50_fpn", path, ["person"],
                            ModelConfig(input_size=[SIZE, SIZE]))


def test_coco_categories_are_torchvisions_91():
    names = coco_categories("fcos_resnet50_fpn")
    assert len(names) == 91 and names[1] == "person" and names[0] == "__background__"
    assert np.sum([n == "N/A" for n in names]) == 10


# ---------------------------------------------------------------------------------------------------
# Fetching and reading the weights file: only 127.0.0.1 is ever contacted here.

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


@pytest.fixture
def no_proxy(monkeypatch):
    """urllib would send even 127.0.0.1's requests to a configured proxy."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")


@contextlib.contextmanager
def silent_server(seconds: float = 10.0):
    """A TCP server on 127.0.0.1 that accepts and never answers (the proxy that hung the download), for at
    most `seconds`; yields a URL on it."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    stop, held = threading.Event(), []

    def serve():
        end = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < end:
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/retinanet_resnet50_fpn_coco-eeacb38b.pth"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


@contextlib.contextmanager
def file_server(body: bytes, claimed_length: int):
    """An HTTP server on 127.0.0.1 that sends `body` under Content-Length `claimed_length`, then closes."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(claimed_length))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/fcos_resnet50_fpn_coco-99b0c9b7.pth"
    finally:
        server.shutdown()
        server.server_close()


def test_a_download_that_never_answers_fails_in_one_line_naming_the_url(no_proxy, tmp_path):
    with silent_server() as url:
        start = time.monotonic()
        with pytest.raises(InputError, match=rf"^{re.escape(url)}: download failed \(TimeoutError: "
                                             r"timed out; 1 s allowed to connect and per read\): "
                                             r"download it by hand and set teacher.checkpoint"):
            fetch_weights(url, timeout=1.0, folder=tmp_path)
        assert time.monotonic() - start < 5
    assert list(tmp_path.iterdir()) == []  # no partial file left under the final name


def test_a_cut_download_leaves_nothing_and_a_whole_one_is_hashed(no_proxy, tmp_path, monkeypatch):
    weights = tmp_path / "w.pth"
    torch.save({"x": torch.zeros(4)}, weights)
    body = weights.read_bytes()
    cache = tmp_path / "cache"
    with file_server(body[:100], len(body)) as url, \
            pytest.raises(InputError, match=rf"^{re.escape(url)}: download failed \(IncompleteRead"):
        fetch_weights(url, timeout=5.0, folder=cache)
    assert not cache.exists() or list(cache.iterdir()) == []
    with file_server(body, len(body)) as url:
        path = fetch_weights(url, timeout=5.0, folder=cache)
        assert path == cache / "fcos_resnet50_fpn_coco-99b0c9b7.pth" and path.read_bytes() == body
        # torchvision's downloaded file is checked against teacher.checkpoint_sha256 like a local one
        monkeypatch.setattr(tv_module, "fetch_weights", lambda _: fetch_weights(url, timeout=5.0, folder=cache))
        with pytest.raises(InputError, match=rf"{re.escape(str(path))}: SHA-256 [0-9a-f]{{64}} does not match "
                                             r"teacher.checkpoint_sha256 0+ \(a corrupt or other file"):
            load_teacher(teacher_config(None, model=ModelConfig(input_size=[SIZE, SIZE]), sha256="0" * 64,
                                        source="torchvision:fcos_resnet50_fpn"), ["person"])


def test_a_wrong_hash_or_a_broken_weights_file_is_one_line(tmp_path):
    source, model = "torchvision:retinanet_resnet50_fpn", ModelConfig(input_size=[SIZE, SIZE])
    good = tmp_path / "good.pth"
    torch.save({"x": torch.zeros(64)}, good)
    with pytest.raises(InputError, match=r"good.pth: SHA-256 [0-9a-f]{64} does not "
                                         r"match teacher.checkpoint_sha256 0+ "):
        load_teacher(teacher_config(good, model=model, sha256="0" * 64, source=source), ["person"])
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:200])
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    text = tmp_path / "text.pth"
    text.write_text("<html>proxy login</html>\n")
    url = r"https://download.pytorch.org/models/retinanet_resnet50_fpn_coco-eeacb38b.pth"
    for path, message in [(truncated, r"truncated or damaged \(its zip directory is missing\)"),
                          (text, r"not a PyTorch file \(it starts with b'<htm'"),
                          (tensor, r"holds a Tensor, not a state dict of tensors")]:
        with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: {message}.*{re.escape(url)}") as error:
            torchvision_teacher(source, path, ["person"], model)
        assert "\n" not in str(error.value)
