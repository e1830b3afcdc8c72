"""`cryocloud segment membranes` end to end, and NGFF label images in cryocloud.store."""

import dask
import numpy as np
import pytest
import zarr

from cryocloud.cli import main
from cryocloud.errors import StoreError
from cryocloud.model import Tomogram
from cryocloud.reconstruct import reconstruct
from cryocloud.segment import evaluate_membranes
from cryocloud.simulate import MembraneConfig, SimulationConfig, simulate
from cryocloud.store import read_mrc, read_tomogram, write_tomogram
from cryocloud.store.labels import read_labels, write_labels
from cryocloud.store.ngff import open_image
from cryocloud.store.location import resolve

pytestmark = pytest.mark.slow  # integration: runs the CLI, the pipeline or a notebook end to end


@pytest.fixture(scope="module")
def twin_tomogram(tmp_path_factory):
    """A small vesicle twin (48 x 96 x 96 voxels of 10 A, 41 tilts, realistic dose) written as OME-Zarr."""
    with dask.config.set(scheduler="threads", num_workers=2):
        sim = simulate(SimulationConfig(shape_zyx=(48, 96, 96), pixel_size_a=10.0, n_particles=0, seed=5,
                                        membranes=MembraneConfig(vesicles=2, vesicle_radius_a=(150.0, 220.0))))
        tomo = reconstruct(sim.tilt_series, thickness_px=48)
        url = str(tmp_path_factory.mktemp("seg") / "tomo.zarr")
        write_tomogram(tomo, url, chunks=(48, 48, 48), levels=2)
        truth = sim.truth.labels.data.values == 2
    return url, truth


def test_labels_inside_image_with_mrc_mask_and_overlay(twin_tomogram, tmp_path):
    url, truth = twin_tomogram
    before = dict(zarr.open_group(url, mode="r").attrs)
    out = f"{url}/labels/membranes"
    mask_url = str(tmp_path / "mask.mrc")
    assert main(["segment", "membranes", url, out, "--mrc", mask_url, "--chunk", "48"]) == 0

    # NGFF 0.4 label image of the tomogram: validated by ome-zarr-models, listed in labels/, image untouched
    from ome_zarr_models.v04 import ImageLabel, Labels

    root = zarr.open_group(url, mode="r")
    assert dict(root.attrs) == before
    assert Labels.from_zarr(root["labels"]).attributes.labels == ["membranes"]
    label_group = root["labels/membranes"]
    ImageLabel.from_zarr(label_group)
    assert label_group.attrs["image-label"]["source"] == {"image": "../../"}
    image, labels_image = open_image(resolve(url)), open_image(resolve(out))
    assert labels_image.n_levels == image.n_levels
    for level in range(image.n_levels):
        assert labels_image.zarr_array(level).shape == image.zarr_array(level).shape
        assert labels_image.transforms[level] == image.transforms[level]
    assert np.issubdtype(labels_image.zarr_array(0).dtype, np.integer)
    assert label_group.attrs["cryocloud_labels"]["parameters"]["membranes"] >= 1

    labels = read_labels(out)
    mask = read_mrc(mask_url)
    np.testing.assert_array_equal(mask.data.values.astype(bool), labels.values > 0)
    assert mask.pixel_size == pytest.approx(10.0)
    scores = evaluate_membranes(labels, truth, 10.0)
    print(scores)
    assert scores["dice_resolvable"] >= 0.85 and scores["dice"] >= 0.8  # measured 0.89 / 0.83
    assert resolve(url[: -len(".zarr")] + "_membranes_overlay.png").exists()

    # existing outputs are refused (exit 2), before any work
    assert main(["segment", "membranes", url, out]) == 2
    assert main(["segment", "membranes", url, str(tmp_path / "other.zarr"), "--mrc", mask_url]) == 2


def test_bad_inputs_exit_2(tmp_path, capsys):
    assert main(["segment", "membranes", str(tmp_path / "missing.zarr"), str(tmp_path / "out.zarr")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.mrc"
    bad.write_bytes(b"not an mrc file")
    assert main(["segment", "membranes", str(bad), str(tmp_path / "out.zarr")]) == 2
    assert "MRC" in capsys.readouterr().err
    assert main(["segment", "membranes", str(bad), str(tmp_path / "out.zarr"), "--low", "5", "--high", "2"]) == 2
    assert "low" in capsys.readouterr().err
    assert main(["segment", "membranes", str(bad), str(tmp_path / "out.zarr"), "--polarity", "sideways"]) == 2


def test_standalone_labels_on_s3(twin_tomogram, s3_bucket):
    """Standalone labels on S3, with --complete-vesicles (tilt angles from the tomogram's metadata):
    both vesicles closed across the missing wedge."""
    url, truth = twin_tomogram
    bucket, options = s3_bucket
    out = f"{bucket}/seg/membranes.zarr"
    endpoint = ["--endpoint-url", options["endpoint_url"]]
    assert main(["segment", "membranes", url, out, "--chunk", "48", "--complete-vesicles", *endpoint]) == 0
    labels = read_labels(out, storage_options=options)
    assert labels.shape == read_tomogram(url).shape and (labels.values > 0).any()
    scores = evaluate_membranes(labels, truth, 10.0)
    print(scores)
    assert scores["dice"] >= 0.85 and scores["recall"] >= 0.9
    assert "source" not in open_image(resolve(out, options)).attrs["image-label"]
    assert resolve(f"{bucket}/seg/membranes_overlay.png", options).exists()


def test_write_labels_pyramid_keeps_thin_labels_and_checks_shape(tmp_path):
    image_url = str(tmp_path / "img.zarr")
    write_tomogram(Tomogram.from_array(np.zeros((16, 16, 16), np.float32), pixel_size=5.0), image_url, levels=3)
    labels = np.zeros((16, 16, 16), np.uint16)
    labels[5, :, :] = 3  # a one-voxel sheet: mean pooling would round it away at level 1
    write_labels(labels, f"{image_url}/labels/sheet")
    level1 = read_labels(f"{image_url}/labels/sheet", level=1).values
    assert set(np.unique(level1)) == {0, 3} and (level1[2] == 3).all()
    write_labels(labels.astype(bool), f"{image_url}/labels/second")
    assert zarr.open_group(image_url, mode="r")["labels"].attrs["labels"] == ["sheet", "second"]
    with pytest.raises(StoreError, match="do not match"):
        write_labels(labels[:8], f"{image_url}/labels/wrong")
    with pytest.raises(StoreError, match="integers"):
        write_labels(labels.astype(np.float32), f"{image_url}/labels/float")
    with pytest.raises(StoreError, match="image-label"):
        read_labels(image_url)



def test_write_labels_refuses_a_labels_list_that_is_not_a_list(tmp_path):
    image_url = str(tmp_path / "img.zarr")
    write_tomogram(Tomogram.from_array(np.zeros((8, 8, 8), np.float32), pixel_size=5.0), image_url, levels=1)
    zarr.open_group(f"{image_url}/labels", mode="a", zarr_format=2).attrs["labels"] = "sheet"  # a string, not a list
    with pytest.raises(StoreError, match="attribute 'labels' is 'sheet'; expected a list"):
        write_labels(np.zeros((8, 8, 8), np.uint16), f"{image_url}/labels/second")
