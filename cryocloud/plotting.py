"""Thread-safe matplotlib figures: `matplotlib.figure.Figure` objects, never pyplot's global state.

Figures are drawn from several threads at once (a batch run draws each series' figures in its own
driver thread); pyplot's figure manager is not thread-safe, a bare `Figure` is (Agg canvas).
"""

from __future__ import annotations

from matplotlib.figure import Figure


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **kwargs):
    """A new `Figure` (size in inches) and its axes, as pyplot.subplots returns them."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)
