"""Multi-horizon onset labels for the disease-trajectory task (stage ``train_trajectory``).

For every outcome-eligible patient (a row of ``outcomes.parquet``; the landmark is shared by
every outcome), every target and every horizon ``h`` (days) the label is

- ``1`` if the target's first onset after the landmark falls in ``(L, L + h]``;
- ``0`` if the record runs to at least ``L + h`` (``end_of_record >= L + h``) without onset;
- ``NaN`` (masked) if the target is already present at or before the landmark, or if the
  record ends before ``L + h`` without onset (censored first: the answer is unknown).

Targets are SNOMED condition codes (``outcome.onset_codes`` plus, with
``trajectory.frequent_targets``, the conditions that most often start within the longest horizon
after the landmark in the training split: :func:`frequent_onsets`) and ``death``.

"Present at or before the landmark" uses when a record became known, exactly as
:func:`ehrseq.outcomes.real.onset` does: a condition record whose ``known_time`` (never before
its encounter's start, :mod:`ehrseq.data.visits`) is at or before the landmark is known, which
covers every record in the model inputs; the onset is the first record of the code that became
known after the landmark. For ``death`` the onset is Synthea's death date (00:00 UTC);
a death at or before the landmark masks the target (landmarks need follow-up, so this does not
happen with the default landmarks). Death ends the record, so a patient who dies before
``L + h`` without a condition's onset is masked for that condition and horizon (censored,
not a competing-risk zero; see docs/trajectory.md).

Everything is one DuckDB query plus NumPy scatter/broadcast: no loop per patient or event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from ..data.visits import condition_records
from ..io import InputError
from ..params import SequencesParams
from .landmarks import days_since_epoch, records_by_landmark

DEATH = "death"
US_PER_DAY = 86_400e6


@dataclass
class TrajectoryLabels:
    """Labels for ``n`` patients, ``T`` targets and ``H`` horizons."""

    targets: list[str]
    horizons: list[int]
    labels: np.ndarray      # float32 [n, T, H]: 1, 0 or NaN (masked)
    onset: np.ndarray       # float64 [n, T]: days from the landmark to the first onset after
    #                         it (inf = none in the record)
    present: np.ndarray     # bool [n, T]: present at or before the landmark
    followup: np.ndarray    # float64 [n]: days from the landmark to the end of record
    first_any: np.ndarray   # float64 [n, T]: first record of the target at all, days since
    #                         epoch (inf = never); for plots only, never a model input
    descriptions: dict[str, str]

    @property
    def known(self) -> np.ndarray:
        """bool [n, T, H]: the label is not masked."""
        return ~np.isnan(self.labels)


def label_matrix(onset, present, followup, horizons: Sequence[float]) -> np.ndarray:
    """The label rule above as arrays: ``onset`` [n, T] days after the landmark (inf = none),
    ``present`` [n, T] bool, ``followup`` [n] days → float32 labels ``[n, T, H]``."""
    onset = np.asarray(onset, np.float64)[..., None]
    h = np.asarray(horizons, np.float64)[None, None, :]
    fu = np.asarray(followup, np.float64)[:, None, None]
    pos = onset <= h
    neg = ~pos & (fu >= h)
    lab = np.where(pos, 1.0, np.where(neg, 0.0, np.nan))
    lab[np.asarray(present, bool)] = np.nan
    return lab.astype(np.float32)


def _lit(s) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def _condition_records(events: Path, patients, codes: Sequence[str] | None,
                       kinds: Sequence[str]):
    """(patient, code, t_us: when the record became known, vs_us: its visit's time) of every
    condition record with one of ``codes`` (``None``: every condition), and descriptions."""
    rows = condition_records(events, kinds, codes, patients)
    con = duckdb.connect()
    in_codes = "" if codes is None else \
        f"AND code IN ({', '.join(_lit(c) for c in codes) or 'NULL'})"
    desc = dict(con.execute(f"""
        SELECT code, min(description) FROM read_parquet({_lit(events)})
        WHERE kind = 'condition' {in_codes} GROUP BY code""").fetchall())
    con.close()
    return rows, desc


def frequent_onsets(events: str | Path, seq_patients: pd.DataFrame, table: pd.DataFrame,
                    horizon: float, k: int, exclude: Sequence[str] = (),
                    event_kinds: Sequence[str] | None = None) -> list[str]:
    """The ``k`` condition codes with the most landmarks (rows) of ``table`` whose first onset after
    the landmark (by the rule above: not present at or before it) falls within ``horizon``
    days; ties by code. Call it with the training rows only. ``exclude``: codes to leave out."""
    events = Path(events)
    if k <= 0:
        return []
    if not events.is_file():
        raise InputError(f"{events}: missing; run the ingest stage first")
    kinds = sorted(set(event_kinds or SequencesParams().event_kinds) | {"condition"})
    idx = table["index"].to_numpy(np.int64)
    ids = seq_patients["patient"].to_numpy()
    rows, _ = _condition_records(events, np.unique(ids[idx]), None, kinds)
    if rows.empty:
        return []
    rec, r = records_by_landmark(pd.Index(ids).get_indexer(rows["patient"]), idx)
    dt = rows["t_us"].to_numpy(np.float64)[rec] / US_PER_DAY - \
        table["landmark_time"].to_numpy(np.float64)[r]
    per = pd.DataFrame({"r": r, "code": rows["code"].to_numpy()[rec], "pre": dt <= 0, "dt": dt})
    g = per.groupby(["r", "code"])
    first_after = per[~per["pre"]].groupby(["r", "code"])["dt"].min()
    hit = ~g["pre"].any() & (first_after.reindex(g.size().index) <= horizon)
    counts = hit[hit].groupby(level="code").size()
    counts = counts[~counts.index.isin([str(c) for c in exclude])]
    order = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [str(c) for c, _ in order[:k]]


def build_labels(events: str | Path, seq_patients: pd.DataFrame, table: pd.DataFrame,
                 targets: Sequence[str], horizons: Sequence[int],
                 event_kinds: Sequence[str] | None = None) -> TrajectoryLabels:
    """Labels for the rows of ``table`` (``outcomes.parquet``: ``index``, ``landmark_time``).

    ``seq_patients``: the sequences ``patients.parquet`` (patient, death_date,
    end_of_record in days since epoch), one row per sequences patient. ``targets``: SNOMED
    condition codes and/or ``"death"``. A code never recorded as a condition simply has no
    onset (the stage reports it and skips targets without a training positive).
    """
    events = Path(events)
    if not events.is_file():
        raise InputError(f"{events}: missing; run the ingest stage first")
    for col in ("patient", "death_date", "end_of_record"):
        if col not in seq_patients.columns:
            raise InputError(f"sequences patients.parquet: column {col!r} missing")
    targets = [str(t) for t in targets]
    if len(set(targets)) != len(targets) or not targets:
        raise ValueError(f"targets must be a non-empty list without repeats, got {targets}")
    kinds = sorted(set(event_kinds or SequencesParams().event_kinds) | {"condition"})
    idx = table["index"].to_numpy(np.int64)
    lm = table["landmark_time"].to_numpy(np.float64)
    n, T = len(idx), len(targets)
    pats = seq_patients.iloc[idx]
    eor = pats["end_of_record"].to_numpy(np.float64)
    onset_abs = np.full((n, T), np.inf)
    first_any = np.full((n, T), np.inf)
    present = np.zeros((n, T), bool)

    codes = [t for t in targets if t != DEATH]
    desc = {DEATH: "Death"}
    if codes:
        ids = seq_patients["patient"].to_numpy()
        rows, found = _condition_records(events, np.unique(ids[idx]), codes, kinds)
        desc.update(found)
        rec, r = records_by_landmark(pd.Index(ids).get_indexer(rows["patient"]), idx)
        c = pd.Index(targets).get_indexer(rows["code"].to_numpy()[rec])
        t = rows["t_us"].to_numpy(np.float64)[rec] / US_PER_DAY   # when it became known
        pre = t <= lm[r]
        present[r[pre], c[pre]] = True
        np.minimum.at(onset_abs, (r[~pre], c[~pre]), t[~pre])
        np.minimum.at(first_any, (r, c), t)
    if DEATH in targets:
        j = targets.index(DEATH)
        death = days_since_epoch(pats["death_date"])
        died = np.isfinite(death)
        present[:, j] = died & (death <= lm)
        onset_abs[:, j] = np.where(died & (death > lm), death, np.inf)
        first_any[:, j] = np.where(died, death, np.inf)

    onset = onset_abs - lm[:, None]
    followup = eor - lm
    labels = label_matrix(onset, present, followup, horizons)
    return TrajectoryLabels(targets, [int(h) for h in horizons], labels, onset, present,
                            followup, first_any, {k: str(v) for k, v in desc.items()})


def label_summary(lab: TrajectoryLabels, splits: np.ndarray) -> pd.DataFrame:
    """Per split, target and horizon: known (not masked) labels and positives (long table)."""
    known, pos = lab.known, np.nan_to_num(lab.labels) > 0
    out = []
    for s in ("train", "val", "test"):  # three splits, each vectorised over targets/horizons
        m = np.asarray(splits) == s
        k, p = known[m].sum(0), pos[m].sum(0)
        tt, hh = np.meshgrid(np.arange(len(lab.targets)), np.arange(len(lab.horizons)),
                             indexing="ij")
        out.append(pd.DataFrame({
            "split": s, "target": np.asarray(lab.targets)[tt.ravel()],
            "horizon": np.asarray(lab.horizons)[hh.ravel()],
            "known": k.ravel(), "positives": p.ravel(),
            "present_at_landmark": np.repeat(lab.present[m].sum(0), len(lab.horizons)),
        }))
    return pd.concat(out, ignore_index=True)


@dataclass
class TrajectoryTask:
    """The targets a trajectory model is trained on: ``labels`` ``[rows, targets, horizons]``
    of the targets with a positive in the train split; ``skipped`` says why the others were
    left out."""

    lab: TrajectoryLabels
    targets: list[str]
    keep: np.ndarray          # columns of ``lab.labels`` kept
    labels: np.ndarray
    skipped: dict[str, str]
    summary: pd.DataFrame

    def label_metrics(self) -> dict[str, int]:
        """Known and positive labels per split, horizon and target (train and test)."""
        m = {}
        for s in ("train", "test"):
            g = self.summary[self.summary["split"] == s]
            for col in ("known", "positives"):
                m.update({f"labels.{s}_{col}_{h}.{tg}": int(n) for tg, h, n in
                          zip(g["target"], g["horizon"], g[col], strict=True)})
        return m


def trajectory_task(events: str | Path, seq_patients: pd.DataFrame, table: pd.DataFrame,
                    targets: list[str], horizons, frequent: int, train_rows: np.ndarray,
                    event_kinds: SequencesParams | None = None) -> TrajectoryTask:
    """Targets (``targets`` plus the ``frequent`` conditions most often starting within the
    last horizon in the train split), their labels at every landmark, and the targets kept: those
    with a positive in the train split at some horizon."""
    extra = frequent_onsets(events, seq_patients, table.iloc[train_rows], horizons[-1], frequent,
                            targets, event_kinds)
    every = [*targets, *extra]
    lab = build_labels(events, seq_patients, table, every, horizons, event_kinds)
    pos = (np.nan_to_num(lab.labels[train_rows]) > 0).sum(axis=(0, 2))
    keep = np.flatnonzero(pos > 0)
    skipped = {every[j]: "no positive in the train split" for j in np.flatnonzero(pos == 0)}
    return TrajectoryTask(lab, [every[j] for j in keep], keep, lab.labels[:, keep], skipped,
                          label_summary(lab, table["split"].to_numpy()))
