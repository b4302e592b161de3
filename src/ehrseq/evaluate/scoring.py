"""Scoring every model's test predictions: the engine of the ``evaluate`` stage, the only place
where test metrics are computed.

Models are found by directory: every ``*.npz`` under ``data/predictions`` (any depth). Two
formats, told apart by their arrays:

- survival (every survival model, classical or neural): ``index`` (the sequences row of each
  test landmark), ``times`` (days) and ``surv`` (S(t|x), ``[n, len(times)]``); the model's name
  is the file's stem and must be unique;
- multi-label onset risks (``train_trajectory``): ``labels`` ``[n, targets, horizons]`` (NaN
  where unknown), ``targets``, ``horizons`` and one ``prob_<model>`` per model.

Beside a prediction, ``<stem>.json`` holds the run's statistics (seconds, parameters, device,
size ...; :data:`ehrseq.train.recipe.RUN_STATS`), merged into the model's metrics. Adding a
model, a fine-tuning mode or a learning-curve point means writing one more file there; neither
dvc.yaml nor this module lists models.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import InputError
from ..params import ReportParams
from . import survival
from .multilabel import evaluate_multilabel

log = logging.getLogger(__name__)

PREDICTIONS = Path("data/predictions")
SURVIVAL_KEYS = {"index", "times", "surv"}
MULTILABEL_KEYS = {"labels", "targets", "horizons"}


def find_predictions(root: str | Path = PREDICTIONS, only: list[Path] | None = None,
                     ignore: list[Path] = ()) -> tuple[dict[str, Path], list[Path]]:
    """(survival predictions by model name, multi-label prediction files) under ``root``;
    with ``only``, just those inside one of these folders (the outputs of the DAG's current
    stages: a stage removed from the DAG leaves its old files on disk); files inside
    ``ignore`` (the learning-curve points, scored apart) are skipped silently."""
    surv: dict[str, Path] = {}
    multi: list[Path] = []
    for f in sorted(Path(root).rglob("*.npz")):
        if any(f.resolve().is_relative_to(Path(d).resolve()) for d in ignore):
            continue
        if only is not None and not any(f.resolve().is_relative_to(Path(d).resolve())
                                        for d in only):
            log.warning("%s: not written by any stage of the current DAG; not scored", f)
            continue
        with np.load(f, allow_pickle=False) as z:
            keys = set(z.files)
        if SURVIVAL_KEYS <= keys:
            if f.stem in surv:
                raise InputError(f"{f}: model name {f.stem!r} is also {surv[f.stem]}; every "
                                 "survival prediction needs its own file name")
            surv[f.stem] = f
        elif MULTILABEL_KEYS <= keys:
            multi.append(f)
        else:
            raise InputError(f"{f}: arrays {sorted(keys)}; accepted: survival predictions "
                             f"{sorted(SURVIVAL_KEYS)} or multi-label {sorted(MULTILABEL_KEYS)} "
                             "+ prob_<model>")
    return surv, multi


def prediction_outputs(root: str | Path = PREDICTIONS, repo: str | Path = ".") -> list[Path]:
    """The outputs of the current DAG's stages (dvc.yaml, ``foreach`` expanded) under
    ``root``: where the models' predictions are, read from DVC itself (no list of models)."""
    from dvc.repo import Repo

    with Repo(str(repo)) as r:
        outs = [Path(o.fs_path) for s in r.index.stages for o in s.outs]
    base = Path(root).resolve()
    return sorted(o for o in outs if o.resolve().is_relative_to(base))


def check_present(outputs: list[Path]) -> None:
    """Every prediction output of the DAG must be on disk before scoring: DVC cannot pull a
    directory dependency that spans several stages' outputs (treeverse/dvc#11099), and scoring
    without them would give a report with models silently missing."""
    missing = [str(o) for o in outputs if not o.exists()]
    if missing:
        raise InputError(f"{', '.join(missing)}: missing; run `python -m ehrseq.ops.pod "
                         "pull-predictions` (or `dvc pull` those paths) first, or `dvc repro` "
                         "the stages that write them")


def run_info(prediction: Path) -> dict:
    """The run statistics written beside a prediction (``<stem>.json``), or {}."""
    side = prediction.with_suffix(".json")
    return json.loads(side.read_text()) if side.is_file() else {}


