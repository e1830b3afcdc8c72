"""What the stages of one run share: the config, the output root, results so far and the summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import IO, Any, Callable

from cryocloud.errors import StoreError
from cryocloud.pipeline.config import PipelineConfig


@dataclass
class RunContext:
    """The config, the output root (a `cryocloud.store.Location`), in-memory results and the summary.

    `summary[stage]` holds the stage's key figures; `summary[stage]["figures"]` maps a figure's
    caption to its path relative to the output root (the report embeds them).
    """

    config: PipelineConfig
    root: Any
    results: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    def url(self, *parts: str) -> str:
        return self.root.child(*parts).url

    def exists(self, *parts: str) -> bool:
        return self.root.child(*parts).exists()

    @property
    def storage_options(self) -> dict | None:
        return self.config.storage_options

    def read_tomogram(self, level: int = 0) -> Any:
        """The tomogram the stages after reconstruct work on, at pyramid `level`: `reconstruct/tomogram.zarr`,
        or the input itself when it is a portal tomogram (`results["input_tomogram"]`, its URL; read
        without the output's storage options, like every portal input)."""
        from cryocloud.store import read_tomogram

        url = self.results.get("input_tomogram")
        if url is not None:
            return read_tomogram(url, level=level)
        return read_tomogram(self.url("reconstruct", "tomogram.zarr"), level=level, storage_options=self.storage_options)

    def figure(self, stage: str, caption: str, *parts: str, draw: Callable[[IO[bytes]], None] | None = None,
               overwrite: bool = False) -> None:
        """Record the PNG at `parts` (relative to the root) as a figure of `stage`; when `draw` is
        given and the file is missing (or `overwrite`), `draw(file)` writes it first."""
        from cryocloud.store import open_url

        if draw is not None and (overwrite or not self.exists(*parts)):
            with open_url(self.url(*parts), "wb", storage_options=self.storage_options) as fh:
                draw(fh)
        self.summary.setdefault(stage, {}).setdefault("figures", {})[caption] = "/".join(parts)


def complete(read: Callable[[], Any]) -> Any | None:
    """The result of `read()` when the stored output is complete, else None (the store writes
    metadata last, so an incomplete image does not read back)."""
    try:
        return read()
    except (StoreError, FileNotFoundError):
        return None
