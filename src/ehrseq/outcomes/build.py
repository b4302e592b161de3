"""Assemble the ``outcomes`` contract (docs/architecture.md, docs/outcomes.md): landmarks
(:mod:`.landmarks`), the outcome chosen by ``outcome.name`` (:mod:`.synthetic`, :mod:`.real`),
time bins, and the audit that no input was known after its landmark."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.tensors import Sequences
from ..data.visits import audit_inputs
from ..io import InputError
from ..params import OutcomeParams, SequencesParams
from ..repro import km_median, round_days
from ..survival.bins import fit_horizons, time_bins
from .landmarks import COLUMNS, MIN_DURATION, choose_landmarks, days_since_epoch, input_window
from .real import lab, mortality, onset
from .synthetic import SyntheticResult, named_effects, planted_subtype_ids, synthetic


@dataclass
class OutcomesResult:
    table: pd.DataFrame
    cuts: list
    metrics: dict


def build_outcomes(interim: str | Path, sequences: str | Path, out: str | Path,
                   p: OutcomeParams, event_kinds=None) -> OutcomesResult:
    """Landmarks + the outcome ``p.name`` → ``out/outcomes.parquet`` and ``out/time_bins.json``.

    ``event_kinds``: ``sequences.event_kinds`` (how visits were formed; onset outcomes use it
    to decide which condition records lie in the model inputs). ``p.horizons``: the
    evaluation horizons (days; ``None``: fitted to the training event times, :func:`fit_horizons`), made
    time-bin edges so that discrete-time models are read exactly there; written to
    ``time_bins.json``, where every later stage reads them (:attr:`SurvivalTask.horizons`).
    """
    import json


    interim, out = Path(interim), Path(out)
    seqs = Sequences.load(sequences)
    pats = seqs.patients
    lm = choose_landmarks(seqs.visit_time, seqs.patient_offsets, pats, p.landmark)
    lm.input_visits = input_window(seqs.visit_offsets, seqs.patient_offsets, lm.index,
                                   lm.landmark_visits, p.history.max_visits,
                                   p.history.max_tokens)
    n_landmarked = len(lm.index)
    eor = pats["end_of_record"].to_numpy(np.float64)
    metrics: dict = {}

    if p.name == "synthetic":
        res = synthetic(seqs, lm, p.synthetic)
        metrics.update(res.metrics)
    else:
        if p.name == "mortality":
            death = days_since_epoch(pats["death_date"])
            dur, ev, keep, why = mortality(lm, death, eor)
        elif p.name.startswith("lab_"):
            kind, code, value = p.name.split(":")
            dur, ev, keep, why = lab(interim / "events.parquet", pats["patient"], lm, code,
                                     kind[len("lab_"):], float(value), eor)
        else:
            code = p.name.split(":", 1)[1]
            dur, ev, keep, why = onset(interim / "events.parquet", pats["patient"], lm, code,
                                       eor, event_kinds)
        if why:
            lm.excluded[why] = int((~keep).sum())
        lm = lm.subset(keep)
        subtype = planted_subtype_ids(named_effects(seqs, lm)[0], p.synthetic.n_subtypes)
        res = SyntheticResult(dur[keep], ev[keep], np.full(len(lm.index), np.nan), subtype)

    split = pats["split"].to_numpy()[lm.index]
    table = pd.DataFrame({
        "patient": pats["patient"].to_numpy()[lm.index].astype(str),
        "index": lm.index.astype(np.int64),
        "split": split.astype(str),
        "landmark_time": lm.landmark_time.astype(np.float64),
        "landmark_visits": lm.landmark_visits.astype(np.int64),
        "input_visits": lm.window.astype(np.int64),
        "duration": round_days(np.maximum(res.duration, MIN_DURATION)),
        "event": res.event.astype(np.int64),
        "subtype": res.subtype.astype(np.int64),
        "true_risk": res.true_risk.astype(np.float64),
    }, columns=list(COLUMNS))

    n_all = len(pats)
    reasons = ", ".join(f"{k}: {v}" for k, v in lm.excluded.items() if v)
    if table.empty:
        raise InputError(f"outcome {p.name!r}: no eligible patient among {n_all} "
                         f"(excluded: {reasons or 'none'}); check outcome.landmark "
                         f"(mode={p.landmark.mode}, min_visits={p.landmark.min_visits}, "
                         f"min_followup_days={p.landmark.min_followup_days})")
    for s in ("train", "val", "test"):
        part = table[table["split"] == s]
        if len(part) == 0 or int(part["event"].sum()) == 0:
            raise InputError(
                f"outcome {p.name!r}: no events in the {s} split ({len(part)} landmarks of "
                f"{part['patient'].nunique()} patients; {len(table)} landmarks in all): a model "
                f"cannot be {'trained' if s == 'train' else 'tuned' if s == 'val' else 'scored'}"
                " on it; use more patients (data.patients), more landmarks per patient "
                "(outcome.landmark.count), another outcome, or (synthetic) a longer "
                "censoring_days")
    train = table["split"] == "train"
    horizons = fit_horizons(table.loc[train, "duration"], table.loc[train, "event"], p.horizons)
    cuts = time_bins(table.loc[train, "duration"], table.loc[train, "event"],
                     p.time_bins.n, p.time_bins.scheme, horizons=horizons)

    out.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out / "outcomes.parquet", index=False)
    if res.features is not None and len(res.features.columns):   # the probes' targets
        res.features.to_parquet(out / "features.parquet", index=False)
    (out / "time_bins.json").write_text(json.dumps(
        {"cuts": [float(c) for c in cuts], "scheme": p.time_bins.scheme,
         "horizons": [float(h) for h in horizons],
         "n_bins": len(cuts) - 1}, indent=1) + "\n")

    metrics.update(_summary(table, n_all, n_landmarked, lm.excluded, cuts))
    metrics["horizons"] = [float(h) for h in horizons]
    metrics["horizons_fitted"] = p.horizons is None

    audit = audit_inputs(interim / "events.parquet", sequences, table,
                         event_kinds or SequencesParams().event_kinds)
    if audit["audit_input_events_known_after_landmark"]:
        raise RuntimeError(f"model inputs known after the landmark: {audit} (a bug in how "
                           "visits are dated; please report it with this message)")
    metrics.update(audit)
    return OutcomesResult(table=table, cuts=[float(c) for c in cuts], metrics=metrics)


def _median_followup(duration, event) -> float:
    """Reverse Kaplan–Meier median follow-up (censoring treated as the event), computed
    without logarithms (:func:`ehrseq.repro.km_median`): lifelines' value, on every machine."""
    return km_median(np.asarray(duration), 1 - np.asarray(event))


