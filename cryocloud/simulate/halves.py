"""Even/odd reconstructions of the digital twin, with its ground-truth volume, for evaluation.

Chain: `cryocloud.simulate` (movie frames) -> `cryocloud.preprocess.motion.motion_correct` (even-
and odd-frame sums) -> `cryocloud.reconstruct.reconstruct` (one tomogram per half). The twin is
simulated without tilt-axis rotation and without stage shifts, so the reconstructions lie on the
truth's voxel grid. Everything is lazy.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryocloud.denoise.deconv import DEFOCUS_ATTR
from cryocloud.errors import ModelError
from cryocloud.model import Tomogram
from cryocloud.preprocess.motion import motion_correct
from cryocloud.reconstruct import reconstruct
from cryocloud.simulate import SimulationConfig, SimulationResult, simulate


@dataclass(frozen=True)
class SimulatedHalves:
    """Even and odd reconstructions (z, y, x), the truth volume on the same grid, the simulation."""

    even: Tomogram
    odd: Tomogram
    truth: Tomogram
    simulation: SimulationResult

    @property
    def full(self) -> Tomogram:
        """The reconstruction from all frames (even + odd), lazy."""
        return self.even.with_data(self.even.data.data + self.odd.data.data)


def simulated_halves(cfg: SimulationConfig) -> SimulatedHalves:
    """Simulate `cfg` (movies needed: frames_per_tilt >= 2) and reconstruct its even and odd halves."""
    if cfg.frames_per_tilt < 2:
        raise ModelError("frames_per_tilt", f"even/odd halves need at least 2 movie frames per tilt, got {cfg.frames_per_tilt}")
    if cfg.tilt_axis_angle_deg or cfg.shift_sigma_a:
        raise ModelError("tilt_axis_angle_deg", "the evaluation twin must be simulated already aligned (no axis angle, no shifts)")
    sim = simulate(cfg)
    motion = motion_correct(sim.frames)
    nz = cfg.shape_zyx[0]
    even = reconstruct(motion.even, thickness_px=nz, halves="even")
    odd = reconstruct(motion.odd, thickness_px=nz, halves="odd")
    defocus = float(sim.truth.defocus_u_a.mean() + sim.truth.defocus_v_a.mean()) / 2
    for half in (even, odd):
        half.data.attrs[DEFOCUS_ATTR] = defocus
    return SimulatedHalves(even, odd, sim.volume, sim)
