"""`cryocloud align` end to end on a small simulated tilt series in a local folder."""

from __future__ import annotations

import numpy as np
import pytest

from cryocloud.cli import main
from cryocloud.geometry import alignment_from_xf
from cryocloud.simulate import SimulationConfig, simulate
from cryocloud.store import read_tilt_series, write_tilt_series
from cryocloud.store.tiltfiles import read_tlt, read_xf

pytestmark = pytest.mark.slow  # integration: runs the CLI, the pipeline or a notebook end to end


def test_align_command_writes_metadata_xf_tlt_and_figure(tmp_path):
    cfg = SimulationConfig(shape_zyx=(32, 128, 128), pixel_size_a=10.0, n_particles=10, tilt_axis_angle_deg=10.0, shift_sigma_a=30.0, seed=3)
    raw_url, out_url = str(tmp_path / "raw.zarr"), str(tmp_path / "aligned.zarr")
    write_tilt_series(simulate(cfg).tilt_series, raw_url)
    args = ["align", raw_url, out_url, "--refine", "none", "--fixed-axis", "--axis-angle", "10"]
    assert main(args) == 0
    aligned = read_tilt_series(out_url)
    assert aligned.tilt_axis_angle == 10.0
    shifts = np.stack([aligned.per_tilt("shift_x"), aligned.per_tilt("shift_y")], axis=1)
    assert np.all(np.isfinite(shifts)) and np.abs(shifts).max() > 0
    xf = read_xf(str(tmp_path / "aligned.xf"))
    for row, s in zip(xf, shifts / cfg.pixel_size_a):
        axis, shift = alignment_from_xf(row)
        assert abs(axis - 10.0) < 1e-4 and np.allclose(shift, s, atol=2e-3)
    np.testing.assert_allclose(read_tlt(str(tmp_path / "aligned.tlt")), aligned.tilt_angles, atol=1e-4)
    assert (tmp_path / "aligned_residuals.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(args) == 2  # outputs exist: refused without --overwrite
    assert main(args + ["--overwrite"]) == 0
    assert main(["align", raw_url, str(tmp_path / "x.zarr"), "--refine", "bogus"]) == 2
