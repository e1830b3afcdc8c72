"""Execute notebooks/tilt_schemes.ipynb: it runs without errors, asserts its own measurements, plots."""

from pathlib import Path

import nbclient
import nbformat
import pytest

pytestmark = pytest.mark.slow  # integration: runs the CLI, the pipeline or a notebook end to end

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "tilt_schemes.ipynb"


def test_tilt_schemes_notebook_executes(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "dose-symmetric  first 7 tilts: [0.0, 3.0, -3.0, -6.0, 6.0, 9.0, -9.0]" in text
    assert "largest difference between measured and predicted attenuation" in text
    figures = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(figures) == 4
