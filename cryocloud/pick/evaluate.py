"""Scoring picks against ground truth (simulated data or curated annotations)."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def match_picks(picks: np.ndarray, truth: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """For each true position (M, 3): whether a pick (N, 3) lies within `tolerance` (same units),
    and the index of the nearest pick."""
    if len(picks) == 0:
        return np.zeros(len(truth), bool), np.zeros(len(truth), int)
    distance, nearest = cKDTree(picks).query(truth)
    return distance <= tolerance, nearest


def f_beta(picks: np.ndarray, truth: np.ndarray, tolerance: float, beta: float = 4.0) -> dict[str, float]:
    """Precision, recall and F-beta of picks (N, 3) against true positions (M, 3); a true particle
    is found when a pick lies within `tolerance` (beta = 4 weighs recall 16 times precision)."""
    found, _ = match_picks(picks, truth, tolerance)
    tp = int(found.sum())
    precision = tp / len(picks) if len(picks) else 0.0
    recall = tp / len(truth) if len(truth) else 0.0
    f = 0.0 if tp == 0 else (1 + beta**2) * precision * recall / (beta**2 * precision + recall)
    return {"precision": precision, "recall": recall, f"f{beta:g}": f}
