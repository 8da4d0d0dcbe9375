import numpy as np

from deploy.preprocess import MEAN, STD, Letterbox, letterbox, preprocess, unletterbox_boxes


def test_letterbox_wide_image_is_centred_vertically():
    image = np.full((100, 200, 3), 200, np.uint8)  # h=100, w=200
    resized, lb = letterbox(image, (64, 64))
    assert resized.shape == (32, 64, 3)
    assert lb == Letterbox(scale=0.32, pad_x=0, pad_y=16, orig_height=100, orig_width=200)


def test_preprocess_normalises_and_pads_with_zero():
    image = np.zeros((40, 20, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 10, 20, 30
    x, lb = preprocess(image, (80, 80))  # scale 2 -> 80x40, padded 20 px each side
    assert x.shape == (3, 80, 80) and x.dtype == np.float32
    assert (lb.pad_x, lb.pad_y, lb.scale) == (20, 0, 2.0)
    assert np.all(x[:, :, :20] == 0) and np.all(x[:, :, 60:] == 0)
    expected = (np.array([10, 20, 30]) - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(x[:, 40, 40], expected, rtol=1e-5)


def test_unletterbox_inverts_the_mapping_and_clips():
    lb = Letterbox(scale=0.5, pad_x=10, pad_y=30, orig_height=200, orig_width=300)
    original = np.array([[10, 20, 110, 220 - 40], [0, 0, 300, 200]], np.float32)
    in_input = original * lb.scale + np.array([lb.pad_x, lb.pad_y, lb.pad_x, lb.pad_y], np.float32)
    np.testing.assert_allclose(unletterbox_boxes(in_input, lb), original, atol=1e-4)
    outside = np.array([[0, 0, 400, 400]], np.float32)  # reaches into the padding
    np.testing.assert_allclose(unletterbox_boxes(outside, lb), [[0, 0, 300, 200]])


def test_the_uint8_letterbox_is_the_float_input_before_normalisation():
    from deploy.preprocess import PAD_UINT8, letterbox_uint8, model_input

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 60, 3), dtype=np.uint8)
    u8, lb = letterbox_uint8(image, (40, 40))
    x, lb_float = preprocess(image, (40, 40))
    assert lb == lb_float and u8.dtype == np.uint8 and u8.shape == (40, 40, 3)
    assert PAD_UINT8 == (124, 116, 104) and (u8[:lb.pad_y] == PAD_UINT8).all()  # the mean colour, rounded
    inside = slice(lb.pad_y, 40 - lb.pad_y)
    normalised = (u8[inside].astype(np.float32) - np.float32(MEAN)) / np.float32(STD)
    np.testing.assert_allclose(normalised.transpose(2, 0, 1), x[:, inside], atol=1e-6)
    assert model_input(image, (40, 40), uint8=True)[0].tobytes() == u8.tobytes()


def test_the_opencv_resize_is_chosen_not_assumed(monkeypatch):
    import pytest

    import deploy.preprocess as pp

    cv2 = pytest.importorskip("cv2")
    yy, xx = np.mgrid[0:320, 0:240]  # a smooth image: filters differ on noise, not on photographs' gradients
    image = np.stack([yy * 255 // 320, xx * 255 // 240, (yy + xx) * 255 // 560], axis=2).astype(np.uint8)
    pil, _ = letterbox(image, (256, 256))  # the default: PIL, whatever is installed
    monkeypatch.setattr(pp, "resize_backend", "opencv")
    ocv, _ = letterbox(image, (256, 256))
    assert pil.shape == ocv.shape == (256, 192, 3)
    assert np.array_equal(ocv, cv2.resize(image, (192, 256), interpolation=cv2.INTER_LINEAR))  # 0.8x: linear
    assert np.abs(ocv.astype(int) - pil.astype(int)).mean() < 2.0  # a different filter, nearly the same pixels
    small, _ = letterbox(image, (100, 100))  # below half size: area, which averages as PIL does
    assert np.array_equal(small, cv2.resize(image, (75, 100), interpolation=cv2.INTER_AREA))
    monkeypatch.setattr(pp, "resize_backend", "pil")
    assert np.abs(small.astype(int) - letterbox(image, (100, 100))[0].astype(int)).mean() < 2.0
