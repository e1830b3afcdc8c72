"""What every command shares: fsspec storage options from its flags, and the declaration of its inputs and
outputs (`guarded`).

`--endpoint-url` points at an S3-compatible endpoint; `--anon` reads public buckets without
credentials. Writes never go anonymous: public data are read-only.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Sequence, Union

from cryocloud.store.guard import protect, refuse_input_overlap
from cryocloud.store.location import resolve_all


def storage_options(endpoint_url: str | None, *, anon: bool = False) -> dict | None:
    """Storage options for one location, or None when no flag was given."""
    options: dict = {}
    if endpoint_url:
        options["endpoint_url"] = endpoint_url
    if anon:
        options["anon"] = True
    return options or None


def read_write_options(endpoint_url: str | None, anon: bool) -> tuple[dict | None, dict | None]:
    """(read, write) storage options: reads may be anonymous, writes use credentials."""
    return storage_options(endpoint_url, anon=anon), storage_options(endpoint_url)


Selector = Union[str, Callable[[dict], Any]]


def _selected(arguments: dict, selectors: Sequence[Selector]) -> list:
    return [s(arguments) if callable(s) else arguments[s] for s in selectors]


def guarded(*, inputs: Sequence[Selector] = (), outputs: Sequence[Selector] = (), labels: bool = False) -> Callable:
    """Declare a command's input and output URLs (parameter names, or functions of the bound arguments for
    e.g. the last of a list) so that no output is, holds or lies inside an input (`cryocloud.store.guard`).

    Before the command runs, its outputs are checked against its inputs (StoreError, exit 2, nothing
    written); while it runs, its inputs are protected at the store edge, so a write the declaration
    does not name (a figure beside the output, a file the stage chooses) is refused as well. `labels`:
    label images may go under an input image's `labels/` group. Every command carries the declaration
    (`command.cryocloud_io`), read-only ones too, so the tests can check that none is missing.
    """

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command)
        named = {s for s in (*inputs, *outputs) if isinstance(s, str)}
        if named - set(signature.parameters):
            raise TypeError(f"{command.__name__}: no parameter named {sorted(named - set(signature.parameters))}")

        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            options = storage_options(bound.arguments.get("endpoint_url"))
            ins = resolve_all(_selected(bound.arguments, inputs), options)
            refuse_input_overlap(resolve_all(_selected(bound.arguments, outputs), options), ins, labels=labels)
            with protect(ins, labels=labels):
                return command(*args, **kwargs)

        run.cryocloud_io = {"inputs": tuple(inputs), "outputs": tuple(outputs), "labels": labels}
        return run

    return decorate
