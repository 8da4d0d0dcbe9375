import numpy as np
import pytest

from deploy.latency import latency_stats, time_calls


def fake_timer(durations_s):
    """A timer whose consecutive start/stop pairs are `durations_s` apart."""
    t, ticks = 0.0, []
    for d in durations_s:
        ticks += [t, t + d]
        t += d + 1.0
    it = iter(ticks)
    return lambda: next(it)


def test_time_calls_warms_up_untimed_then_times_each_call():
    calls = []
    samples = time_calls(lambda: calls.append(1), iters=4, warmup=3, timer=fake_timer([0.010, 0.020, 0.030, 0.040]))
    assert len(calls) == 7
    np.testing.assert_allclose(samples, [10.0, 20.0, 30.0, 40.0])


def test_latency_statistics_against_hand_computed_values():
    # 1..100 ms: mean 50.5, population std sqrt((100^2 - 1) / 12), percentiles by linear interpolation
    stats = latency_stats([float(v) for v in range(100, 0, -1)], batch=4)
    assert stats["mean"] == 50.5 and stats["min"] == 1.0
    assert stats["std"] == pytest.approx(((100**2 - 1) / 12) ** 0.5, abs=1e-4)
    assert stats["p50"] == 50.5 and stats["p90"] == pytest.approx(90.1) and stats["p99"] == pytest.approx(99.01)
    assert stats["throughput_ips"] == pytest.approx(4 * 1000 / 50.5, abs=1e-4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="iters must be at least 1"):
        time_calls(lambda: None, iters=0)
    with pytest.raises(ValueError, match="warmup at least 0, got 5 and -1"):  # was: no warm-up, silently
        time_calls(lambda: None, iters=5, warmup=-1)
    with pytest.raises(ValueError, match="no latency samples"):
        latency_stats([])


def test_latency_takes_the_sample_images_in_turn():
    """NMS time follows each image's candidates: infer, preprocess, postprocess and end-to-end each see
    every sample image in turn, not the first one over and over."""
    from deploy.measure import measure_latency

    class Runner:  # the exported contract, each image's scores marking which image it was
        batch, input_uint8, outputs = 1, False, ("boxes", "scores")

        def __init__(self):
            self.seen = []

        def infer(self, x):
            self.seen.append(round(float(x.mean()), 3))
            boxes = np.tile(np.array([[0.0, 0.0, 8.0, 8.0]], np.float32), (1, 4, 1))
            return {"boxes": boxes, "scores": np.full((1, 4, 2), 0.5, np.float32)}

    images = [np.full((16, 16, 3), v, np.uint8) for v in (10, 120, 240)]
    runner = Runner()
    stats = measure_latency(runner, images, (16, 16), warmup=0, iters=6)
    assert set(stats) == {"infer", "end_to_end", "preprocess", "postprocess"}
    seen = runner.seen[len(images):]  # after the outputs measure_latency computes once per image
    assert len(set(seen[:3])) == 3 and seen[:6] == seen[:3] * 2  # infer: image 1, 2, 3, 1, 2, 3
    assert seen[6:12] == seen[:3] * 2  # end to end: the same images, in the same turn
