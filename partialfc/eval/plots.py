"""PNG plots for evaluation and run reports (matplotlib, headless Agg backend, imported on demand)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def line_plot(
    path: Path,
    series: Sequence[tuple[str, np.ndarray, np.ndarray] | tuple[str, np.ndarray, np.ndarray, np.ndarray]],
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    ylim: tuple[float | None, float | None] | None = None,
) -> Path:
    """One axes with a line per ``(label, x, y)`` or ``(label, x, y, error bar)``; ``ylim`` bounds the
    y axis (rates stop at 1); written atomically to ``path``."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(f"{path}: plots need matplotlib: pip install 'partialfc[eval]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    try:
        for label, x, y, *error in series:
            if error:
                axes.errorbar(x, y, yerr=error[0], marker=".", capsize=3, label=label)
            else:
                axes.plot(x, y, marker="." if len(x) < 40 else None, label=label)
        if ylim is not None:
            axes.set_ylim(*ylim)
        if logx:
            axes.set_xscale("log")
        elif all(np.issubdtype(np.asarray(entry[1]).dtype, np.integer) for entry in series):
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # ranks and steps: no 2.5
        axes.set_title(title)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.grid(True, which="both", alpha=0.3)
        if len(series) > 1 or any(len(entry) == 4 for entry in series):  # an error-bar plot names its sets
            axes.legend()
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        figure.savefig(tmp, format="png")
        tmp.replace(path)
    finally:
        plt.close(figure)
    return path
