"""Inputs are never written: no output may equal, contain or lie inside an input.

One rule for every command and pipeline stage, checked twice:

- up front, by the entry point (`refuse_input_overlap`, called by each CLI command through
  `cryocloud.cli.options.guarded` and by the pipeline for its configured inputs), before anything is
  computed or created;
- at the store edge: `protect(inputs)` marks the inputs of the running command (a context variable, so
  threads and nested calls see it), and `Location.require_writable`, which every write path calls before
  it creates, replaces or deletes anything, refuses a location that overlaps one of them.

URLs are compared resolved (local paths absolute with symlinks followed, `s3a://` as `s3://`, repeated
slashes collapsed); `--overwrite` never lifts the rule. The one exception is NGFF's own: a command that
writes label images (`labels=True`) may write under `IMAGE/labels/` of an input image, which leaves the
image's data and metadata untouched. Entry points turn URLs into `Location`s with
`cryocloud.store.location.resolve_all`.
"""

from __future__ import annotations

import contextvars
import os
import posixpath
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from cryocloud.errors import InputOverlapError

LABELS_GROUP = "labels"


@dataclass(frozen=True)
class ProtectedInput:
    """An input of the running command: `protocol` and normalised `path` (as `Location`'s);
    `labels_allowed`: label images may be written under its `labels/` group."""

    protocol: str
    path: str
    labels_allowed: bool = False

    @property
    def url(self) -> str:
        return self.path if self.protocol == "file" else f"{self.protocol}://{self.path}"


_PROTECTED: contextvars.ContextVar[tuple[ProtectedInput, ...]] = contextvars.ContextVar("cryocloud_protected_inputs", default=())


def _normalised(location) -> tuple[str, str]:
    """(protocol, path) of a `Location` with repeated and trailing slashes removed."""
    path = location.path
    if location.protocol == "file":
        return "file", os.path.normpath(path)
    return location.protocol, posixpath.normpath("/" + path).lstrip("/")


def protected_inputs(inputs: Iterable, *, labels: bool = False) -> list[ProtectedInput]:
    """The input `Location`s as `ProtectedInput`s."""
    return [ProtectedInput(*_normalised(loc), labels) for loc in inputs]


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def overlap(output, protected: ProtectedInput) -> str | None:
    """How the location `output` overlaps a protected input ('is', 'lies inside', 'holds'), or None."""
    protocol, path = _normalised(output)
    if protocol != protected.protocol:
        return None
    if path == protected.path:
        return "is"
    if _inside(path, protected.path):
        relative = path[len(protected.path.rstrip("/")) + 1:]
        if protected.labels_allowed and relative.split("/", 1)[0] == LABELS_GROUP and "/" in relative:
            return None
        return "lies inside"
    if _inside(protected.path, path):
        return "holds"
    return None


def refuse(output, inputs: Iterable[ProtectedInput]) -> None:
    """InputOverlapError (a StoreError on field 'output') when the location `output` overlaps one of `inputs`."""
    for protected in inputs:
        relation = overlap(output, protected)
        if relation is not None:
            raise InputOverlapError(
                output.url,
                f"{relation} the input {protected.url}: a command never writes onto, inside or over its own input "
                "(--overwrite does not change that); choose an output outside it",
                field="output",
            )


def refuse_input_overlap(outputs: Iterable, inputs: Iterable, *, labels: bool = False) -> None:
    """Check output `Location`s against input `Location`s before any work starts."""
    protected = protected_inputs(inputs, labels=labels)
    for output in outputs:
        refuse(output, protected)


def refuse_protected(output) -> None:
    """Refuse the location `output` when it overlaps an input marked by `protect` (the store edge's check)."""
    refuse(output, _PROTECTED.get())


@contextmanager
def protect(inputs: Iterable, *, labels: bool = False) -> Iterator[list[ProtectedInput]]:
    """Mark the input `Location`s as never to be written for the length of a with-block (nested blocks add up)."""
    added = protected_inputs(inputs, labels=labels)
    token = _PROTECTED.set(_PROTECTED.get() + tuple(added))
    try:
        yield added
    finally:
        _PROTECTED.reset(token)
