"""Landmarks: the prediction time of every patient, and the outcome table built at it.

Landmarks are chosen from the visit times alone (never from an outcome), so every outcome
(synthetic, mortality, onset) shares the same landmarks; an outcome may only exclude
landmarks (e.g. onset: the condition is already known at it). Modes (``outcome.landmark.mode``):

- ``random_visit``: up to ``landmark.count`` distinct visit times drawn without replacement
  among the visits that have at least ``min_visits`` visits at or before them and at least
  ``min_followup_days`` (and always > 0 days) of record after them: the ones with the smallest
  hash of (``landmark.seed``, patient id, visit time), so a patient keeps its landmarks when
  the cohort grows, and a larger count keeps those of a smaller one. Each landmark is one row
  of the task (the rows of a patient are in time order); ``landmark_time`` is that visit's
  time. Splits stay by patient, and every interval resamples patients, not rows
  (:func:`ehrseq.evaluate.survival.bootstrap_weights`).
- ``age`` / ``date``: ``landmark_time`` is the calendar time the patient reaches
  ``landmark.age`` years (365.25-day years from the birth date), or ``landmark.date``
  (00:00 UTC); the patient needs ``min_visits`` visits at or before it and
  ``min_followup_days`` of record after it.

``landmark_visits`` counts the visits dated at or before ``landmark_time`` (all visits sharing
the landmark's timestamp included; a visit is dated when its last fact became known,
:mod:`ehrseq.data.visits`). Every model reads the same window of them, the last
``input_visits`` (:func:`input_window`, ``outcome.history``): count models, the LSTM, BEHRT,
Med2Vec, the embeddings and the synthetic outcome's named effects all see the same visits.
Everything is NumPy over the offset arrays: no Python loop per patient, visit or event.

The primitives live here; :func:`ehrseq.outcomes.build.build_outcomes` assembles the
``outcomes`` contract from them and the outcome chosen by ``outcome.name``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..data.sequences import EPOCH
from ..data.tensors import ranges
from ..io import InputError
from ..params import LandmarkParams, ParamsError
from ..repro import hash_uniform

MIN_DURATION = 1.0 / 24.0
"""Durations are floored at one hour (days), so every duration is > 0; written durations are
rounded to the whole second (:func:`ehrseq.repro.round_days`: the same bytes on every machine)."""

COLUMNS = ("patient", "index", "split", "landmark_time", "landmark_visits", "input_visits",
           "duration", "event", "subtype", "true_risk")


def landmark_ids(patient_ids, landmark_time) -> list[str]:
    """``<patient id>@<landmark time>``: the key of a landmark in per-landmark hashes."""
    return [f"{a}@{b!r}" for a, b in zip(np.asarray(patient_ids).tolist(),
                                         np.asarray(landmark_time, np.float64).tolist(),
                                         strict=True)]


def days_since_epoch(values) -> np.ndarray:
    """Dates/timestamps (naive = UTC) → float days since 1970-01-01; missing → NaN."""
    ts = pd.to_datetime(pd.Series(values), utc=True)
    return ((ts - EPOCH) / pd.Timedelta(days=1)).to_numpy(np.float64)


@dataclass
class Landmarks:
    """Landmarks (one row each; several per patient with ``landmark.count`` > 1)."""

    index: np.ndarray            # int64 [m] the patient's row in sequences/patients.parquet
    landmark_time: np.ndarray    # float64 [m] days since epoch
    landmark_visits: np.ndarray  # int64 [m] visits at or before landmark_time
    excluded: dict = field(default_factory=dict)  # reason -> patients
    input_visits: np.ndarray | None = None  # int64 [m] the input window (see input_window)

    def subset(self, keep: np.ndarray) -> Landmarks:
        return Landmarks(self.index[keep], self.landmark_time[keep],
                         self.landmark_visits[keep], dict(self.excluded),
                         None if self.input_visits is None else self.input_visits[keep])

    @property
    def window(self) -> np.ndarray:
        """Visits of each landmark that are model inputs (all of them without a window)."""
        return self.landmark_visits if self.input_visits is None else self.input_visits


def choose_landmarks(visit_time, patient_offsets, patients: pd.DataFrame,
                     p: LandmarkParams) -> Landmarks:
    """Landmarks for every patient that has one (see the module docstring).

    ``patients``: the sequences ``patients.parquet`` (patient, birth_date, end_of_record in
    days since epoch), one row per patient in offset order.
    """
    t = np.asarray(visit_time, dtype=np.float64)
    po = np.asarray(patient_offsets, dtype=np.int64)
    n = len(po) - 1
    if len(patients) != n:
        raise InputError(f"patients.parquet has {len(patients)} rows, patient_offsets {n}")
    n_vis = np.diff(po)
    owner = np.repeat(np.arange(n), n_vis)
    eor = patients["end_of_record"].to_numpy(np.float64)
    min_fu = float(p.min_followup_days)

    # Visits sharing a timestamp form one group; count_le[v] = visits at or before t[v].
    same_next = (owner[1:] == owner[:-1]) & (t[1:] == t[:-1])
    is_last = np.append(~same_next, True) if len(t) else np.zeros(0, bool)
    group = np.cumsum(np.concatenate([[True], ~same_next])) - 1 if len(t) else owner
    last_of_group = np.flatnonzero(is_last)[group] if len(t) else owner
    count_le = last_of_group - po[owner] + 1

    if p.mode == "random_visit":
        enough = is_last & (count_le >= p.min_visits)
        followup = eor[owner] - t
        cand = np.flatnonzero(enough & (followup >= min_fu) & (followup > 0))
        n_cand = np.bincount(owner[cand], minlength=n)
        has_enough = np.bincount(owner[enough], minlength=n) > 0
        ok = n_cand > 0
        # Each candidate visit gets a hash of (seed, patient id, its visit time): a patient's
        # landmarks depend on its own record only (stable as the cohort grows), and a larger
        # count keeps the landmarks of a smaller one (the smallest hashes come first).
        pid = patients["patient"].to_numpy()[owner[cand]]
        u = hash_uniform(landmark_ids(pid, t[cand]), p.seed, "landmark")
        order = np.lexsort((u, owner[cand]))              # by patient, then by hash
        first = (np.cumsum(n_cand) - n_cand)[owner[cand][order]]
        rank = np.arange(len(order)) - first
        chosen = np.sort(cand[order[rank < p.count]])     # by patient, then by time
        index = owner[chosen]
        lm_time, lm_visits = t[chosen], count_le[chosen]
        excluded = {
            "no_visits": int((n_vis == 0).sum()),
            "too_few_visits": int(((n_vis > 0) & ~has_enough).sum()),
            "no_followup": int((has_enough & ~ok).sum()),
        }
    else:
        if p.mode == "age":
            if p.age is None:
                raise ParamsError("outcome.landmark.age: required (years, 0-120) when "
                                  "outcome.landmark.mode is 'age'")
            birth = days_since_epoch(patients["birth_date"])
            lm_all = birth + p.age * 365.25
        else:
            if p.date is None:
                raise ParamsError("outcome.landmark.date: required (YYYY-MM-DD) when "
                                  "outcome.landmark.mode is 'date'")
            lm_all = np.full(n, float((pd.Timestamp(p.date, tz="UTC") - EPOCH).days))
        before = np.bincount(owner[t <= lm_all[owner]], minlength=n) if len(t) else \
            np.zeros(n, np.int64)
        followup = eor - lm_all
        enough = before >= p.min_visits
        ok = enough & (followup >= min_fu) & (followup > 0) & ~np.isnan(lm_all)
        index = np.flatnonzero(ok)
        lm_time, lm_visits = lm_all[ok], before[ok]
        excluded = {
            "no_visits": int((n_vis == 0).sum()),
            "too_few_visits": int(((n_vis > 0) & ~enough).sum()),
            "no_followup": int((enough & ~ok).sum()),
        }
    return Landmarks(index.astype(np.int64), np.asarray(lm_time, np.float64),
                     np.asarray(lm_visits, np.int64), excluded)


def input_window(visit_offsets, patient_offsets, index, landmark_visits, max_visits: int,
                 max_tokens: int) -> np.ndarray:
    """Visits of each landmark that every model reads (``outcome.history``): the most recent
    whole visits up to the landmark, at most ``max_visits`` and at most ``max_tokens`` tokens
    in BEHRT's layout (a visit's codes plus one [SEP]); always at least the landmark visit.

    Vectorised with one ``searchsorted`` over the cumulative visit costs."""
    vo = np.asarray(visit_offsets, np.int64)
    po = np.asarray(patient_offsets, np.int64)
    lm = np.asarray(landmark_visits, np.int64)
    end = po[np.asarray(index, np.int64)] + lm            # one past the landmark visit
    cum = np.concatenate([[0], np.cumsum(np.diff(vo) + 1)])   # tokens before each visit
    start = np.searchsorted(cum, cum[end] - max_tokens, side="left")
    start = np.maximum(start, end - np.minimum(lm, max_visits))
    return np.maximum(end - start, 1).astype(np.int64)


def records_by_landmark(record_patient, landmark_patient) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (record, landmark) of the same patient, for patients with several landmarks:
    ``record_patient`` / ``landmark_patient`` are patient rows (-1: not a landmarked one).
    Vectorised: one sort of the landmarks, one expansion of ranges."""
    rp = np.asarray(record_patient, np.int64)
    order = np.argsort(np.asarray(landmark_patient, np.int64), kind="stable")
    lp = np.asarray(landmark_patient, np.int64)[order]
    lo, hi = np.searchsorted(lp, rp, "left"), np.searchsorted(lp, rp, "right")
    pos, rec, _ = ranges(lo, hi - lo)
    return rec, order[pos]


def landmark_positions(visit_offsets, patient_offsets, index, landmark_visits,
                       input_visits=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model inputs, flat: (token position in codes.npy, row in ``index``, global visit)
    of every token in each patient's first ``landmark_visits`` visits (of those, the last
    ``input_visits``)."""
    po = np.asarray(patient_offsets)
    vo = np.asarray(visit_offsets)
    lm = np.asarray(landmark_visits, np.int64)
    iv = lm if input_visits is None else np.asarray(input_visits, np.int64)
    vis, row, _ = ranges(po[np.asarray(index)] + lm - iv, iv)
    pos, which, _ = ranges(vo[vis], vo[vis + 1] - vo[vis])
    return pos, row[which], vis[which]


def landmark_tokens(codes, visit_offsets, patient_offsets, index, landmark_visits,
                    input_visits=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`landmark_positions` with the token ids instead of their positions."""
    pos, row, vis = landmark_positions(visit_offsets, patient_offsets, index, landmark_visits,
                                       input_visits)
    return np.asarray(codes)[pos].astype(np.int64), row, vis
