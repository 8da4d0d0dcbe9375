import pytest

from deploy.errors import InputError
from deploy.runtimes import backend_for, open_runner


def test_the_runtime_is_picked_by_suffix_or_override():
    assert backend_for("m.onnx") == "onnxruntime" and backend_for("m.xml") == "openvino"
    assert backend_for("m.engine") == "tensorrt" and backend_for("m.onnx", "openvino") == "openvino"
    with pytest.raises(InputError, match=r"m.pt: cannot tell the runtime from the suffix '.pt'.*pass --backend"):
        backend_for("m.pt")
    with pytest.raises(InputError, match="--backend tflite: unknown; valid: onnxruntime, openvino, tensorrt"):
        backend_for("m.onnx", "tflite")


def test_missing_and_unreadable_artifacts(tmp_path):
    with pytest.raises(InputError, match="artifact not found"):
        open_runner(str(tmp_path / "none.onnx"))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(InputError, match="bad.onnx: ONNX Runtime cannot load it"):
        open_runner(str(bad))
    xml = tmp_path / "bad.xml"
    xml.write_text("<net>")
    with pytest.raises(InputError, match="bad.xml: OpenVINO cannot read it"):
        open_runner(str(xml))