@dataclass
class Outcomes:
    """The outcomes the test predictions are scored against (from outcomes.parquet)."""

    index: np.ndarray          # sequences row of each test landmark, in table order
    landmark_visits: np.ndarray  # with index: the key of each test landmark
    duration: np.ndarray
    event: np.ndarray
    train_duration: np.ndarray
    train_event: np.ndarray
    true_risk: np.ndarray      # NaN unless the outcome is synthetic

    @classmethod
    def load(cls, outcomes_dir: str | Path) -> Outcomes:
        path = Path(outcomes_dir) / "outcomes.parquet"
        if not path.is_file():
            raise InputError(f"{path}: missing; run the outcomes stage first")
        t = pd.read_parquet(path)
        te, tr = t[t["split"] == "test"], t[t["split"] == "train"]
        truth = te["true_risk"].to_numpy(float) if "true_risk" in te else np.full(len(te), np.nan)
        return cls(te["index"].to_numpy(), te["landmark_visits"].to_numpy(),
                   te["duration"].to_numpy(float),
                   te["event"].to_numpy(int), tr["duration"].to_numpy(float),
                   tr["event"].to_numpy(int), truth)

    def align(self, path: Path, z) -> np.ndarray:
        """Row of ``path``'s predictions (the npz ``z``) for each test landmark, matched on
        (patient row, landmark visits); every one must be there."""
        if "landmark_visits" not in z:
            raise InputError(f"{path}: written before landmarks had keys (no landmark_visits); "
                             "re-run the stage that wrote it")
        mine = pd.MultiIndex.from_arrays([self.index, self.landmark_visits])
        pos = pd.MultiIndex.from_arrays([z["index"], z["landmark_visits"]]).get_indexer(mine)
        if (pos < 0).any():
            raise InputError(f"{path}: predictions miss {int((pos < 0).sum())} test landmarks "
                             "of outcomes.parquet; re-run the stage that wrote it")
        return pos

    @property
    def groups(self) -> np.ndarray:
        """The patient of each test landmark: bootstrap resamples draw patients."""
        return self.index

    def reference_horizon(self, horizons) -> float:
        return survival.reference_horizon(self.duration, self.event, self.train_duration,
                                          self.train_event, horizons)


def score_survival(name: str, surv: np.ndarray, times: np.ndarray, o: Outcomes,
                   horizons, report: ReportParams, plots_dir: Path | None = None) -> dict:
    """Every survival metric of one model with its interval: ``<name>.<metric>`` (+ plots)."""
    res = survival.evaluate_survival(o.duration, o.event, surv, times, o.train_duration,
                                     o.train_event, horizons, report.bootstrap, report.seed,
                                     groups=o.groups)
    if plots_dir is not None:
        stem = Path(plots_dir) / name
        risk = survival.risk_score(surv, times, res["risk_horizon"])
        survival.plot_km_by_risk_group(o.duration, o.event, risk, f"{stem}_km_by_risk.png",
                                       f"{stem}_km_by_risk.csv",
                                       title=f"{name}: Kaplan–Meier by predicted-risk quartile")
        survival.plot_calibration(res["calibration"], f"{stem}_calibration.png",
                                  f"{stem}_calibration.csv", title=f"{name}: calibration")
    return {f"{name}.{k}": v for k, v in survival.scalar_metrics(res).items()}


COLLAPSE_SPREAD = 0.10
"""A model is flagged collapsed when the spread of its test risks ``1 - S(h*)`` (10th to 90th
percentile) is below this fraction of their mean: every patient gets about the same curve."""
COLLAPSE_ANTOLINI = 0.02
"""... or when its Antolini C lies within this of 0.5 while its Harrell C (at h*) lies
``COLLAPSE_HARRELL`` or more from 0.5: the ranking at h* then rests on tiny differences of
nearly identical curves (issue 26: BEHRT full, Antolini 0.497, Harrell 0.664)."""
COLLAPSE_HARRELL = 0.05
POPULATION_MODELS = ("km",)
"""Models that give every patient the population's curve by design (Kaplan–Meier): never
flagged."""


