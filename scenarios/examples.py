"""Custom synthetic scenarios (docs/outcomes.md, "A scenario of your own").

Use one with ``outcome.synthetic.scenario: custom`` and
``outcome.synthetic.function: "scenarios/examples.py:<name>"``, for example::

    dvc exp run -S outcome.synthetic.scenario=custom \\
        -S outcome.synthetic.function=scenarios/examples.py:high_last_sbp

A scenario gets ``history`` (one row per input token: row, days_before, visit, token, code,
value) and ``landmarks`` (one row per landmark: row, patient, landmark_time, age_days, sex)
and returns one raw risk per landmark; the pipeline standardises it and scales it by
``outcome.synthetic.signal``. Files under scenarios/ are a dependency of the outcomes stage.
"""

import numpy as np
import pandas as pd


def short_gap(history: pd.DataFrame, landmarks: pd.DataFrame) -> np.ndarray:
    """The positive control's ``short_gap`` through this interface: -ln(1 + days between
    the last two input visits), 0 with a single visit (tests/test_outcomes.py checks it gives
    the built-in effect's true risk)."""
    days = history.groupby(["row", "visit"])["days_before"].first().unstack()
    gap = (days[1] - days[0]).reindex(landmarks["row"]).to_numpy() if 1 in days else \
        np.full(len(landmarks), np.nan)
    return np.where(np.isfinite(gap), -np.log1p(np.maximum(gap, 0.0)), 0.0)


def high_last_sbp(history: pd.DataFrame, landmarks: pd.DataFrame) -> np.ndarray:
    """A hypothesis in the data's own units: the last systolic blood pressure (LOINC 8480-6)
    in the window is 140 mmHg or more; plus age in decades."""
    sbp = history[(history["code"] == "LOINC/8480-6") & history["value"].notna()]
    last = sbp.sort_values(["row", "visit"]).groupby("row")["value"].first()
    high = (last.reindex(landmarks["row"]) >= 140).to_numpy(float)
    return high + landmarks["age_days"].to_numpy() / 3652.5
