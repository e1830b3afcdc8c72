import numpy as np
import pytest

from cryocloud.pick.evaluate import f_beta, match_picks


def test_f_beta_counts_picks_within_tolerance():
    truth = np.array([[0.0, 0, 0], [100, 0, 0], [0, 100, 0], [0, 0, 100]])
    picks = np.array([[1.0, 0, 0], [100, 3, 0], [50, 50, 50]])  # 2 hits, 1 false pick, 2 missed
    s = f_beta(picks, truth, tolerance=5.0)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(0.5)
    assert s["f4"] == pytest.approx(17 * (2 / 3) * 0.5 / (16 * (2 / 3) + 0.5))
    found, nearest = match_picks(picks, truth, 5.0)
    assert found.tolist() == [True, True, False, False] and nearest[:2].tolist() == [0, 1]
    assert f_beta(np.zeros((0, 3)), truth, 5.0)["f4"] == 0.0
