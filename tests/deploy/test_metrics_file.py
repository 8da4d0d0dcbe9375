"""metrics.json's one layout, and the layouts stages wrote before it read into it."""

import json

from deploy import metrics_file

ORT = {"AP": 0.235, "backend": "onnxruntime", "precision": "fp32", "artifact": "r/export/model.onnx"}


def test_write_then_read_is_the_layout(tmp_path):
    written = metrics_file.write(tmp_path, {"onnxruntime_fp32": ORT}, {"pytorch": {"AP": 0.24}}, parity={"x": 1})
    assert json.loads((tmp_path / "metrics.json").read_text()) == written == {
        "artifacts": {"onnxruntime_fp32": ORT}, "reference": {"pytorch": {"AP": 0.24}}, "parity": {"x": 1}}
    assert metrics_file.read(tmp_path / "metrics.json") == written
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # written under a temporary name, renamed


def test_the_layouts_before_it_read_into_it():
    # a training stage's flat measurement: its checkpoint, `pytorch`
    assert metrics_file.normalise({"AP": 0.3, "num_images": 24}) == {
        "artifacts": {"pytorch": {"AP": 0.3, "num_images": 24}}, "reference": {}}
    # a split without boxes scores None (pycocotools' -1), still a measurement
    assert metrics_file.measurement(metrics_file.normalise({"AP": None, "num_images": 0})) == {
        "AP": None, "num_images": 0}
    # export's: its ONNX files at the top, PyTorch beside them, and the stage's own keys
    assert metrics_file.normalise({"pytorch": {"AP": 0.24}, "onnxruntime_fp32": ORT,
                                   "onnxruntime_fp32_nms": {"AP": 0.235}, "parity": {"x": 1}, "model": {}}) == {
        "artifacts": {"onnxruntime_fp32": ORT, "onnxruntime_fp32_nms": {"AP": 0.235}},
        "reference": {"pytorch": {"AP": 0.24}}, "parity": {"x": 1}, "model": {}}
    # quantize's and qat's: the reference as two numbers
    assert metrics_file.normalise({"artifacts": {"openvino_int8": {"AP": 0.23}}, "skipped": {},
                                   "reference": {"pytorch_AP": 0.24, "fp32_AP": 0.235}}) == {
        "artifacts": {"openvino_int8": {"AP": 0.23}}, "skipped": {},
        "reference": {"pytorch": {"AP": 0.24}, "onnxruntime_fp32": {"AP": 0.235}}}
    # `deploy.evaluate --out` on a runtime's predictions: named by its runtime and precision
    assert list(metrics_file.normalise({"AP": 0.2, "backend": "openvino", "precision": "int8"})["artifacts"]) == [
        "openvino_int8"]


def test_normalise_is_idempotent_and_measurement_finds_either_side():
    data = metrics_file.layout({"onnxruntime_fp32": ORT}, {"pytorch": {"AP": 0.24}})
    assert metrics_file.normalise(data) == data
    assert metrics_file.measurement(data, "onnxruntime_fp32") == ORT
    assert metrics_file.measurement(data, "pytorch") == {"AP": 0.24}
    assert metrics_file.measurement(data, "openvino_int8") == {}
    # an artifact measured as nothing is not the reference's of the same name
    assert metrics_file.measurement(metrics_file.layout({"pytorch": {}}, {"pytorch": {"AP": 0.24}}), "pytorch") == {}


def test_missing_or_unreadable_is_empty(tmp_path):
    assert metrics_file.read(tmp_path / "none.json") == {}
    (tmp_path / "cut.json").write_text('{"artifacts": ')
    assert metrics_file.read(tmp_path / "cut.json") == {}
    (tmp_path / "list.json").write_text("[]")
    assert metrics_file.read(tmp_path / "list.json") == {}
