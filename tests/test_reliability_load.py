"""Load: a batch of 16 small tilt series (`cryocloud run` on a prefix, batch mode, 8 in flight) on a local
cluster of 2 worker processes with a memory limit each completes: every series done, no worker lost
or restarted, and the peak resident memory of every worker (psutil, sampled every 0.2 s through a
second client) stays under its limit. The measured peak is printed for RELIABILITY.md."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import yaml
from distributed import Client, LocalCluster

from cryocloud.cli import main
from cryocloud.model import TiltSeries
from cryocloud.store import read_tomogram, write_tilt_series

N_SERIES = 16
MEMORY_LIMIT = 768 * 2**20


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


class PeakMemory:
    """Samples every worker's resident memory in a background thread; `peak` per worker (bytes)."""

    def __init__(self, address: str, interval_s: float = 0.2):
        self.client = Client(address, set_as_default=False)
        self.interval_s = interval_s
        self.peak: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for worker, rss in self.client.run(_rss).items():
                self.peak[worker] = max(self.peak.get(worker, 0), rss)
            self.samples += 1
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.client.close()


@pytest.mark.slow
def test_batch_of_16_tilt_series_under_worker_memory_limit(tmp_path):
    angles = np.arange(-60.0, 61.0, 10.0)
    folder = tmp_path / "in"
    rng = np.random.default_rng(4)
    for i in range(N_SERIES):
        images = rng.normal(size=(angles.size, 64, 64)).astype(np.float32)
        write_tilt_series(TiltSeries.from_array(images, tilt_angles=angles, pixel_size=8.0), str(folder / f"ts_{i:02d}.zarr"), levels=1)
    out = tmp_path / "out"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit=MEMORY_LIMIT, dashboard_address=":0") as cluster:
        config = tmp_path / "batch.yaml"
        config.write_text(yaml.safe_dump({
            "input": str(folder), "output": str(out), "stages": ["reconstruct"], "reconstruct": {"thickness_px": 32},
            "batch": {"max_concurrent": 8}, "cluster": {"kind": "address", "address": cluster.scheduler_address},
        }))
        workers_before = set(cluster.scheduler_info["workers"])
        with PeakMemory(cluster.scheduler_address) as memory:
            assert main(["run", str(config)]) == 0
        workers_after = set(cluster.scheduler_info["workers"])
    batch = json.loads((out / "batch_summary.json").read_text())
    assert len(batch["series"]) == N_SERIES and all(s["status"] == "done" for s in batch["series"].values())
    for name in batch["series"]:
        assert read_tomogram(str(out / name / "reconstruct" / "tomogram.zarr")).shape == (32, 64, 64)
    assert workers_after == workers_before  # no worker died, was restarted or paused to death
    assert memory.samples >= 5 and len(memory.peak) == 2
    peak = max(memory.peak.values())
    print(f"\npeak worker memory {peak / 2**20:.0f} MiB of a {MEMORY_LIMIT / 2**20:.0f} MiB limit "
          f"({100 * peak / MEMORY_LIMIT:.0f} %), {memory.samples} samples")
    assert peak < MEMORY_LIMIT
