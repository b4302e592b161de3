"""The label-efficiency curve (docs/learning_curves.md), scored by the ``evaluate`` stage.

The ``curve_*`` stages train every family again on nested seeded subsets of ``curve.labelled``
training patients (one subset per replicate of ``curve.replicates``) and write their test
predictions under ``data/predictions/curve/<stage>/n<N>_r<R>/``; the main run is the point
with every labelled training patient. Here each point is scored on the full test split with
the risk score and the patient bootstrap of every other model
(:mod:`ehrseq.evaluate.survival`):

- per family and ``n``: Harrell's C averaged over the replicates, its 95% interval (test
  patients resampled, the same resamples for every replicate and family), and the replicates'
  range;
- per comparison (every neural family against the best count model, every pre-trained BEHRT
  mode against BEHRT from scratch) and ``n``: the paired ΔC with its interval;
- the **crossover**: the smallest ``n`` from which the first family stays ahead (ΔC > 0 at
  that ``n`` and every larger one, the main run included), or "none in range"; and the same
  with the interval above 0 (``crossover_significant``).

Families: ``cox``, ``best_count`` (the count model that the ``baselines`` stage chose on
that point's validation split), ``lstm``, ``med2vec`` and ``behrt_<mode>``.

Cost of every point: its training's wall seconds (every lr that tuning tried), its trained
parameters, and for the pre-trained families (``behrt_full``/``lora``/``probe``, ``med2vec``)
the pre-training run's seconds, paid once for every ``n``; in USD at ``report.gpu_hourly_usd``
where the run was on CUDA, CPU seconds otherwise. ``learning_curve_cost.png`` plots C against
that cost.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..data.runs import CURVE
from . import survival
from .scoring import Outcomes, gpu_cost, run_info, run_seconds

POINT = re.compile(r"n(\d+)_r(\d+)")
NEURAL = ("lstm", "med2vec", "behrt_full", "behrt_lora", "behrt_probe", "behrt_scratch")
PRETRAINED_BY = {"behrt_full": "behrt", "behrt_lora": "behrt", "behrt_probe": "behrt",
                 "med2vec": "med2vec"}
"""Curve family -> the pre-training run (a key of ``pretrain``) whose weights it starts from."""


def family(name: str, info: dict) -> list[str]:
    """The curve families a prediction file belongs to (a count model may be ``best_count``)."""
    out = [name] if name == "cox" or name in NEURAL else []
    if info.get("best_count"):
        out.append("best_count")
    return out


def point_of(path: Path) -> tuple[int, int] | None:
    m = POINT.fullmatch(path.parent.name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def collect(curve_files: list[Path], main_files: dict[str, Path], n_all: int
            ) -> dict[str, dict[int, dict[int, Path]]]:
    """family -> n -> replicate -> prediction file; the main run is ``n_all``, replicate 0."""
    grid: dict = defaultdict(lambda: defaultdict(dict))
    for f in curve_files:
        pt = point_of(f)
        if pt is None:
            continue
        for fam in family(f.stem, run_info(f)):
            grid[fam][pt[0]][pt[1]] = f
    for name, f in main_files.items():
        for fam in family(name, run_info(f)):
            if fam in grid:              # only families that have a curve
                grid[fam][n_all][0] = f
    return grid


def _boot_c(f: Path, o: Outcomes, h: float, w: np.ndarray) -> np.ndarray:
    with np.load(f, allow_pickle=False) as z:
        pos = o.align(f, z)
        surv, times = z["surv"][pos].astype(float), z["times"].astype(float)
    risk = survival.risk_score(surv, times, h)
    return survival._harrell_boot(o.duration, o.event.astype(bool), risk, w)


def comparisons(families) -> list[tuple[str, str]]:
    pairs = [(a, "best_count") for a in NEURAL if a in families]
    pairs += [(a, "behrt_scratch") for a in NEURAL
              if a.startswith("behrt_") and a != "behrt_scratch" and a in families]
    return [(a, b) for a, b in pairs if b in families]


def crossover(ns: list[int], ahead: list[bool]) -> int | str:
    """The smallest n from which ``ahead`` holds at it and at every larger n."""
    best: int | str = "none in range"
    for n, ok in sorted(zip(ns, ahead, strict=True), reverse=True):
        if not ok:
            break
        best = n
    return best


def point_cost(fam: str, infos: list[dict], pretrain: dict[str, dict], hourly_usd: float
               ) -> dict:
    """A point's cost, averaged over its replicates: training seconds (every lr tried),
    pre-training seconds (``pretrain``: run statistics by run, see :data:`PRETRAINED_BY`),
    trained parameters, GPU cost in USD (0 off CUDA) and the device type."""
    pre = pretrain.get(PRETRAINED_BY.get(fam, ""), {})
    seconds = float(np.mean([run_seconds(i) for i in infos]))
    pre_s = run_seconds(pre) if pre else 0.0
    trainable = [i["n_params_trainable"] for i in infos if "n_params_trainable" in i]
    devices = sorted({str(i.get("device_type", "unknown")) for i in infos} |
                     ({str(pre.get("device_type", "unknown"))} if pre else set()))
    return {"compute_seconds": seconds, "pretrain_seconds": pre_s,
            "total_seconds": seconds + pre_s,
            "n_params_trainable": int(np.mean(trainable)) if trainable else None,
            "gpu_cost_usd": float(np.mean([gpu_cost(i, hourly_usd) for i in infos]))
            + (gpu_cost(pre, hourly_usd) if pre else 0.0),
            "device_type": "+".join(devices)}


def score_curve(curve_files: list[Path], main_files: dict[str, Path], outcomes_dir,
                horizons, n_boot: int, seed: int, n_all: int,
                pretrain: dict[str, dict] | None = None, hourly_usd: float = 0.0
                ) -> tuple[dict, list[dict]]:
    """(flat metrics for metrics/learning_curve.json, long rows for the plot/CSV)."""
    o = Outcomes.load(outcomes_dir)
    h = o.reference_horizon(horizons)
    w = survival.bootstrap_weights(len(o.duration), n_boot, seed, o.groups)
    grid = collect(curve_files, main_files, n_all)
    m: dict = {"curve.n_all": n_all, "curve.risk_horizon": h}
    rows: list[dict] = []
    boots: dict = {}
    for fam, by_n in sorted(grid.items()):
        for n, reps in sorted(by_n.items()):
            per = np.stack([_boot_c(f, o, h, w) for _, f in sorted(reps.items())])
            boots[fam, n] = per.mean(0)
            lo, hi = survival._interval(boots[fam, n][1:]) if n_boot else (math.nan, math.nan)
            infos = [run_info(f) for f in reps.values()]
            secs = [i["train_seconds"] for i in infos if i.get("train_seconds") is not None]
            cost = point_cost(fam, infos, pretrain or {}, hourly_usd)
            key = f"curve.{fam}.n{n}"
            m.update({f"{key}.c_harrell": float(boots[fam, n][0]), f"{key}.c_harrell_lo": lo,
                      f"{key}.c_harrell_hi": hi, f"{key}.replicates": len(reps),
                      f"{key}.c_min": float(per[:, 0].min()),
                      f"{key}.c_max": float(per[:, 0].max()),
                      f"{key}.train_seconds": float(np.mean(secs)) if secs else None,
                      **{f"{key}.{k}": v for k, v in cost.items()}})
            rows.append({"family": fam, "labelled": n, "c_harrell": float(boots[fam, n][0]),
                         "lo": lo, "hi": hi, "replicates": len(reps), **cost})
    for a, b in comparisons(grid):
        ns = sorted(set(grid[a]) & set(grid[b]))
        ahead, sure = [], []
        for n in ns:
            d = boots[a, n] - boots[b, n]
            lo, hi = survival._interval(d[1:]) if n_boot else (math.nan, math.nan)
            key = f"curve.delta.{a}-{b}.n{n}"
            m.update({f"{key}.delta": float(d[0]), f"{key}.lo": lo, f"{key}.hi": hi})
            ahead.append(bool(d[0] > 0))
            sure.append(bool(lo > 0))
        m[f"curve.crossover.{a}-{b}"] = crossover(ns, ahead)
        m[f"curve.crossover_significant.{a}-{b}"] = crossover(ns, sure)
    return m, rows


def plot_curve(rows: list[dict], path: Path, title: str) -> None:
    """Harrell's C (95% interval) against labelled training patients, one line per family."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for fam in sorted({r["family"] for r in rows}):
        rs = sorted((r for r in rows if r["family"] == fam), key=lambda r: r["labelled"])
        x = [r["labelled"] for r in rs]
        y = [r["c_harrell"] for r in rs]
        ax.plot(x, y, marker="o", label=fam)
        ax.fill_between(x, [r["lo"] for r in rs], [r["hi"] for r in rs], alpha=0.12)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training patients")
    ax.set_ylabel("test C-index (Harrell)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_cost(rows: list[dict], path: Path, hourly_usd: float) -> None:
    """Harrell's C (95% interval) against each point's compute (training, every lr tried, plus
    the pre-training it starts from), one line per family, points labelled with ``n``; a top
    axis in USD at ``hourly_usd`` when any run used a GPU."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for fam in sorted({r["family"] for r in rows}):
        rs = sorted((r for r in rows if r["family"] == fam), key=lambda r: r["total_seconds"])
        x = [max(r["total_seconds"], 1e-3) for r in rs]
        y = [r["c_harrell"] for r in rs]
        err = [[max(r["c_harrell"] - r["lo"], 0) if math.isfinite(r["lo"]) else 0 for r in rs],
               [max(r["hi"] - r["c_harrell"], 0) if math.isfinite(r["hi"]) else 0 for r in rs]]
        line = ax.errorbar(x, y, yerr=err, marker="o", capsize=2, label=fam)
        for xi, yi, r in zip(x, y, rs, strict=True):
            ax.annotate(str(r["labelled"]), (xi, yi), fontsize=6, xytext=(3, 3),
                        textcoords="offset points", color=line[0].get_color())
    ax.set_xscale("log")
    gpu = any("cuda" in str(r["device_type"]) for r in rows)
    ax.set_xlabel("compute seconds: training (every lr tried) + pre-training"
                  + ("" if gpu else " (CPU, no GPU used)"))
    if gpu and hourly_usd > 0:
        top = ax.secondary_xaxis("top", functions=(lambda s: s * hourly_usd / 3600,
                                                   lambda u: u * 3600 / hourly_usd))
        top.set_xlabel(f"USD at ${hourly_usd}/GPU-hour")
    ax.set_ylabel("test C-index (Harrell)")
    ax.set_title("C against cost (point labels: labelled training patients)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def split_outputs(outputs: list[Path], root: Path) -> tuple[list[Path], list[Path]]:
    """(the main run's prediction outputs, the learning-curve points')."""
    base = (Path(root) / CURVE).resolve()
    curve = [o for o in outputs if Path(o).resolve().is_relative_to(base)]
    return [o for o in outputs if o not in curve], curve


def learning_curve(curve_outputs: list[Path], main: dict[str, Path], root: Path,
                   outcomes_dir: Path, horizons, n_boot: int, seed: int, plots_dir: Path,
                   pretrain: dict[str, dict] | None = None, hourly_usd: float = 0.0
                   ) -> tuple[dict, str]:
    """Score every curve point (skips recorded) against the main run (``main``: survival
    predictions by model name), write ``learning_curve.{png,csv}`` and
    ``learning_curve_cost.png`` into ``plots_dir``; returns (metrics/learning_curve.json, a
    Markdown summary)."""
    import pandas as pd

    files = sorted(f for d in curve_outputs for f in Path(d).rglob("*.npz"))
    m: dict = {}
    for d in curve_outputs:
        if (Path(d) / "SKIPPED.txt").is_file():
            rel = Path(d).resolve().relative_to((Path(root) / CURVE).resolve())
            m[f"curve.skipped.{rel.as_posix()}"] = (Path(d) / "SKIPPED.txt").read_text().strip()
    if not files:
        return m, ""
    t = pd.read_parquet(Path(outcomes_dir) / "outcomes.parquet")
    n_all = int(t.loc[t["split"] == "train", "patient"].nunique())
    scored, rows = score_curve(files, main, outcomes_dir, horizons, n_boot, seed, n_all,
                               pretrain, hourly_usd)
    m.update(scored)
    pd.DataFrame(rows).to_csv(plots_dir / "learning_curve.csv", index=False)
    plot_curve(rows, plots_dir / "learning_curve.png",
               f"Label efficiency ({n_all} = every labelled training patient)")
    plot_cost(rows, plots_dir / "learning_curve_cost.png", hourly_usd)
    lines = ["| comparison | " + " | ".join(f"n = {n}" for n in sorted({r["labelled"]
                                                                       for r in rows}))
             + " | crossover (ΔC > 0 / interval > 0) |",
             "|---|" + "---|" * (len({r["labelled"] for r in rows}) + 1)]
    ns = sorted({r["labelled"] for r in rows})
    for key in sorted(k for k in m if k.startswith("curve.crossover.")):
        a_b = key[len("curve.crossover."):]
        cells = []
        for n in ns:
            k = f"curve.delta.{a_b}.n{n}"
            cells.append(f"{m[k + '.delta']:+.3f} [{m[k + '.lo']:+.3f}, {m[k + '.hi']:+.3f}]"
                         if k + ".delta" in m else "")
        lines.append(f"| {a_b} | " + " | ".join(cells) + f" | {m[key]} / "
                     f"{m['curve.crossover_significant.' + a_b]} |")
    skipped = [f"- `{k[len('curve.skipped.'):]}`: {v}" for k, v in sorted(m.items())
               if k.startswith("curve.skipped.")]
    if skipped:
        lines += ["", "Points skipped (recorded by their stage, not scored):", *skipped]
    return m, "\n".join(lines) + "\n\n" + cost_markdown(rows, hourly_usd)


def cost_markdown(rows: list[dict], hourly_usd: float) -> str:
    """Every point: C, its training and pre-training seconds, trained parameters, cost."""
    out = ["| family | labelled | C [95% CI] | train s (every lr) | pre-training s | "
           f"trained params | device | USD at ${hourly_usd}/GPU-h |",
           "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["family"], r["labelled"])):
        params = f"{r['n_params_trainable']:,}" if r["n_params_trainable"] else "n/a"
        out.append(f"| {r['family']} | {r['labelled']} | {r['c_harrell']:.3f} "
                   f"[{r['lo']:.3f}, {r['hi']:.3f}] | {r['compute_seconds']:.1f} | "
                   f"{r['pretrain_seconds']:.1f} | {params} | {r['device_type']} | "
                   f"{r['gpu_cost_usd']:.4f} |")
    return "\n".join(out) + "\n"
