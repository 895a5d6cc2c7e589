"""PNG plots for evaluation and run reports (matplotlib, headless Agg backend, imported on demand)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def line_plot(
    path: Path,
    series: Sequence[tuple[str, np.ndarray, np.ndarray]],
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
) -> Path:
    """One axes with a line per ``(label, x, y)``; written atomically to ``path``."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(f"{path}: plots need matplotlib: pip install 'partialfc[eval]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    try:
        for label, x, y in series:
            axes.plot(x, y, marker="." if len(x) < 40 else None, label=label)
        if logx:
            axes.set_xscale("log")
        elif all(np.issubdtype(np.asarray(x).dtype, np.integer) for _, x, _ in series):
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # ranks and steps: no 2.5
        axes.set_title(title)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.grid(True, which="both", alpha=0.3)
        if len(series) > 1:
            axes.legend()
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        figure.savefig(tmp, format="png")
        tmp.replace(path)
    finally:
        plt.close(figure)
    return path
