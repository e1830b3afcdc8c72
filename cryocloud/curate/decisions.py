"""Accept/reject decisions on a pick list, by index (0-based, the index shown in the gallery).

Written with a gallery: `decisions.csv` with columns index, score, accept (1 for every particle);
a person sets accept to 0 for the particles to drop. Written by automatic curation
(`cryocloud curate auto`): the same columns plus agreement, accept as decided. Read back:
- CSV with columns index and accept (1/0, true/false, yes/no, accept/reject): listed particles as
  decided, unlisted ones rejected; a CSV with an index column only lists the accepted ones;
- JSON {"accept": [indices]} (only those kept) or {"reject": [indices]} (all others kept).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd

from cryocloud.errors import ModelError
from cryocloud.model import Particles
from cryocloud.store.textfiles import read_text

TRUE = {"1", "true", "yes", "y", "accept", "accepted", "keep"}
FALSE = {"0", "false", "no", "n", "reject", "rejected", "drop"}


def decisions_csv(
    particles: Particles, order: np.ndarray | None = None, *, accepted: np.ndarray | None = None, agreement: np.ndarray | None = None
) -> str:
    """The decisions file, rows in `order` (default: input order): every particle accepted (the
    template a person edits), or as in the (N,) mask `accepted` (automatic curation), with an
    agreement column when given."""
    n = len(particles)
    order = np.arange(n) if order is None else np.asarray(order)
    table = pd.DataFrame({"index": order, "score": particles.scores[order]})
    if agreement is not None:
        table["agreement"] = np.asarray(agreement)[order]
    table["accept"] = 1 if accepted is None else np.asarray(accepted, dtype=bool)[order].astype(int)
    return table.to_csv(index=False)


def _indices(values, n: int, source: str, field: str) -> np.ndarray:
    try:
        idx = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ModelError(field, f"expected integer particle indices, got {values!r}", source=source) from None
    if idx.size and (np.any(idx != np.round(idx)) or idx.min() < 0 or idx.max() >= n):
        raise ModelError(field, f"expected integer indices in 0..{n - 1} (the pick list has {n} particles)", source=source)
    return idx.astype(np.int64)


def _flag(value, source: str, row: int) -> bool:
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ModelError("accept", f"row {row}: expected 1/0, true/false, yes/no or accept/reject, got {value!r}", source=source)


def parse_decisions(text: str, n: int, *, source: str = "decisions") -> np.ndarray:
    """Accepted mask (n,) bool from decisions text (JSON or CSV, see module docstring)."""
    accepted = np.zeros(n, dtype=bool)
    if text.lstrip().startswith("{"):
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError("accept", f"is not valid JSON: {exc}", source=source) from exc
        keys = [k for k in ("accept", "reject") if k in document]
        if len(keys) != 1:
            raise ModelError("accept", 'expected exactly one of the keys "accept" or "reject" (lists of indices)', source=source)
        idx = _indices(document[keys[0]], n, source, keys[0])
        accepted[:] = keys[0] == "reject"
        accepted[idx] = keys[0] == "accept"
        return accepted
    try:
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as exc:
        raise ModelError("index", f"is not a readable CSV: {exc}", source=source) from exc
    if "index" not in table:
        raise ModelError("index", "column is missing (particle indices as shown in the gallery)", source=source)
    idx = _indices(table["index"].to_numpy(), n, source, "index")
    flags = [_flag(v, source, row) for row, v in enumerate(table["accept"], start=2)] if "accept" in table else [True] * len(idx)
    accepted[idx] = flags
    return accepted


def apply_decisions(particles: Particles, url: str, *, storage_options: dict | None = None) -> Particles:
    """The accepted particles, in their original order."""
    loc, text = read_text(url, storage_options=storage_options)
    return particles.subset(parse_decisions(text, len(particles), source=loc.url))
