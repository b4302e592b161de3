"""``outcome.synthetic.scenario: custom``: a hazard written by the user (docs/outcomes.md).

``outcome.synthetic.function: "scenarios/<file>.py:<name>"`` is called once, as
``name(history, landmarks)``, with two DataFrames built from exactly the inputs every model
reads at each landmark (the window of ``outcome.history``):

- ``landmarks``: one row per landmark, in the order of outcomes.parquet: ``row`` (0..n-1),
  ``patient``, ``landmark_time`` (days since 1970), ``age_days``, ``sex``;
- ``history``: one row per input token: ``row`` (its landmark), ``days_before`` (landmark
  time minus the visit's time, >= 0), ``visit`` (0 = the landmark's visit, 1 = the one
  before, ...), ``token`` (the vocabulary string), ``code`` (system/code without a value bin)
  and ``value`` (the observation's value in its own unit, NaN where none; a visit's median
  where a code repeats, outliers beyond 5 training SDs at that bound).

It returns one finite raw risk per landmark, or ``(risk, features)`` with ``features`` a
DataFrame of the planted features by name (numeric columns, one row per landmark: what the
evaluate stage's representation probes try to read from each model);
:func:`ehrseq.outcomes.synthetic.subtypes_and_risk` standardises the risk and scales it by
``signal``. The file must lie under ``scenarios/`` (a
dependency of the outcomes stage: editing it re-runs outcomes and what follows). Every failure
(file, name, an exception inside the function, a wrong length, a non-numeric, non-finite or
constant risk) is an :class:`InputError` naming the file, the function and what was wrong.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import InputError
from .landmarks import Landmarks, days_since_epoch, landmark_positions

SCENARIOS = "scenarios"


def load_function(spec: str) -> tuple[str, Callable]:
    """``scenarios/<file>.py:<name>`` -> (its label, the function)."""
    file, sep, name = str(spec).rpartition(":")
    path = Path(file)
    if not sep or not name or path.suffix != ".py" or path.is_absolute() \
            or path.parts[:1] != (SCENARIOS,) or ".." in path.parts:
        raise InputError(f"outcome.synthetic.function {spec!r}: accepted: "
                         f"'{SCENARIOS}/<file>.py:<function name>', a file under {SCENARIOS}/ "
                         "(the outcomes stage's dependency), relative to the project root")
    if not path.is_file():
        raise InputError(f"{path}: missing (outcome.synthetic.function {spec!r})")
    mod_spec = importlib.util.spec_from_file_location(f"ehrseq_scenario_{path.stem}", path)
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception as e:  # the user's file: any error is theirs to see, named
        raise InputError(f"{path}: importing it raised {type(e).__name__}: {e}") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        found = sorted(k for k, v in vars(module).items()
                       if callable(v) and getattr(v, "__module__", None) == module.__name__)
        raise InputError(f"{path}: no function {name!r} (outcome.synthetic.function); "
                         f"functions there: {found}")
    return f"{path}:{name}", fn


def value_codes(tokens) -> np.ndarray:
    """Per token id its code: the token without a ``:q<i>`` value bin."""
    out = []
    for t in tokens:   # one pass over the vocabulary, not over events
        head, sep, q = str(t).rpartition(":q")
        out.append(head if sep and q.isdigit() else str(t))
    return np.asarray(out, dtype=object)


def scenario_frames(seqs, lm: Landmarks) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(history, landmarks) as the module docstring describes them."""
    pos, row, vis = landmark_positions(seqs.visit_offsets, seqs.patient_offsets, lm.index,
                                       lm.landmark_visits, lm.input_visits)
    tok = np.asarray(seqs.codes)[pos].astype(np.int64)
    tokens = np.asarray(seqs.vocab["tokens"], dtype=object)
    codes = value_codes(tokens)
    last = np.asarray(seqs.patient_offsets)[lm.index] + lm.landmark_visits - 1
    z = np.asarray(seqs.values, np.float64)[pos]
    value = np.full(len(pos), np.nan)
    stats = seqs.value_stats or {"codes": [], "mean": [], "sd": []}
    where = {c: i for i, c in enumerate(stats["codes"])}
    k = np.array([where.get(c, -1) for c in codes], np.int64)[tok]   # lookup by token id
    has = np.isfinite(z) & (k >= 0)
    mean, sd = np.asarray(stats["mean"], np.float64), np.asarray(stats["sd"], np.float64)
    value[has] = mean[k[has]] + z[has] * sd[k[has]]
    history = pd.DataFrame({
        "row": row.astype(np.int64),
        "days_before": np.maximum(lm.landmark_time[row] - np.asarray(seqs.visit_time)[vis], 0.0),
        "visit": (last[row] - vis).astype(np.int64),
        "token": tokens[tok], "code": codes[tok], "value": value})
    pats = seqs.patients
    birth = days_since_epoch(pats["birth_date"].to_numpy()[lm.index]) \
        if "birth_date" in pats else np.full(len(lm.index), np.nan)
    landmarks = pd.DataFrame({
        "row": np.arange(len(lm.index), dtype=np.int64),
        "patient": pats["patient"].to_numpy()[lm.index].astype(str),
        "landmark_time": lm.landmark_time.astype(np.float64),
        "age_days": lm.landmark_time - birth,
        "sex": pats["gender"].to_numpy()[lm.index] if "gender" in pats else None})
    return history, landmarks


def custom_risk(seqs, lm: Landmarks, spec: str) -> tuple[np.ndarray, pd.DataFrame]:
    """The raw risk of ``spec`` (``outcome.synthetic.function``) for the landmarks ``lm``, and
    its features (an empty DataFrame when the function returns the risk alone)."""
    label, fn = load_function(spec)
    history, landmarks = scenario_frames(seqs, lm)
    try:
        out = fn(history, landmarks)
    except Exception as e:  # the user's code: report it, named, as bad input
        raise InputError(f"{label} raised {type(e).__name__}: {e}") from e
    m = len(landmarks)
    features = pd.DataFrame(index=range(m))
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], pd.DataFrame):
        out, features = out
        bad = [c for c in features if not pd.api.types.is_numeric_dtype(features[c])]
        if len(features) != m or bad:
            raise InputError(f"{label} returned features of {len(features)} rows with "
                             f"non-numeric columns {bad}; accepted: {m} rows, numeric columns")
        features = features.reset_index(drop=True).astype(np.float64)
        features.columns = [str(c) for c in features.columns]
    risk = np.asarray(out)
    if risk.shape != (m,):
        raise InputError(f"{label} returned shape {risk.shape}; accepted: one risk per "
                         f"landmark, shape ({m},)")
    if risk.dtype == bool or not np.issubdtype(risk.dtype, np.number) \
            or np.issubdtype(risk.dtype, np.complexfloating):
        raise InputError(f"{label} returned {risk.dtype} values; accepted: real numbers")
    risk = risk.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(risk))
    if len(bad):
        raise InputError(f"{label} returned a non-finite risk ({risk[bad[0]]}) at row "
                         f"{bad[0]} (patient {landmarks['patient'][bad[0]]}) and "
                         f"{len(bad) - 1} more; accepted: finite numbers")
    if m and np.ptp(risk) == 0:
        raise InputError(f"{label} returned the same risk ({risk[0]}) for every landmark; "
                         "accepted: a risk that varies (it is standardised)")
    return risk, features
