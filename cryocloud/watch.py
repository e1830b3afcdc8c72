"""Live processing: follow a folder or bucket prefix where a microscope writes movies and mdoc files.

Each poll lists the prefix. A movie (MRC/TIFF) named by an mdoc's SubFramePath is motion-corrected
by one cluster task as soon as its size stops changing between two polls (a file still being
written is left for the next poll); its sum is stored at once as
`OUTPUT/<series>/motion/tilts/<movie>.mrc`. A tilt series (one mdoc; SerialEM appends a section
per tilt) is complete when every section's movie is corrected and either it has
`tilts_per_series` sections or its mdoc has not changed for `quiet_s` seconds. Then its sums
become `OUTPUT/<series>/motion/tilt_series.zarr` (the motion stage's layout) and the rest of the
pipeline (`cryocloud.pipeline.run_series`: align, reconstruct, and match/peaks if configured)
runs in a background thread while the next series' movies are being corrected.

The watcher stops after `max_series` series are processed or after `timeout_s`; it writes
`OUTPUT/watch_summary.json` with the times (s since the start) each tilt was corrected and each
series finished.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


from cryocloud.errors import CryocloudError, StoreError
from cryocloud.pipeline.batch import series_name
from cryocloud.pipeline.config import PipelineConfig
from cryocloud.pipeline.config import MotionParams
from cryocloud.pipeline.movies import CorrectedMovie, checked_params, correct_movie, mdoc_pixel_size, tilt_exposures, warn_fixed_pattern, write_motion
from cryocloud.preprocess.movies import MOVIE_SUFFIXES, movie_url
from cryocloud.store import Location, open_url, parse_mdoc, resolve, write_mrc
from cryocloud.store.mdoc import Mdoc

log = logging.getLogger(__name__)

#: stages run on a completed series when the config names none
WATCH_STAGES = ("align", "reconstruct")


@dataclass(frozen=True)
class WatchSettings:
    """poll_s: seconds between listings; quiet_s: an mdoc unchanged this long ends its series;
    tilts_per_series: or a series ends at this many sections; max_series / timeout_s: when to stop."""

    poll_s: float = 2.0
    quiet_s: float = 60.0
    tilts_per_series: int | None = None
    max_series: int | None = None
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.poll_s <= 0 or self.quiet_s <= 0:
            raise CryocloudError(f"watch: poll and quiet periods must be > 0 s, got {self.poll_s} and {self.quiet_s}")
        if self.max_series is None and self.timeout_s is None:
            raise CryocloudError("watch: give max_series or timeout_s so the watcher stops")


@dataclass
class _Series:
    name: str
    mdoc_url: str
    mdoc: Mdoc | None = None
    mdoc_size: int = -1
    changed_at: float = 0.0
    corrected: dict[str, CorrectedMovie] = field(default_factory=dict)  # movie URL -> its sums and shifts
    params: MotionParams | None = None  # the motion settings with the mdoc's gain, checked against its first movie
    tilt_times: dict[str, float] = field(default_factory=dict)
    state: str = "collecting"  # collecting -> processing -> done | failed
    result: Future | None = None
    complete_at: float | None = None
    finished_at: float | None = None
    error: str | None = None


class Watcher:
    """The watch loop (see module docstring); `run()` returns the watch summary."""

    def __init__(self, input_url: str, output_url: str, config: PipelineConfig, settings: WatchSettings, client: Any):
        self.input = resolve(input_url, config.storage_options)
        self.fs = self.input.filesystem()  # one filesystem for every listing and mdoc read (S3 clients are costly)
        self.output = resolve(output_url, config.storage_options)
        self.config = config
        self.settings = settings
        self.client = client
        self.series: dict[str, _Series] = {}
        self.sizes: dict[str, int] = {}  # movie URL -> size at the last poll
        self.pending: dict[str, tuple[_Series, Future]] = {}  # movie URL -> its motion-correction task
        self.start = time.monotonic()
        self.pool = ThreadPoolExecutor(max_workers=config.batch.max_concurrent, thread_name_prefix="watch-series")

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def _listing(self) -> dict[str, int]:
        fs = self.fs
        fs.invalidate_cache()
        if not fs.isdir(self.input.path):
            if self.input.is_local:
                raise StoreError(self.input.url, "is not a folder to watch")
            return {}  # a bucket prefix exists once the microscope writes its first object
        return {self.input.child(posixpath.basename(info["name"].rstrip("/"))).url: int(info.get("size") or 0)
                for info in fs.ls(self.input.path, detail=True) if info.get("type") != "directory"}

    def _update_mdoc(self, s: _Series, size: int) -> None:
        if size == s.mdoc_size:
            return
        try:
            text = self.fs.cat_file(resolve(s.mdoc_url, self.input.storage_options).path).decode("utf-8", errors="replace")
            s.mdoc = parse_mdoc(text, source=s.mdoc_url)
        except OSError:  # being written or replaced (StoreError is one too): read it again at the next poll
            return
        s.mdoc_size, s.changed_at = size, self.elapsed()

    def _movie_path(self, s: _Series, movie: str) -> Location:
        return self.output.child(s.name, "motion", "tilts", posixpath.splitext(posixpath.basename(movie))[0] + ".mrc")

    def _submit_movies(self, s: _Series, listing: dict[str, int]) -> None:
        px = mdoc_pixel_size(s.mdoc, self.config.motion)
        for i, sub in enumerate(s.mdoc.sub_frame_path):
            url = movie_url(self.input.url, sub)
            if url in s.corrected or url in self.pending or url not in listing:
                continue
            if self.sizes.get(url) != listing[url] or listing[url] == 0:
                continue  # still growing (or just appeared): wait for a stable size
            if s.params is None:  # the gain and defect map are read and checked once per series
                s.params = checked_params(self.config.motion, s.mdoc, self.input.url, self.input.storage_options)
            exposure = tilt_exposures(s.mdoc, s.params)[i] if s.params.dose_weight_frames else None
            future = self.client.submit(correct_movie, url, px, s.params, self.input.storage_options, exposure,
                                        s.mdoc.voltage_kv or 300.0, pure=False)
            self.pending[url] = (s, future)

    def _collect(self) -> None:
        for url, (s, future) in list(self.pending.items()):
            if not future.done():
                continue
            del self.pending[url]
            try:
                movie = future.result()
            except Exception as exc:  # an unreadable movie fails its series, not the watch
                s.state, s.error, s.finished_at = "failed", f"{posixpath.basename(url)}: {type(exc).__name__}: {exc}", round(self.elapsed(), 3)
                log.error("%s: %s", s.name, s.error)
                continue
            write_mrc(movie.total[None], self._movie_path(s, url).url, pixel_size=mdoc_pixel_size(s.mdoc, self.config.motion),
                      overwrite=True, storage_options=self.output.storage_options)
            warn_fixed_pattern([movie], [posixpath.basename(url)])
            s.corrected[url] = movie
            s.tilt_times[posixpath.basename(url)] = round(self.elapsed(), 3)
            log.info("%s: corrected %s (%d of %d)", s.name, posixpath.basename(url), len(s.corrected), s.mdoc.n_tilts)

    def _complete(self, s: _Series) -> bool:
        if s.mdoc is None or len(s.corrected) < s.mdoc.n_tilts:
            return False
        urls = [movie_url(self.input.url, sub) for sub in s.mdoc.sub_frame_path]
        if not all(u in s.corrected for u in urls):
            return False
        wanted = self.settings.tilts_per_series
        return (wanted is not None and s.mdoc.n_tilts >= wanted) or self.elapsed() - s.changed_at >= self.settings.quiet_s

    def _process(self, s: _Series) -> dict:
        from cryocloud.pipeline.run import run_series

        corrected = [s.corrected[movie_url(self.input.url, sub)] for sub in s.mdoc.sub_frame_path]
        root = self.output.child(s.name)
        write_motion(root, s.mdoc, corrected, self.config.motion)
        stages = list(WATCH_STAGES if self.config.stages is None else self.config.stages)
        series = self.config.model_copy(update={"input": s.mdoc_url, "inputs": None, "output": root.url, "stages": ["motion", *stages]})
        return run_series(series, label=s.name)

    def poll(self) -> None:
        listing = self._listing()
        for url, size in listing.items():
            if url.lower().endswith(".mdoc"):
                name = series_name(url)
                s = self.series.setdefault(name, _Series(name, url, changed_at=self.elapsed()))
                if s.state == "collecting":
                    self._update_mdoc(s, size)
        self._collect()
        for s in self.series.values():
            if s.state != "collecting" or s.mdoc is None:
                continue
            try:
                self._submit_movies(s, listing)
            except CryocloudError as exc:  # e.g. its gain does not fit its movies: the series fails, the watch goes on
                s.state, s.error, s.finished_at = "failed", str(exc), round(self.elapsed(), 3)
                log.error("%s: %s", s.name, s.error)
                continue
            if self._complete(s):
                s.state, s.complete_at = "processing", round(self.elapsed(), 3)
                print(f"[watch] {s.name}: {len(s.corrected)} tilts corrected at {self.elapsed():.1f} s; reconstructing")
                s.result = self.pool.submit(self._process, s)
        for s in self.series.values():
            if s.state == "processing" and s.result.done():
                s.finished_at = round(self.elapsed(), 3)
                try:
                    s.result.result()
                    s.state = "done"
                except Exception as exc:  # one series failing must not stop the watch
                    s.state, s.error = "failed", f"{type(exc).__name__}: {exc}"
                    log.error("%s: %s", s.name, s.error)
                print(f"[watch] {s.name}: {s.state} at {s.finished_at:.1f} s")
        self.sizes = {u: n for u, n in listing.items() if u.lower().endswith(MOVIE_SUFFIXES)}

    def _finished(self) -> bool:
        ended = sum(s.state in ("done", "failed") for s in self.series.values())
        return self.settings.max_series is not None and ended >= self.settings.max_series

    def run(self) -> dict:
        try:
            while not self._finished():
                if self.settings.timeout_s is not None and self.elapsed() > self.settings.timeout_s:
                    print(f"[watch] timeout after {self.settings.timeout_s:g} s")
                    break
                self.poll()
                if not self._finished():
                    time.sleep(self.settings.poll_s)
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
        return self.summary()

    def summary(self) -> dict:
        out = {"input": self.input.url, "seconds": round(self.elapsed(), 3), "series": {
            s.name: {"mdoc": s.mdoc_url, "state": s.state, "n_tilts": 0 if s.mdoc is None else s.mdoc.n_tilts,
                     "n_corrected": len(s.corrected), "tilt_corrected_at_s": s.tilt_times, "complete_at_s": s.complete_at,
                     "finished_at_s": s.finished_at,
                     **({"error": s.error} if s.error else {})}
            for s in self.series.values()}}
        with open_url(self.output.child("watch_summary.json").url, "w", storage_options=self.output.storage_options) as fh:
            json.dump(out, fh, indent=2)
        return out


def watch(input_url: str, output_url: str, config: PipelineConfig, settings: WatchSettings, client: Any) -> dict:
    """Follow `input_url` and process tilt series into `output_url` as they are collected (see module)."""
    return Watcher(input_url, output_url, config, settings, client).run()