def collapse(name: str, risk: np.ndarray, scores: dict) -> dict:
    """``<name>.risk_spread`` (p90 - p10 of the test risks over their mean) and
    ``<name>.collapsed`` (1 flagged, 0 not) with, when flagged, ``<name>.collapse_reason``."""
    risk = np.asarray(risk, dtype=float)
    mean = float(np.mean(risk)) if risk.size else math.nan
    p10, p90 = np.percentile(risk, [10, 90]) if risk.size else (math.nan, math.nan)
    spread = float((p90 - p10) / mean) if mean > 0 else 0.0
    reasons = []
    if name in POPULATION_MODELS:
        return {f"{name}.risk_spread": spread, f"{name}.collapsed": 0}
    if spread < COLLAPSE_SPREAD:
        reasons.append(f"test risks 1-S(h*) vary by {spread:.3f} of their mean (p10 {p10:.3f}, "
                       f"p90 {p90:.3f}); flagged below {COLLAPSE_SPREAD}")
    ca, ch = scores.get(f"{name}.c_antolini"), scores.get(f"{name}.c_harrell")
    if ca is not None and ch is not None and math.isfinite(ca) and math.isfinite(ch) \
            and abs(ca - 0.5) < COLLAPSE_ANTOLINI and abs(ch - 0.5) >= COLLAPSE_HARRELL:
        reasons.append(f"Antolini C {ca:.3f} near 0.5 while Harrell C is {ch:.3f}")
    out = {f"{name}.risk_spread": spread, f"{name}.collapsed": int(bool(reasons))}
    if reasons:
        out[f"{name}.collapse_reason"] = "; ".join(reasons)
    return out


def run_seconds(info: dict) -> float:
    """Wall seconds of a run's training, every lr it tried included."""
    return float(info.get("tune.wall_time_s") or info.get("train_seconds") or 0.0)


def gpu_cost(info: dict, hourly_usd: float) -> float:
    """GPU hours of a run (every lr it tried, every process) at ``hourly_usd``; 0 off CUDA."""
    if info.get("device_type") != "cuda":
        return 0.0
    return run_seconds(info) * info.get("world_size", 1) / 3600 * hourly_usd


def score_all(root: str | Path, outcomes_dir: str | Path, horizons, report: ReportParams,
              plots_dir: Path | None = None, progress=None, only: list[Path] | None = None,
              ignore: list[Path] = (), found: tuple | None = None) -> tuple[dict, dict]:
    """Score every prediction under ``root`` (``only``, ``ignore``: see
    :func:`find_predictions`; ``found``: what it returned, if the caller already called it):
    (flat metrics, test risk ``1 - S(h*)`` of every survival model in test-table order, for
    paired comparisons)."""
    o = Outcomes.load(outcomes_dir)
    surv_files, multi_files = found or find_predictions(root, only, ignore)
    h = o.reference_horizon(horizons)
    metrics: dict = {"test.patients": int(len(np.unique(o.index))),
                     "test.landmarks": int(len(o.index)), "test.events": int(o.event.sum()),
                     "test.risk_horizon": h}
    if np.isfinite(o.true_risk).all():   # synthetic outcome: the ceiling any model can reach
        oracle = survival.harrell_c_interval(o.duration, o.event, o.true_risk,
                                             report.bootstrap, report.seed, o.groups)
        metrics.update({f"oracle.{k}": v for k, v in oracle.items()})
    risks = {}
    for name, f in surv_files.items():
        if progress is not None:
            progress(name)
        with np.load(f, allow_pickle=False) as z:
            pos = o.align(f, z)
            surv, times = z["surv"][pos].astype(float), z["times"].astype(float)
        metrics.update(score_survival(name, surv, times, o, horizons, report, plots_dir))
        info = run_info(f)
        metrics.update({f"{name}.{k}": v for k, v in info.items() if k not in ("model",)})
        metrics[f"{name}.gpu_cost_usd"] = gpu_cost(info, report.gpu_hourly_usd)
        risks[name] = survival.risk_score(surv, times, h)
        metrics.update(collapse(name, risks[name], metrics))
        if metrics[f"{name}.collapsed"]:
            log.warning("%s looks collapsed: %s", name, metrics[f"{name}.collapse_reason"])
        if info.get("best_count"):   # chosen on validation by the baselines stage
            metrics["best_count.model"] = name
            for k in ("c_harrell", "c_harrell_lo", "c_harrell_hi"):
                metrics[f"best_count.{k}"] = metrics[f"{name}.{k}"]
    for f in multi_files:
        with np.load(f, allow_pickle=False) as z:
            targets, hz = [str(t) for t in z["targets"]], [int(x) for x in z["horizons"]]
            y, groups = z["labels"], z["index"]
            probs = {k[len("prob_"):]: z[k] for k in z.files if k.startswith("prob_")}
        for name, p in probs.items():
            if progress is not None:
                progress(f"onset.{name}")
            res = evaluate_multilabel(y, p, targets, hz, report.bootstrap, report.seed, groups)
            metrics.update({f"onset.{name}.{k}": v for k, v in res["metrics"].items()})
            metrics.update({f"onset.skipped.{k}": v for k, v in res["skipped"].items()})
            metrics.update({f"onset.test.{k}": v for k, v in res["n"].items()})   # per cell
    return metrics, risks
