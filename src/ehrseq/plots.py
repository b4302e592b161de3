"""Small plotting helpers: every figure is written as a PNG (readable offline) and its data
as CSV (for ``dvc plots``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def histogram(values, path_stem: str | Path, title: str, xlabel: str, bins: int = 40,
              log_x: bool = False) -> None:
    """Write ``<stem>.csv`` (bin edges and counts) and ``<stem>.png``."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    v = np.asarray(values, dtype=float)
    if log_x and v.size and v.min() > 0:
        edges = np.unique(np.geomspace(v.min(), v.max() + 1, bins + 1))
    else:
        edges = bins
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
