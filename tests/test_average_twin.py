"""Subtomogram averaging on the digital twin, scaled down (`benchmarks.average_twin` runs 500 particles).

Ribosomes simulated in a tilt series at a realistic dose (3 e/A^2 per tilt, 41 tilts, Poisson
noise, ice), cut out of the tilt images, aligned from perturbed true poses with the gold-standard
refinement and reconstructed from the tilt images: at 16 A pixels with 36 particles the average's
FSC against the true map must cross 0.143 within 2.5 pixels, the half-map resolution must agree
with it within 20 %, and the alignment must improve the orientations it started from.
"""

from __future__ import annotations

import pytest

from benchmarks.average_twin import measure

pytestmark = pytest.mark.slow  # integration: runs the CLI, the pipeline or a notebook end to end


def test_twin_average_reaches_the_truth_resolution_with_gold_standard():
    out = measure(36, per_series=36, shape_zyx=(32, 160, 160), pixel_size_a=16.0, box=20, iterations=1)
    assert out["n"] == 36
    assert out["fsc_truth_0143_A"] <= 2.5 * 16.0
    assert out["half_map_0143_A"] == pytest.approx(out["fsc_truth_0143_A"], rel=0.2)
    assert out["median_angle_error_deg"] < out["start_median_angle_error_deg"]
