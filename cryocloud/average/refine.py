"""Gold-standard refinement: two independent half sets aligned and averaged separately, FSC between them.

Particles are split into halves once, at the start (random, seeded) and never mixed: each half is
aligned against its own reference (the half's average, or the given starting reference) and
averaged on its own. After every iteration the FSC of the half maps gives the resolution (0.143);
both references are then low-passed there for the next alignment (a number shared between the
halves, not data). The final map is the sum of the half spectra.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from cryocloud.average.align import Poses, SearchSettings, Wedges, align, average_spectra, map_from_spectra
from cryocloud.average.fsc import FscCurve, fsc
from cryocloud.pick.template import spherical_mask


@dataclass(frozen=True)
class RefineResult:
    """Half maps (2, b, b, b), the full `average`, refined `poses`, `half` (N,) 0/1, the half-map
    `fsc` (masked with `mask`), `resolution_a` at 0.143 and its `history` per iteration."""

    half_maps: np.ndarray
    average: np.ndarray
    poses: Poses
    half: np.ndarray
    fsc: FscCurve
    resolution_a: float
    history: list[float]
    mask: np.ndarray


def split_halves(n: int, seed: int = 0) -> np.ndarray:
    """Random half assignment (N,) of 0 and 1, sizes differing by at most one."""
    half = np.zeros(n, dtype=np.int64)
    half[np.random.default_rng(seed).permutation(n)[n // 2 :]] = 1
    return half


def refine(
    subvolumes: np.ndarray,
    pixel_size_a: float,
    wedges: Wedges,
    initial: Poses,
    settings: SearchSettings,
    *,
    iterations: int = 2,
    reference: np.ndarray | None = None,
    half: np.ndarray | None = None,
    mask_radius_a: float | None = None,
    seed: int = 0,
) -> RefineResult:
    """Iterate align -> average on two independent halves; see the module docstring."""
    n, box = subvolumes.shape[0], subvolumes.shape[1]
    half = split_halves(n, seed) if half is None else np.asarray(half)
    radius = 0.45 * box - 2 if mask_radius_a is None else mask_radius_a / pixel_size_a
    mask = spherical_mask(box, radius, 3.0)
    poses = initial
    sums = [None, None]

    def half_map(h):
        sel = half == h
        sums[h] = average_spectra(subvolumes[sel], poses.subset(sel), pixel_size_a, wedges.subset(sel), symmetry=settings.symmetry)
        return map_from_spectra(*sums[h], box)

    refs = [reference, reference] if reference is not None else [half_map(0), half_map(1)]
    history = []
    lowpass_a = settings.lowpass_a
    for _ in range(iterations):
        new_rot, new_shift, new_score = poses.rotations.copy(), poses.shifts_a.copy(), poses.scores.copy()
        for h in (0, 1):
            sel = np.flatnonzero(half == h)
            found = align(subvolumes[sel], refs[h], pixel_size_a, wedges.subset(sel), poses.subset(sel), replace(settings, lowpass_a=lowpass_a), mask=mask)
            new_rot[sel], new_shift[sel], new_score[sel] = found.rotations, found.shifts_a, found.scores
        poses = Poses(new_rot, new_shift, new_score)
        refs = [half_map(0), half_map(1)]
        curve = fsc(refs[0], refs[1], pixel_size_a, mask)
        history.append(curve.resolution())
        lowpass_a = max(history[-1], 2.2 * pixel_size_a)
    curve = fsc(refs[0], refs[1], pixel_size_a, mask)
    full = map_from_spectra(sums[0][0] + sums[1][0], sums[0][1] + sums[1][1], box)
    return RefineResult(np.stack(refs), full, poses, half, curve, curve.resolution(), history, mask)
