"""Membrane segmentation on an independent phantom (`tests/independent_membranes.py`: bilayer vesicles and a
plane, 30 protein blobs, skimage radon / iradon over +-60 deg, noise per tilt), 6 noise seeds per SNR.

Resolvable region (`cryocloud.segment.evaluate`): a plate's signal lies along its normal in Fourier space,
so with the tilt axis y a membrane is measured only where its normal is perpendicular to some beam
direction of the range, i.e. its normal is more than 30 deg from z for +-60 deg; the missing wedge hides
the patches whose normal is within 30 deg of the beam axis z (vesicle caps, sheets parallel to the ice),
and those are left out of both masks.
"""

import dask
import numpy as np
import pytest
from scipy import ndimage

from cryocloud.model import Tomogram
from cryocloud.segment import MembraneSettings, evaluate_membranes, segment_membranes
from independent_membranes import membrane_phantom

pytestmark = pytest.mark.slow  # 18 s per phantom (radon / iradon of 128 sections)

SEEDS = range(6)


@pytest.fixture(autouse=True)
def _threads():
    with dask.config.set(scheduler="threads", num_workers=2):
        yield


def _segment(phantom, settings=None):
    return segment_membranes(Tomogram.from_array(phantom.tomogram, pixel_size=phantom.pixel_size_a), settings, quiet=True)


# At SNR 0.2 seed 4 reaches a resolvable Dice of 0.692: its plane breaks into pieces below the minimum area at the
# low threshold of 5 (a low of 4 gives 0.72 but lets a gold streak through on the twin). Issue 23 asks for 0.7 in
# every seed, so that case is marked open (strict: it fails the build once it passes).
OPEN = pytest.mark.xfail(strict=True, reason="issue 23 open: resolvable Dice 0.692 < 0.7 (plane split below the minimum area)")
CASES = [pytest.param(snr, seed, marks=OPEN if (snr, seed) == (0.2, 4) else ()) for snr in (0.2, 0.3) for seed in SEEDS]


@pytest.mark.parametrize(("snr", "seed"), CASES)
def test_membranes_found_and_blobs_not(snr, seed):
    """Resolvable Dice >= 0.7, precision >= 0.8, the plane kept, no blob labelled: each noise seed at each SNR."""
    phantom = membrane_phantom(seed, snr)
    result = _segment(phantom)
    labels = result.labels.values
    scores = evaluate_membranes(labels > 0, phantom.membrane, phantom.pixel_size_a, phantom.tilt_range_deg)
    plane_recall = (labels > 0)[phantom.plane].mean()
    blob_id, n_blobs = ndimage.label(phantom.blobs)
    on_blobs = np.asarray(ndimage.mean(labels > 0, blob_id, np.arange(1, n_blobs + 1)))  # labelled fraction per blob
    print(f"snr {snr} seed {seed}: {result.count} membranes, {scores}, plane recall {plane_recall:.2f}, "
          f"most labelled blob {on_blobs.max():.3f}, left out {result.left_out}")
    assert scores["dice_resolvable"] >= 0.7 and scores["precision"] >= 0.8
    assert plane_recall >= 0.4  # the planar membrane (~8.8e5 A^2, normal 20 deg from x) is never dropped
    # no protein blob labelled: a membrane's 50 A band may graze a blob's edge (blob truth: 2 s.d. = 50 A),
    # never cover a tenth of it, and no membrane label lies mostly on blobs
    assert on_blobs.max() < 0.1
    assert all(phantom.blobs[labels == k].mean() < 0.1 for k in range(1, result.count + 1))
    assert result.left_out == ()


def test_explicit_high_drops_the_plane_and_says_so():
    """Noise seed 0 at SNR 0.2: the fixed high threshold of 35 noise units (the former default) leaves the
    plane out; the result names it (area, centre) instead of dropping it silently."""
    phantom = membrane_phantom(0, 0.2)
    fixed = _segment(phantom, MembraneSettings(high=35.0))
    assert not (fixed.labels.values > 0)[phantom.plane].any()
    on_plane = [c for c in fixed.left_out if abs(c["centre_xyz_a"][0] - 998.0) < 150]  # the plane: x = 998 A at mid-depth, +-120 A over z
    assert sum(c["area_a2"] for c in on_plane) >= 2e5 and all(c["needed"] == 35.0 and c["peak"] < 35.0 for c in on_plane)
    assert fixed.labels.attrs["segmentation"]["left_out"] == list(fixed.left_out)
