"""Accuracy on the digital twin: drift at 0.5 e/A^2 per frame, defocus at 3 e/A^2 per tilt."""

import numpy as np
import pytest

from cryocloud.preprocess.ctf_estimate import estimate_ctf
from cryocloud.preprocess.motion import motion_correct
from cryocloud.simulate import SimulationConfig, simulate

pytestmark = pytest.mark.slow  # simulates and reconstructs the digital twin

PX = 4.0


@pytest.fixture(scope="module")
def simulated():
    cfg = SimulationConfig(
        shape_zyx=(64, 256, 256), pixel_size_a=PX, n_particles=10, frames_per_tilt=6, dose_per_tilt=3.0, drift_a=20.0,
        defocus_a=30000.0, astigmatism_a=1000.0, astigmatism_angle_deg=30.0, tilt_axis_angle_deg=85.0,
        tilt_min=-12.0, tilt_max=12.0, tilt_step=12.0, seed=3,
    )
    result = simulate(cfg)
    frames = result.frames.with_data(result.frames.data.data.compute())
    return result, motion_correct(frames, bfactor_a2=150.0)


def test_drift_recovered_within_half_a_pixel_at_half_an_electron_per_frame(simulated):
    result, motion = simulated
    assert result.config.dose_per_tilt / result.config.frames_per_tilt == pytest.approx(0.5)
    est = motion.shifts.values
    truth = result.truth.drift_xy_a
    err = (est - est.mean(axis=1, keepdims=True)) - (truth - truth.mean(axis=1, keepdims=True))
    rms_px = np.sqrt(np.mean(np.sum(err**2, axis=-1), axis=1)) / PX
    drift_px = np.sqrt(np.mean(np.sum((truth - truth.mean(axis=1, keepdims=True)) ** 2, axis=-1), axis=1)) / PX
    assert np.all(drift_px > 1.0)  # there is drift to recover
    assert np.all(rms_px < 0.5), rms_px


def test_defocus_within_100_nm_at_low_tilt_on_motion_corrected_sums(simulated):
    result, motion = simulated
    fitted = estimate_ctf(motion.sum.with_data(motion.sum.data.data.compute()), box=256).table
    mean_fit = 0.5 * (fitted["defocus_u"] + fitted["defocus_v"])
    mean_true = 0.5 * (result.truth.defocus_u_a + result.truth.defocus_v_a)
    low = np.abs(fitted["tilt_angle"].to_numpy()) <= 15
    assert low.sum() == 3
    errors = np.abs(mean_fit.to_numpy() - mean_true)[low]
    assert np.all(errors < 1000.0), errors
