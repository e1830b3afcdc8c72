"""Benchmark `reconstruct`: our weighted back-projection against astra-toolbox's CPU FBP.

Data: analytic projections of Gaussian blobs (tests/recon_phantom.py), so both programs see the
same exact tilt series and are scored against the same ground truth. Timings, side by side in
one run, each on one core: ours with one numba thread through the public lazy API (synchronous
Dask scheduler), ASTRA's CPU FBP (ram-lak, linear projector) slice by slice, and
scikit-image's iradon on a subset of slices, extrapolated. Then our scaling from one to two
single-threaded workers of a distributed LocalCluster reading the tilt series from OME-Zarr.

`astra_fbp` maps ASTRA's conventions onto ours (checked with a point in
tests/test_reconstruct_astra.py): ASTRA angle = -tilt; volume rows are z with row nz // 2 at the
origin (ASTRA's world y = maxy - (row + 0.5)); columns are x with column nx // 2 at the origin;
an even detector gets one zero pixel appended so that ASTRA's detector centre is pixel nx // 2.
"""

from __future__ import annotations

import os
import tempfile
import time

import numba
import numpy as np

from cryocloud.model import TiltSeries
from cryocloud.reconstruct import reconstruct
from tests.recon_phantom import blob_projections, blob_volume, fully_seen, random_blobs

PEER = "astra-toolbox cpu FBP"


