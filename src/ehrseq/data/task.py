"""The survival task every model stage reads: sequences + outcomes (landmark rows, splits,
input windows, time bins), the datasets of each split, and the common time grid on which every
model stores its test predictions (scored by the ``evaluate`` stage alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import InputError
from ..params import ParamsError, load_params
from ..repro import hash_uniform
from ..survival.bins import read_bins
from .features import code_counts
from .folds import fold_arg, fold_stage, fold_stats, refold
from .runs import CURVE
from .sequences import EPOCH
from .tensors import SequenceDataset, Sequences

SEQUENCES = Path("data/processed/sequences")
OUTCOMES = Path("data/processed/outcomes")


@dataclass
class SurvivalTask:
    seqs: Sequences
    table: pd.DataFrame  # outcomes.parquet
    cuts: np.ndarray  # time-bin edges (days) for discrete-time models
    horizons: list  # evaluation horizons (days), as the outcomes stage fixed them
    age: np.ndarray  # years at the landmark, per row of ``table``
    male: np.ndarray

    @classmethod
    def load(cls, sequences: str | Path = SEQUENCES, outcomes: str | Path = OUTCOMES):
        seqs = Sequences.load(sequences)
        path = Path(outcomes) / "outcomes.parquet"
        if not path.exists():
            raise InputError(f"{path}: missing; run the outcomes stage first")
        table = pd.read_parquet(path)
        cuts, horizons = read_bins(outcomes)
        for s in ("train", "val", "test"):
            if not (table["split"] == s).any():
                raise InputError(f"{path}: no eligible patient in the {s} split; "
                                 "use a larger cohort (data.patients)")
        pats = seqs.patients.iloc[table["index"].to_numpy()]
        birth = (pd.to_datetime(pats["birth_date"]).dt.tz_localize("UTC") - EPOCH).dt.days
        age = (table["landmark_time"].to_numpy() - birth.to_numpy()) / 365.25
        male = (pats["gender"].astype(str).str.upper() == "M").to_numpy()
        return cls(seqs, table, cuts, horizons, age.astype(float), male)

    def labelled_subset(self, n: int, replicate: int) -> SurvivalTask:
        """The task with ``n`` labelled training patients (all of their landmarks), for a
        learning-curve point (docs/learning_curves.md): the first ``n`` training patients in
        the order of a hash of (``replicate``, patient id), so the subsets of one replicate are
        nested and a patient's place does not depend on the others. The validation split
        (early stopping, learning-rate and hyperparameter choice) shrinks in proportion, to at
        least 2 patients, by the same rule: labels are scarce there too. Test: untouched."""
        t = self.table
        split, pid = t["split"].to_numpy(), t["patient"].to_numpy().astype(str)
        n_train = len(np.unique(pid[split == "train"]))
        if n >= n_train:
            raise ParamsError(f"curve.labelled: {n} is not smaller than the {n_train} training "
                              "patients (the point with every labelled patient is the main "
                              "run); accepted: counts below it")
        keep = split == "test"
        for s, k in (("train", n), ("val", None)):
            pats = np.unique(pid[split == s])
            if k is None:
                k = max(2, round(n * len(pats) / n_train))
            order = pats[np.argsort(hash_uniform(pats, replicate, "labelled"), kind="stable")]
            keep |= (split == s) & np.isin(pid, order[:k])
        rows = np.flatnonzero(keep)
        return SurvivalTask(self.seqs, t.iloc[rows].reset_index(drop=True), self.cuts,
                            self.horizons, self.age[rows], self.male[rows])

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.table["split"].to_numpy() == split)

    def keys(self, split: str) -> dict:
        """The key of each landmark row of ``split`` (patient row, visits up to the landmark),
        saved beside every prediction: ``evaluate`` aligns predictions on it."""
        r, t = self.rows(split), self.table
        return {"index": t["index"].to_numpy()[r],
                "landmark_visits": t["landmark_visits"].to_numpy()[r]}

    def dataset(self, split: str) -> SequenceDataset:
        """The rows of ``split`` as a :class:`SequenceDataset`: the input window up to the
        landmark (``input_visits``, shared by every model), discrete-time targets on the
        task's time bins."""
        r, t = self.rows(split), self.table
        return SequenceDataset(self.seqs, t["index"].to_numpy()[r],
                               t["landmark_visits"].to_numpy()[r], t["duration"].to_numpy()[r],
                               t["event"].to_numpy()[r], cuts=self.cuts,
                               max_visits=self.window[r])

    @property
    def window(self) -> np.ndarray:
        """Input visits of every row (the ``outcome.history`` window; tables written before
        it existed: every visit up to the landmark)."""
        t = self.table
        col = "input_visits" if "input_visits" in t else "landmark_visits"
        return t[col].to_numpy(np.int64)

    def outcome(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        r = self.rows(split)
        return (self.table["duration"].to_numpy(float)[r],
                self.table["event"].to_numpy(int)[r])

    def counts(self, split: str):
        """Bag-of-codes counts up to the landmark for the rows of ``split``."""
        r = self.rows(split)
        s = self.seqs
        return code_counts(s.codes, s.visit_offsets, s.patient_offsets,
                           self.table["index"].to_numpy()[r],
                           self.table["landmark_visits"].to_numpy()[r], s.vocab_size,
                           self.window[r])

    def time_grid(self) -> np.ndarray:
        """Where every model reports S(t|x): see :func:`time_grid`."""
        d_te, _ = self.outcome("test")
        d_tr, e_tr = self.outcome("train")
        return time_grid(self.cuts, self.horizons, d_te, d_tr[e_tr == 1])


def time_grid(cuts, horizons, test_duration, train_event_times=()) -> np.ndarray:
    """The common grid (days, sorted, unique, > 0) on which every model's S(t|x) is stored.

    It holds every distinct test duration (Antolini's C reads S(t_i) there), every training
    event time (where Kaplan–Meier, Cox and RSF curves change, so a step read between grid
    points is their own value), the evaluation horizons and the bin edges. A few hundred to a
    few thousand points: test patients x grid stays a few MB per model (npz compressed).
    """
    parts = [np.asarray(x, dtype=float).ravel()
             for x in (cuts, horizons, test_duration, train_event_times)]
    t = np.unique(np.concatenate(parts))
    return t[t > 0]


def curve_point(argv=None) -> tuple[int | None, int]:
    """``--labelled N --replicate R`` of a stage run as a learning-curve point (None: the main
    run; docs/learning_curves.md)."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--labelled", type=int, default=None)
    parser.add_argument("--replicate", type=int, default=0)
    args, _ = parser.parse_known_args(argv)
    return args.labelled, args.replicate


def stage_name(stage: str, labelled: int | None, replicate: int) -> str:
    """Where a stage writes: ``stage`` for the main run, ``curve/<stage>/n<N>_r<R>`` for a
    learning-curve point (its models/, plots/, data/predictions/ and metrics/ paths)."""
    return stage if labelled is None else f"{CURVE}/{stage}/n{labelled}_r{replicate}"


def load_task(labelled: int | None = None, replicate: int = 0) -> SurvivalTask:
    """:meth:`SurvivalTask.load`, restricted to a learning-curve point's labelled patients."""
    task = SurvivalTask.load()
    return task if labelled is None else task.labelled_subset(labelled, replicate)


def subset_problem(task: SurvivalTask) -> str | None:
    """Why a learning-curve point cannot be trained (no event among its training or validation
    landmarks), or None: the stage records a skip for it instead of failing."""
    for s in ("train", "val"):
        _, e = task.outcome(s)
        if e.sum() == 0:
            n = task.table.loc[task.rows(s), "patient"].nunique()
            return f"no event among the {s} landmarks of its {n} labelled {s} patients"
    return None


@dataclass
class CurveRun:
    """What a stage that may run as a learning-curve point or a cross-fitting fold needs first
    (:func:`curve_run`)."""

    task: SurvivalTask
    """Its task: the labelled subset at a curve point, fold k's splits for ``--fold k``, the
    whole task for the main run."""
    stage: str
    """Where it writes (:func:`stage_name`, :func:`ehrseq.data.folds.fold_stage`)."""
    skip: str | None
    """Why this curve point cannot be trained (:func:`subset_problem`), or None."""
    stats: dict
    """Run statistics of the point (:func:`curve_stats`), written beside its predictions."""
    fold: int | None = None

    def pretrained(self, stage: str) -> Path:
        """The model of pre-training stage ``stage`` this run starts from: its fold's own
        (``models/crossfit/<stage>/f<k>``, which saw no patient of the fold) or the main one."""
        return Path("models") / fold_stage(stage, self.fold)


def curve_run(stage: str, argv=None) -> CurveRun:
    """The prologue of every stage that also runs as a learning-curve point or a cross-fitting
    fold: parse ``--labelled``/``--replicate``/``--fold``, load the task (its labelled subset,
    or fold k's splits), name the outputs and say whether the point must be skipped."""
    labelled, replicate = curve_point(argv)
    fold = fold_arg(argv)
    if fold is None:
        task = load_task(labelled, replicate)
        return CurveRun(task, stage_name(stage, labelled, replicate),
                        (labelled and subset_problem(task)) or None,
                        curve_stats(task, labelled, replicate))
    if labelled is not None:
        raise ParamsError("--fold and --labelled together: a cross-fitting fold trains on "
                          "every labelled patient outside it; accepted: one or the other")
    params = load_params()
    task = SurvivalTask.load()
    task.table = refold(task.table, fold, params)
    task.seqs.patients = refold(task.seqs.patients, fold, params)
    for s in ("train", "val", "test"):
        if not len(task.rows(s)):
            raise InputError(f"crossfit fold {fold}: no landmark in its {s} split; use fewer "
                             "folds (crossfit.folds) or a larger cohort (data.patients)")
    return CurveRun(task, fold_stage(stage, fold), None, fold_stats(fold, params), fold)


def curve_stats(task: SurvivalTask, labelled: int | None, replicate: int) -> dict:
    """Run statistics of a learning-curve point, written beside its predictions."""
    if labelled is None:
        return {}
    return {"labelled": labelled, "replicate": replicate,
            "train_landmarks": len(task.rows("train")),
            "val_patients": int(task.table.loc[task.rows("val"), "patient"].nunique())}
