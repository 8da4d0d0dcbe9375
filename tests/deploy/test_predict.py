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