def astra_fbp(projections: np.ndarray, tilt_angles_deg, thickness_px: int) -> np.ndarray:
    """ASTRA CPU FBP (ram-lak) of projections (tilt, y, x), one XZ slice at a time -> (z, y, x)."""
    import astra

    n_t, ny, nx = projections.shape
    nz = int(thickness_px)
    n_det = nx + 1 - nx % 2
    minx = -(nx // 2) - 0.5
    maxy = nz // 2 + 0.5
    vol_geom = astra.create_vol_geom(nz, nx, minx, minx + nx, maxy - nz, maxy)
    proj_geom = astra.create_proj_geom("parallel", 1.0, n_det, -np.deg2rad(np.asarray(tilt_angles_deg, np.float64)))
    projector = astra.create_projector("linear", proj_geom, vol_geom)
    sino = np.zeros((n_t, n_det), np.float32)
    sino_id = astra.data2d.create("-sino", proj_geom, sino)
    rec_id = astra.data2d.create("-vol", vol_geom)
    cfg = astra.astra_dict("FBP")
    cfg.update(ProjectorId=projector, ProjectionDataId=sino_id, ReconstructionDataId=rec_id, FilterType="ram-lak")
    alg = astra.algorithm.create(cfg)
    out = np.empty((nz, ny, nx), np.float32)
    try:
        for y in range(ny):
            sino[:, :nx] = projections[:, y, :]
            astra.data2d.store(sino_id, sino)
            astra.algorithm.run(alg)
            out[:, y, :] = astra.data2d.get_shared(rec_id)
    finally:
        astra.algorithm.delete(alg)
        astra.data2d.delete([sino_id, rec_id])
        astra.projector.delete(projector)
    return out


def _iradon_seconds(projections: np.ndarray, tilt_angles_deg, n_slices: int) -> float:
    """Seconds per slice of scikit-image's iradon (ramp filter) over `n_slices` slices."""
    from skimage.transform import iradon

    ny = projections.shape[1]
    rows = np.linspace(0, ny - 1, n_slices).astype(int)
    start = time.perf_counter()
    for y in rows:
        iradon(projections[:, y, :].T, theta=np.asarray(tilt_angles_deg), filter_name="ramp", circle=False)
    return (time.perf_counter() - start) / n_slices


def _scores(rec: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict:
    """Correlation with the truth, RMS error / truth SD raw and after a least-squares a*rec + b."""
    r, g = rec[mask].astype(np.float64), truth[mask].astype(np.float64)
    design = np.column_stack([r, np.ones_like(r)])
    coef, *_ = np.linalg.lstsq(design, g, rcond=None)
    sd = g.std()
    return {
        "r_truth": float(np.corrcoef(r, g)[0, 1]),
        "rmse_truth": float(np.sqrt(np.mean((r - g) ** 2)) / sd),
        "rmse_truth_fitted": float(np.sqrt(np.mean((design @ coef - g) ** 2)) / sd),
    }


def _n_tasks(dask_scheduler=None) -> int:
    return len(dask_scheduler.tasks)


def _worker_cpu_s(client) -> float:
    """CPU seconds used so far by all the worker processes of `client`'s cluster."""
    return float(sum(client.run(time.process_time).values()))


def _scaling(ts: TiltSeries, thickness: int, slab_rows: int | None) -> dict:
    """Seconds to reconstruct with 1 and 2 single-threaded workers, input from OME-Zarr.

    The workers' CPU seconds are recorded with each time: on a machine that others load, the
    wall-clock scaling reflects how much CPU the workers got. cpu_share_N = CPU s / (N x wall s)
    is the fraction of N cores the workers had (a 2-worker scaling measured with cpu_share_2 well
    below 1 says more about the machine's load than about the reconstruction).
    """
    from distributed import Client, LocalCluster, wait

    from cryocloud.store import read_tilt_series, write_tilt_series

    os.environ["NUMBA_NUM_THREADS"] = "1"  # inherited by the worker processes
    seconds, cpu_s = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        url = os.path.join(tmp, "ts.zarr")
        write_tilt_series(ts, url, levels=1)
        stored = read_tilt_series(url)
        for n in (1, 2):
            with LocalCluster(n_workers=n, threads_per_worker=1, processes=True) as cluster, Client(cluster) as client:
                best = (np.inf, np.nan)
                for _ in range(7):  # best of 7: the first run also loads numba's cache in the workers
                    vol = reconstruct(stored, thickness_px=thickness, slab_rows=slab_rows).data.data
                    cpu, start = _worker_cpu_s(client), time.perf_counter()
                    done = client.persist(vol)
                    wait(done)
                    best = min(best, (time.perf_counter() - start, _worker_cpu_s(client) - cpu))
                    client.cancel(done)
                    del done, vol
                    while client.run_on_scheduler(_n_tasks):  # same keys next run: wait until released
                        time.sleep(0.05)
                seconds[n], cpu_s[n] = best
    return {
        "workers_1_s": seconds[1],
        "workers_2_s": seconds[2],
        "scaling_1_to_2": seconds[1] / seconds[2],
        "workers_1_cpu_s": cpu_s[1],
        "workers_2_cpu_s": cpu_s[2],
        "cpu_share_1": cpu_s[1] / seconds[1],
        "cpu_share_2": cpu_s[2] / (2 * seconds[2]),
        "load_average_1min": os.getloadavg()[0],  # other processes on the machine distort the scaling
    }


def run(quick: bool = False) -> dict:
    """Run the benchmark; quick=True uses a 128 x 128 x 64 volume from 41 tilts (slabs: the default)."""
    if quick:
        (nz, ny, nx), angles, n_blobs, slab = (64, 128, 128), np.linspace(-60, 60, 41), 40, None
    else:
        (nz, ny, nx), angles, n_blobs, slab = (256, 512, 512), np.linspace(-60, 60, 61), 300, None
    shape = (nz, ny, nx)
    blobs = random_blobs(shape, n_blobs, seed=0)
    projections = blob_projections(blobs, (ny, nx), angles)
    truth = blob_volume(blobs, shape)
    mask = np.broadcast_to(fully_seen(shape, angles), shape)
    ts = TiltSeries.from_array(projections, tilt_angles=angles, pixel_size=1.0)

    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        reconstruct(ts, thickness_px=nz, slab_rows=8).data[:, :8].compute(scheduler="synchronous")  # warm-up
        start, cpu = time.perf_counter(), time.process_time()
        ours = reconstruct(ts, thickness_px=nz, slab_rows=slab).data.data.compute(scheduler="synchronous")
        ours_s, ours_cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        numba.set_num_threads(threads)

    start, cpu = time.perf_counter(), time.process_time()
    peer = astra_fbp(projections, angles, nz)
    peer_s, peer_cpu = time.perf_counter() - start, time.process_time() - cpu

    skimage_s = _iradon_seconds(projections, angles, 4 if quick else 8) * ny
    ours_scores, peer_scores = _scores(ours, truth, mask), _scores(peer, truth, mask)
    result = {
        "name": "reconstruct",
        "volume_zyx": list(shape),
        "n_tilts": int(angles.size),
        "ours_s": ours_s,
        "ours_cpu_s": ours_cpu,
        "peer": PEER,
        "peer_s": peer_s,
        "peer_cpu_s": peer_cpu,
        "ratio": peer_s / ours_s,
        "r_ours_vs_peer": float(np.corrcoef(ours[mask], peer[mask])[0, 1]),
        "ours": ours_scores,
        "peer_scores": peer_scores,
        "skimage_iradon_s": skimage_s,
        "skimage_ratio": skimage_s / ours_s,
        "skimage_note": "iradon reconstructs a square nx x nx slice; time extrapolated from a few slices",
    }
    result.update(_scaling(ts, nz, slab))
    return result


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run("--quick" in sys.argv), indent=2))
