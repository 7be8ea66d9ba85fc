"""FpsSampler on a variable-frame-rate video: frames picked by the time they are shown."""

import numpy as np
import pytest

from spool.video.samplers import FpsSampler


def test_fps_sampler_follows_timestamps_of_a_vfr_video():
    """Defect: from the average rate alone, a VFR video shown at 0, .1, .15, .5, .51, 1.2 s
    sampled at 2 fps gave the frames shown at 0, .15, .51 s instead of those at 0, .5, 1 s."""
    ts = np.array([0, 0.1, 0.15, 0.5, 0.51, 1.2]) + 3.0  # a start time, too
    fps = 5 / 1.2
    assert FpsSampler(2)(6, fps) == [[0, 2, 4]]  # the constant-rate assumption
    assert FpsSampler(2)(6, fps, timestamps=ts) == [[0, 3, 4]]


@pytest.mark.parametrize("fps,target,n", [(30, 10, 31), (25, 8, 50), (24000 / 1001, 6, 97),
                                          (10, 25, 7), (8, 8, 1)])
def test_fps_sampler_constant_rate_timestamps_agree_with_index_rule(fps, target, n):
    ts = np.arange(n) / fps + 1.5
    assert FpsSampler(target)(n, fps, timestamps=ts) == FpsSampler(target)(n, fps)


def test_fps_sampler_rejects_bad_timestamps():
    with pytest.raises(ValueError, match="timestamps"):
        FpsSampler(2)(3, 10, timestamps=[0, 0.2, 0.1])
    with pytest.raises(ValueError, match="timestamps"):
        FpsSampler(2)(3, 10, timestamps=[0, 0.1])
