"""The benchmark runner (`python -m benchmarks NAME`) and the s3-read benchmark in quick mode."""

from __future__ import annotations

import json

from benchmarks.__main__ import main
import pytest

pytestmark = pytest.mark.slow  # integration: runs the CLI, the pipeline or a notebook end to end


def test_s3_read_quick_prints_one_json_line_with_ratio_and_equal_results(capsys):
    assert main(["s3-read", "--quick"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert result["name"] == "s3-read"
    assert abs(result["ratio"] - result["peer_s"] / result["ours_s"]) < 0.01 * result["ratio"] + 2e-3
    assert result["ours_s"] > 0 and result["peer_s"] > 0
    assert result["ours_max_abs_error"] == 0.0 and result["peer_max_abs_error"] == 0.0 and result["ours_equals_peer"]
    assert result["ours_auto_max_abs_error"] == 0.0


def test_unknown_benchmark_is_a_user_error(capsys):
    assert main(["no-such-benchmark"]) == 2
    assert "benchmarks/no_such_benchmark.py" in capsys.readouterr().err
