"""Real outcomes that Synthea itself simulated: death and the onset of a condition.

Both return, for every landmark (several per patient with ``outcome.landmark.count`` > 1), ``(duration, event, keep, reason)``: days from the
landmark to the event or to the end of record (administrative censoring), the event flag, which
patients stay eligible and the name under which the others are counted in the metrics.

- ``mortality``: the event is the death date (Synthea's DEATHDATE, 00:00 UTC) after the
  landmark. Landmarks need follow-up after them, so the dead have died after their landmark.
- ``onset:<code>``: the event is the first time a condition record with that SNOMED code
  became known (its ``known_time``: never before its encounter's start, see
  :mod:`ehrseq.data.visits`) after the landmark. Landmarks at which such a record was already
  known (the condition already known) are excluded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..data.visits import condition_records
from ..io import InputError
from ..params import SequencesParams
from .landmarks import Landmarks, records_by_landmark


def mortality(lm: Landmarks, death_days, end_of_record):
    """``death_days``/``end_of_record``: days since epoch for every sequences patient."""
    death = np.asarray(death_days, np.float64)[lm.index]
    eor = np.asarray(end_of_record, np.float64)[lm.index]
    died_before = death <= lm.landmark_time   # NaN (alive) compares False
    event = (death > lm.landmark_time).astype(np.int64)
    duration = np.where(event == 1, death, eor) - lm.landmark_time
    return duration, event, ~died_before, "died_before_landmark"


def _lit(s) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def onset(events: str | Path, patient_ids, lm: Landmarks, code: str, end_of_record,
          event_kinds=None):
    """Onset of condition ``code`` after the landmark (see the module docstring).

    ``event_kinds``: the ``sequences.event_kinds`` that formed the visits. A record in the
    model inputs (its visit dated at or before the landmark) was known by then, so every
    excluded patient includes every one whose inputs hold the condition.
    """
    import duckdb

    events = Path(events)
    if not events.is_file():
        raise InputError(f"{events}: missing; run the ingest stage first")
    kinds = event_kinds or SequencesParams().event_kinds
    rows = condition_records(events, kinds, codes=[code])
    if rows.empty:
        con = duckdb.connect()
        top = con.execute(f"""
            SELECT code, any_value(description) AS description, count(DISTINCT patient) AS n
            FROM read_parquet({_lit(events)}) WHERE kind = 'condition' GROUP BY code
            ORDER BY n DESC, code LIMIT 10""").fetchall()
        con.close()
        listing = "; ".join(f"{c} ({d}, {k} patients)" for c, d, k in top)
        raise InputError(f"outcome.name 'onset:{code}': SNOMED code {code} never occurs as a "
                         f"condition in {events}; the most frequent condition codes are: "
                         f"{listing or 'none (no condition events)'}")

    m = len(lm.index)
    pidx = pd.Index(np.asarray(patient_ids)).get_indexer(rows["patient"])
    rec, r = records_by_landmark(pidx, lm.index)     # every record against every landmark
    t = rows["t_us"].to_numpy(np.float64)[rec] / 86_400e6   # when the record became known
    pre = t <= lm.landmark_time[r]
    known = np.bincount(r[pre], minlength=m) > 0
    first = np.full(m, np.inf)
    np.minimum.at(first, r[~pre], t[~pre])
    eor = np.asarray(end_of_record, np.float64)[lm.index]
    event = (np.isfinite(first) & ~known).astype(np.int64)
    duration = np.where(event == 1, first, eor) - lm.landmark_time
    return duration, event, ~known, f"has_{code}_at_landmark"
