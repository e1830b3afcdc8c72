"""Exceptions users see. Each message names the source (file or URL), the field and what was expected.

The CLI turns a `CryocloudError` into a one-line message and a non-zero exit, without a traceback.
"""

from __future__ import annotations


class CryocloudError(Exception):
    """Base class of every error caused by the user's input or environment, not by a bug."""


class ModelError(CryocloudError, ValueError):
    """Inconsistent or incomplete data-model input (shapes, coordinates, units)."""

    def __init__(self, field: str, problem: str, *, source: str | None = None):
        self.field = field
        self.problem = problem
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}field '{field}': {problem}")


class StoreError(CryocloudError, OSError):
    """Unreadable, missing or malformed stored data (OME-Zarr, MRC, mdoc, ...)."""

    def __init__(self, source: str, problem: str, *, field: str | None = None):
        self.source = source
        self.field = field
        self.problem = problem
        what = f" field '{field}':" if field else ""
        super().__init__(f"{source}:{what} {problem}")


class OutputExistsError(CryocloudError, FileExistsError):
    """Refusing to overwrite existing data (inputs are never overwritten; use overwrite=True)."""


class ResourceError(CryocloudError):
    """A computation needs more of a cluster resource (memory per worker) than the cluster gives it.

    The message names the stage, what one task needs, the limit, and what to change.
    """

    def __init__(self, stage: str, problem: str):
        self.stage = stage
        self.problem = problem
        super().__init__(f"{stage}: {problem}")


class InputOverlapError(StoreError, OutputExistsError):
    """An output that is, holds or lies inside an input (`cryocloud.store.guard`): never written."""
