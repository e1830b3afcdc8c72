"""Atomic models (mmCIF / PDB) read with gemmi into `cryocloud.atomic.AtomicModel`; the bundled ribosome 7P6Z."""

from __future__ import annotations

from pathlib import Path

import gemmi
import numpy as np

from cryocloud.atomic import AtomicModel
from cryocloud.errors import StoreError

BUNDLED_STRUCTURE = Path(__file__).resolve().parent.parent / "structures" / "7p6z.cif.gz"  # provenance beside it


def read_atomic_model(path: str | Path | None = None) -> AtomicModel:
    """Read the first model of an mmCIF / PDB file (None: the bundled ribosome 7P6Z).

    Waters are dropped, hydrogens ignored. Coordinates are centred on the atoms' centroid.
    """
    path = BUNDLED_STRUCTURE if path is None else Path(path)
    try:
        st = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError, OSError) as exc:
        raise StoreError(str(path), f"cannot read the atomic model (mmCIF or PDB expected): {exc}") from exc
    if len(st) == 0:
        raise StoreError(str(path), "holds no model", field="models")
    st.remove_waters()
    st.remove_hydrogens()
    xyz, elements, mass = [], [], 0.0
    for chain in st[0]:
        for residue in chain:
            for atom in residue:
                xyz.append(atom.pos.tolist())
                elements.append(atom.element.name)
                mass += atom.element.weight * atom.occ
    if not xyz:
        raise StoreError(str(path), "holds no atoms", field="atoms")
    coords = np.asarray(xyz, dtype=np.float64)
    name = path.name.split(".")[0]
    return AtomicModel(name, coords - coords.mean(axis=0), np.asarray(elements), mass)
