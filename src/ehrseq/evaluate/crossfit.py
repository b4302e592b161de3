"""Cross-fitted scoring (``crossfit.folds``; docs/learning_curves.md, "Cross-fitting").

Each family trained once per fold writes its held-out fold's predictions under
``data/predictions/crossfit/<stage>/f<k>/<model>.npz``. Here each model's K folds are joined
into one prediction for every landmark of the cohort (each patient is in exactly one fold),
and scored like the main run: Harrell's C with patient-level bootstrap intervals, and every
model paired with the best count model, the one each fold's baselines chose on its own
validation patients (``best_count``: the selection itself is cross-fitted). Folds store S(t|x)
on their own time grids; joined, a fold's curve is read on the union of the grids as the step
function it is (its value at the last grid time at or before t, 1 before the first).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.runs import CROSSFIT
from ..io import InputError
from ..params import ReportParams
from . import survival
from .report import comparisons_markdown, paired_comparisons
from .scoring import Outcomes, score_survival


def split_crossfit(outputs: list[Path], root: Path) -> tuple[list[Path], list[Path]]:
    """(the other prediction outputs, the cross-fitting folds')."""
    base = (Path(root) / CROSSFIT).resolve()
    folds = [o for o in outputs if Path(o).resolve().is_relative_to(base)]
    return [o for o in outputs if o not in folds], folds


def fold_files(outputs: list[Path]) -> dict[str, dict[int, Path]]:
    """Each model's prediction file per fold (``.../f<k>/<model>.npz``), and ``best_count``:
    per fold, the count model that fold's baselines chose on validation."""
    out: dict[str, dict[int, Path]] = {}
    for d in outputs:
        for f in sorted(Path(d).rglob("*.npz")):
            fold = int(f.parent.name[1:])
            if fold in out.setdefault(f.stem, {}):
                raise InputError(f"{f}: model {f.stem!r} has two predictions for fold {fold}")
            out[f.stem][fold] = f
            side = f.with_suffix(".json")
            if side.is_file() and json.loads(side.read_text()).get("best_count"):
                out.setdefault("best_count", {})[fold] = f
    return out


def all_landmarks(outcomes_dir: str | Path) -> Outcomes:
    """Every landmark of outcomes.parquet as the scored set (the K folds cover them once);
    the censoring distribution and h* from the whole cohort."""
    t = pd.read_parquet(Path(outcomes_dir) / "outcomes.parquet")
    d, e = t["duration"].to_numpy(float), t["event"].to_numpy(int)
    truth = t["true_risk"].to_numpy(float) if "true_risk" in t else np.full(len(t), np.nan)
    return Outcomes(t["index"].to_numpy(), t["landmark_visits"].to_numpy(), d, e, d, e, truth)


def join_folds(files: dict[int, Path], o: Outcomes) -> tuple[np.ndarray, np.ndarray]:
    """(S(t|x) of every landmark of ``o``, in its order, on the union of the folds' grids;
    that grid). Every landmark must be predicted by exactly one fold."""
    loaded = {}
    for k, f in files.items():
        with np.load(f, allow_pickle=False) as z:
            loaded[k] = (z["index"], z["landmark_visits"], z["times"].astype(float),
                         z["surv"].astype(float))
    times = np.unique(np.concatenate([v[2] for v in loaded.values()]))
    surv = np.full((len(o.index), len(times)), np.nan)
    seen = np.zeros(len(o.index), int)
    mine = pd.MultiIndex.from_arrays([o.index, o.landmark_visits])
    for k, (idx, lv, t, s) in loaded.items():
        pos = mine.get_indexer(pd.MultiIndex.from_arrays([idx, lv]))
        if (pos < 0).any():
            raise InputError(f"{files[k]}: {int((pos < 0).sum())} predicted landmarks are not "
                             "in outcomes.parquet; re-run the stage that wrote it")
        at = np.searchsorted(t, times, side="right") - 1   # last grid time <= each union time
        surv[pos] = np.where(at >= 0, s[:, np.maximum(at, 0)], 1.0)
        seen[pos] += 1
    if (seen != 1).any():
        raise InputError(f"{sorted(files.values())[0].parent.parent}: the folds predict "
                         f"{int((seen == 0).sum())} landmarks never and {int((seen > 1).sum())} "
                         "more than once; every fold of crossfit.folds must have run")
    return surv, times


def score_crossfit(outputs: list[Path], outcomes_dir: str | Path, horizons,
                   report: ReportParams) -> tuple[dict, str]:
    """Metrics (``crossfit.*``) and a Markdown section for the folds' predictions; ({}, "")
    when there are none."""
    files = fold_files(outputs)
    if not files:
        return {}, ""
    k = max(len(v) for v in files.values())
    o = all_landmarks(outcomes_dir)
    h = o.reference_horizon(horizons)
    flat: dict = {"crossfit.folds": k, "crossfit.patients": int(len(np.unique(o.index))),
                  "crossfit.landmarks": int(len(o.index)), "crossfit.events": int(o.event.sum())}
    if "best_count" in files:
        flat["crossfit.best_count.models"] = ", ".join(
            files["best_count"][f].stem for f in sorted(files["best_count"]))
    if np.isfinite(o.true_risk).all():
        oracle = survival.harrell_c_interval(o.duration, o.event, o.true_risk,
                                             report.bootstrap, report.seed, o.groups)
        flat.update({f"crossfit.oracle.{m}": v for m, v in oracle.items()})
    risks, rows = {}, []
    for name, per_fold in sorted(files.items()):
        if len(per_fold) < k:
            flat[f"crossfit.incomplete.{name}"] = f"{len(per_fold)} of {k} folds"
            continue
        surv, times = join_folds(per_fold, o)
        m = score_survival(name, surv, times, o, horizons, report)
        flat.update({f"crossfit.{key}": v for key, v in m.items()})
        risks[name] = survival.risk_score(surv, times, h)
        rows.append((name, m[f"{name}.c_harrell"], m[f"{name}.c_harrell_lo"],
                     m[f"{name}.c_harrell_hi"]))
    others = [n for n in risks if n != "best_count"]
    pairs = paired_comparisons(risks, o, report.bootstrap, report.seed,
                               "best_count" if "best_count" in risks else None, others)
    for r in pairs:
        for key in ("delta", "lo", "hi", "p_not_better"):
            flat[f"crossfit.delta.{r['a']}-{r['b']}.{key}"] = r[key]
        flat[f"crossfit.delta.{r['a']}-{r['b']}.half_width"] = (r["hi"] - r["lo"]) / 2
    return flat, markdown(flat, rows, pairs)


def markdown(flat: dict, rows: list[tuple], pairs: list[dict]) -> str:
    lines = [f"{flat['crossfit.folds']} folds: every one of the {flat['crossfit.patients']} "
             f"patients ({flat['crossfit.landmarks']} landmarks, {flat['crossfit.events']} "
             "events) scored once, by the models of the fold that held it out; intervals "
             "resample patients over all folds. The best count model is each fold's own choice "
             f"on its validation patients ({flat.get('crossfit.best_count.models', 'none')}).",
             "", "| model | C (Harrell) [95% CI] |", "|---|---|"]
    if "crossfit.oracle.c_harrell" in flat:
        rows = [("oracle", flat["crossfit.oracle.c_harrell"], flat["crossfit.oracle.c_harrell_lo"],
                 flat["crossfit.oracle.c_harrell_hi"]), *rows]
    lines += [f"| {n} | {c:.3f} [{lo:.3f}, {hi:.3f}] |" for n, c, lo, hi in
              sorted(rows, key=lambda r: -r[1])]
    lines += [f"| {k[len('crossfit.incomplete.'):]} | not scored: {v} |"
              for k, v in sorted(flat.items()) if k.startswith("crossfit.incomplete.")]
    return "\n".join(lines) + "\n\n" + (comparisons_markdown(pairs) if pairs else "")
