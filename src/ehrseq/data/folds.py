"""Cross-fitting folds (``crossfit.folds``; docs/learning_curves.md, "Cross-fitting").

Patient ``p`` is in fold ``floor(K * u(p))``, ``u`` a hash of (salt, patient id): like the
splits, a patient's fold does not depend on the others or on the cohort's size. For fold ``k``
its patients are the test split; every other patient is a validation patient when a second
hash falls below ``val / (train + val)`` of ``sequences.split`` (the main split's proportions),
else a training patient. Pre-training corpus patients stay ``corpus``. A stage runs as fold
``k`` with ``--fold k``; every model it trains, its pre-training included, then sees no patient
of fold ``k``, and ``evaluate`` joins the K held-out folds into one scoring of every patient.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from ..params import Params, ParamsError
from ..repro import hash_uniform
from .runs import CROSSFIT


def fold_arg(argv=None) -> int | None:
    """``--fold k`` of a stage's command line (None: the main run)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--fold", type=int, default=None)
    return parser.parse_known_args(argv)[0].fold


def fold_of(patients, n_folds: int, salt: str) -> np.ndarray:
    """The fold (0..K-1) of each patient id."""
    u = hash_uniform(np.asarray(patients).astype(str), 0, f"fold:{salt}")
    return np.minimum((u * n_folds).astype(np.int64), n_folds - 1)


def fold_split(patients, split, fold: int, params: Params) -> np.ndarray:
    """The split of each row (``patients``: its patient id, ``split``: its split in the main
    run) when fold ``fold`` is held out: ``test`` for the fold's patients, ``val`` or ``train``
    for the others, ``corpus`` kept."""
    folds, sp = params.crossfit.folds, params.sequences.split
    if fold not in folds:
        raise ParamsError(f"--fold {fold}: crossfit.folds is {folds}; accepted: one of them "
                          "(set crossfit.folds, e.g. [0, 1, 2, 3, 4])")
    ids = np.asarray(patients).astype(str)
    out = np.where(hash_uniform(ids, 0, f"fold-val:{sp.salt}") < sp.val / (sp.train + sp.val),
                   "val", "train").astype(object)
    out[fold_of(ids, len(folds), sp.salt) == fold] = "test"
    out[np.asarray(split) == "corpus"] = "corpus"
    return out


def refold(frame: pd.DataFrame, fold: int | None, params: Params) -> pd.DataFrame:
    """``frame`` (with ``patient`` and ``split`` columns) with fold ``fold``'s splits (a copy);
    unchanged for the main run (``fold`` None)."""
    if fold is None:
        return frame
    return frame.assign(split=fold_split(frame["patient"], frame["split"], fold, params))


def resplit(fold: int | None, params: Params):
    """:func:`refold` for fold ``fold`` as a function of the frame (None for the main run)."""
    return None if fold is None else (lambda frame: refold(frame, fold, params))


def fold_stage(stage: str, fold: int | None) -> str:
    """Where a stage run as fold ``fold`` writes: ``crossfit/<stage>/f<k>`` (its models/,
    plots/, data/predictions/ and metrics/ paths); ``stage`` for the main run."""
    return stage if fold is None else f"{CROSSFIT}/{stage}/f{fold}"


def fold_stats(fold: int | None, params: Params) -> dict:
    """Run statistics of a fold (written beside its outputs; part of its checkpoints' run key,
    so that another number of folds never resumes them); {} for the main run."""
    return {} if fold is None else {"fold": fold, "folds": len(params.crossfit.folds)}
