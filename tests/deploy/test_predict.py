import numpy as np

from deploy.coco import load_coco
from deploy.predict import predict
from tests.conftest import write_coco


def test_predict_pads_static_batches_and_maps_boxes_back_to_the_original_image(tmp_path):
    # 5 images of 200 x 100 (w x h) letterboxed into 64 x 64: scale 0.32, 16 px of padding above and below
    images = [{"id": i + 1, "file_name": f"{i}.jpg", "width": 200, "height": 100} for i in range(5)]
    ann = write_coco(tmp_path, images, [], [{"id": 7, "name": "thing"}])
    coco = load_coco(str(ann), str(tmp_path / "val"))
    seen = []

    def infer(x):
        seen.append(x.shape[0])
        boxes = np.tile(np.array([[[0.0, 16.0, 32.0, 48.0]]], np.float32), (x.shape[0], 1, 1))
        return boxes, np.full((x.shape[0], 1, 1), 0.9, np.float32)
    results = predict(infer, coco, (64, 64), fixed_batch=2)
    assert seen == [2, 2, 2]  # the fifth image rides in a batch padded to 2
    assert [r["image_id"] for r in results] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(results[0]["bbox"], [0.0, 0.0, 100.0, 100.0], atol=1e-3)  # xywh, original pixels
    assert results[0]["category_id"] == 7 and abs(results[0]["score"] - 0.9) < 1e-6


def test_open_detector_gives_the_evaluators_detections(tiny_onnx, tiny_splits):
    """The report's two lines for an application: the same boxes the evaluator scores."""
    from dataclasses import replace

    from deploy.detector import open_detector
    from deploy.predict import predict, runner_infer
    from deploy.preprocess import load_image
    from deploy.runtimes import open_runner

    val = replace(tiny_splits[1], images=tiny_splits[1].images[:1])
    info = val.images[0]
    boxes, scores, labels = open_detector(str(tiny_onnx))(load_image(val.image_path(info)))
    expected = predict(runner_infer(open_runner(str(tiny_onnx))), val, (128, 128), fixed_batch=1)
    assert len(expected) == len(scores) > 0
    np.testing.assert_allclose(scores, [r["score"] for r in expected], atol=1e-5)  # COCO results keep 5 decimals
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    np.testing.assert_allclose(xywh, [r["bbox"] for r in expected], atol=1e-2)
    assert [val.cat_ids[k] for k in labels] == [r["category_id"] for r in expected]