def _summary(table: pd.DataFrame, n_all: int, n_landmarked: int, excluded: dict,
             cuts) -> dict:
    m: dict = {"patients": n_all, "landmarks": n_landmarked, "eligible": len(table),
               "eligible_patients": int(table["patient"].nunique()),
               "landmarks_per_patient": len(table) / max(table["patient"].nunique(), 1),
               "event_rate": float(table["event"].mean()),
               "median_followup_days": _median_followup(table["duration"], table["event"]),
               "median_duration_days": float(table["duration"].median()),
               "landmark_visits_median": float(table["landmark_visits"].median()),
               "input_visits_median": float(table["input_visits"].median()),
               "history_truncated": float((table["input_visits"]
                                           < table["landmark_visits"]).mean()),
               "n_time_bins": len(cuts) - 1}
    for reason, k in sorted(excluded.items()):
        m[f"excluded_{reason}"] = int(k)
    for s in ("train", "val", "test"):
        part = table[table["split"] == s]
        m[f"eligible_{s}"] = len(part)
        m[f"patients_{s}"] = int(part["patient"].nunique())
        m[f"events_{s}"] = int(part["event"].sum())
        m[f"event_rate_{s}"] = float(part["event"].mean()) if len(part) else None
    for k, part in table.groupby("subtype"):
        m[f"subtype_{k}_patients"] = len(part)
        m[f"subtype_{k}_event_rate"] = float(part["event"].mean())
    return m
