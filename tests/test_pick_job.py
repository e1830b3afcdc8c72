"""One template-matching job for the CLI, the pipeline and Python: `cryocloud match` + `extract-peaks` on
the pipeline's own tomogram, template, tilt series, half tomograms and fiducials pick what the `cryocloud
run` match + peaks stages pick; one rule for which template file is a map."""

import json

import mrcfile
import numpy as np
import pytest

from cryocloud.cli import main
from cryocloud.errors import ModelError
from cryocloud.pick.job import MatchJob, PeaksJob, ScoreMaps, validated
from cryocloud.pick.template import read_template
from cryocloud.pipeline import PipelineConfig, run_pipeline
from cryocloud.store import is_atomic_model, read_particles_csv
from test_pick_match import _synthetic

CONFIG = dict(
    simulate={"preset": "toy", "overrides": {"n_particles": 6, "seed": 2, "frames_per_tilt": 2, "fiducials": {"count": 2, "diameter_a": 160.0}}},
    stages=["simulate", "align", "reconstruct", "match", "peaks"],
    align={"refine": "none", "estimate_axis": False},
    match={"angular_increment_deg": 45.0, "subvolume": 64},
    peaks={"fiducial_sigma": 8.0, "n_false": None, "number": 6},  # the toy's 21 tilts leave its gold at ~13 robust s.d.
)


@pytest.mark.slow
def test_cli_match_and_extract_peaks_pick_what_the_pipeline_picks(tmp_path):
    out = tmp_path / "run"
    summary = run_pipeline(PipelineConfig(output=str(out), report=False, **CONFIG))
    assert summary["match"]["whitening"] == "noise of the even/odd halves" and summary["peaks"]["fiducial_voxels"] > 0
    stage = json.loads((out / "match" / "match.json").read_text())
    tomogram, even, odd = (str(out / "reconstruct" / f"{name}.zarr") for name in ("tomogram", "even", "odd"))
    assert main(["match", tomogram, stage["template"], str(tmp_path / "tm"), "--level", "1", "--tilt-series",
                 str(out / "align" / "tilt_series.zarr"), "--whiten-halves", even, odd, "--angular-increment", "45", "--subvolume", "64"]) == 0
    cli = json.loads((tmp_path / "tm" / "match.json").read_text())
    assert cli["search_id"] == stage["search_id"]  # the same template, rotations, weights and settings
    assert main(["extract-peaks", str(tmp_path / "tm"), str(tmp_path / "picks.csv"), "--avoid-fiducials", tomogram, "--fiducial-sigma", "8",
                 "--n-false", "0", "--number", "6", "--no-figures"]) == 0
    picked = read_particles_csv(str(tmp_path / "picks.csv")).positions
    expected = read_particles_csv(str(out / "peaks" / "particles.csv")).positions
    assert len(expected) == summary["peaks"]["n_picks"] > 0 and len(picked) == len(expected)
    voxel = stage["voxel_size"]
    assert voxel == 20.0 and np.max(np.min(np.linalg.norm(picked[:, None] - expected[None], axis=2), axis=1)) < 0.5 * voxel
    # level 1 of a 10 A tomogram: voxel centres at 5 A + 20 A steps, the picks there too
    np.testing.assert_allclose((picked - 5.0) % voxel, 0.0, atol=1e-3)


@pytest.mark.slow
def test_python_job_picks_the_pasted_particles():
    tomo, template, positions, rotations = _synthetic()
    job = MatchJob(subvolume=64, ctf="none")
    result = job.run(tomo, template, rotations=rotations)
    picks, threshold = PeaksJob(n_false=None, number=4).run(ScoreMaps.of(result, template))
    assert threshold is None and len(picks) == 4
    found = picks.positions[:, ::-1] / 21.0
    assert all(np.min(np.linalg.norm(found - p, axis=1)) < 0.5 for p in positions)


def test_one_rule_for_template_files_and_validated_options(tmp_path):
    assert is_atomic_model("7p6z.CIF") and is_atomic_model("s3://b/x.pdb.GZ") and is_atomic_model("m.ent")
    assert not is_atomic_model("map.MRC") and not is_atomic_model("t.em") and not is_atomic_model("cif.mrc")
    volume = np.zeros((8, 8, 8), np.float32)
    volume[3:5, 3:5, 3:5] = 1.0
    with mrcfile.new(tmp_path / "T.MRC") as f:  # upper case: a map, never given to the atomic-model reader
        f.set_data(volume)
        f.voxel_size = 12.0
    read, px = read_template(str(tmp_path / "T.MRC"), 10.0)
    assert px == pytest.approx(12.0) and np.array_equal(read, volume)
    with pytest.raises(ModelError, match="field 'ctf'"):
        validated(MatchJob, {"ctf": "phase"})
    with pytest.raises(ModelError, match="angular_increment_deg"):
        validated(MatchJob, {"angular_increment_deg": "120"})
    assert validated(MatchJob, {"angular_increment_deg": "crowther"}).angular_increment_deg == "crowther"
    assert PipelineConfig(match={"whiten": False}).match.whiten == "none"  # older configs' flag
