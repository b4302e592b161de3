"""Small plotting helpers: every figure is written as a PNG (readable offline) and its data
as CSV (for ``dvc plots``)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def histogram_edges(v: np.ndarray, bins: int = 40, log_x: bool = False) -> np.ndarray:
    """Bin edges from ``v.min()`` to ``v.max()`` (``v.max() + 1`` on a log scale), the inner
    ones rounded to :data:`ehrseq.repro.PLOT_DIGITS` significant digits.

    Computed with Python's floats (the C library's ``log10``/``pow``), never ``np.geomspace``:
    NumPy's float64 ``log10``/``power`` have AVX-512 kernels whose last bits differ from the C
    library's, so the committed CSV's edges changed with the CPU (issue 14)."""
    from .repro import round_sig

    if v.size == 0:
        lo, hi = 0.0, 1.0
    else:
        lo, hi = float(v.min()), float(v.max())
    if log_x and v.size and lo > 0:
        hi += 1.0
        a, b = math.log10(lo), math.log10(hi)
        inner = [round_sig(10.0 ** (a + (b - a) * i / bins)) for i in range(1, bins)]
    else:
        if lo == hi:                      # np.histogram's range for constant data
            lo, hi = lo - 0.5, hi + 0.5
        inner = [round_sig(lo + (hi - lo) * i / bins) for i in range(1, bins)]
    return np.unique(np.array([lo, *[x for x in inner if lo < x < hi], hi], dtype=np.float64))


def histogram(values, path_stem: str | Path, title: str, xlabel: str, bins: int = 40,
              log_x: bool = False) -> None:
    """Write ``<stem>.csv`` (bin edges and counts) and ``<stem>.png``; the same CSV bytes on
    every machine (:func:`histogram_edges`)."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    v = np.asarray(values, dtype=float)
    edges = histogram_edges(v, bins, log_x)
    counts, edges = np.histogram(v, bins=edges)
    pd.DataFrame({"bin_start": edges[:-1], "bin_end": edges[1:], "count": counts}).to_csv(
        stem.with_suffix(".csv"), index=False)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    ax.hist(v, bins=edges, color="#4878a8")
    if log_x:
        ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("patients")
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"))
    plt.close(fig)


def training_curves(history: list[dict], path_stem: str | Path) -> None:
    """Per-epoch losses and metrics of a training run: ``<stem>.csv`` and ``<stem>.png``."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(history)
    df.to_csv(stem.with_suffix(".csv"), index=False)
    cols = [c for c in df.columns if c != "epoch" and pd.api.types.is_numeric_dtype(df[c])
            and ("loss" in c or c.startswith("val"))]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    x = df["epoch"] if "epoch" in df else np.arange(len(df))
    for c in cols:
        ax.plot(x, df[c], marker="o", ms=3, label=c)
    ax.set_xlabel("epoch")
    ax.legend(fontsize=8)
    ax.set_title("Training curves")
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"))
    plt.close(fig)


def skipped_figure(text: str, path: str | Path) -> None:
    """A small figure that says why a stage trained nothing (so its plots output exists)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 1.5))
    ax.axis("off")
    ax.text(0.0, 0.5, text, wrap=True, fontsize=8, va="center")
    fig.savefig(path)
    plt.close(fig)
