"""Real outcomes that Synthea itself simulated: death and the onset of a condition.

Both return, for the landmarked patients, ``(duration, event, keep, reason)``: days from the
landmark to the event or to the end of record (administrative censoring), the event flag, which
patients stay eligible and the name under which the others are counted in the metrics.

- ``mortality``: the event is the death date (Synthea's DEATHDATE, 00:00 UTC) after the
  landmark. Landmarks need follow-up after them, so the dead have died after their landmark.
- ``onset:<code>``: the event is the first condition record with that SNOMED code that is not
  in the model inputs, i.e. whose visit starts after the landmark. Patients with such a record
  in a visit at or before the landmark (the condition already known) are excluded.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from ..io import InputError
from ..params import SequencesParams
from .landmarks import Landmarks


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

    ``event_kinds``: the ``sequences.event_kinds`` that formed the visits; a visit starts at
    its earliest event of those kinds (plus conditions), exactly as the sequences stage does,
    so "in the model inputs" here means the same as in the arrays.
    """
    events = Path(events)
    if not events.is_file():
        raise InputError(f"{events}: missing; run the ingest stage first")
    kinds = sorted(set(event_kinds or SequencesParams().event_kinds) | {"condition"})
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    src = f"read_parquet({_lit(events)})"
    n = con.execute(f"SELECT count(*) FROM {src} WHERE kind = 'condition' AND code = ?",
                    [code]).fetchone()[0]
    if n == 0:
        top = con.execute(f"""
            SELECT code, any_value(description) AS description, count(DISTINCT patient) AS n
            FROM {src} WHERE kind = 'condition' GROUP BY code ORDER BY n DESC, code
            LIMIT 10""").fetchall()
        con.close()
        listing = "; ".join(f"{c} ({d}, {k} patients)" for c, d, k in top)
        raise InputError(f"outcome.name 'onset:{code}': SNOMED code {code} never occurs as a "
                         f"condition in {events}; the most frequent condition codes are: "
                         f"{listing or 'none (no condition events)'}")
    rows = con.execute(f"""
        WITH ev AS (
            SELECT patient, time, kind, code,
                   COALESCE(encounter, 'day:' || strftime(time, '%Y-%m-%d')) AS vkey
            FROM {src} WHERE kind IN ({", ".join(_lit(k) for k in kinds)})),
        v AS (SELECT patient, vkey, min(time) AS vstart FROM ev GROUP BY patient, vkey)
        SELECT ev.patient, epoch_us(ev.time) AS t_us, epoch_us(v.vstart) AS vs_us
        FROM ev JOIN v USING (patient, vkey)
        WHERE ev.kind = 'condition' AND ev.code = ?""", [code]).df()
    con.close()

    m = len(lm.index)
    row_of = np.full(len(patient_ids), -1, np.int64)
    row_of[lm.index] = np.arange(m)
    pidx = pd.Index(np.asarray(patient_ids)).get_indexer(rows["patient"])
    r = np.where(pidx >= 0, row_of[np.maximum(pidx, 0)], -1)
    ok = r >= 0
    r = r[ok]
    t = rows["t_us"].to_numpy(np.float64)[ok] / 86_400e6
    vs = rows["vs_us"].to_numpy(np.float64)[ok] / 86_400e6
    pre = vs <= lm.landmark_time[r]
    known = np.bincount(r[pre], minlength=m) > 0
    first = np.full(m, np.inf)
    np.minimum.at(first, r[~pre], t[~pre])
    eor = np.asarray(end_of_record, np.float64)[lm.index]
    event = (np.isfinite(first) & ~known).astype(np.int64)
    duration = np.where(event == 1, first, eor) - lm.landmark_time
    return duration, event, ~known, f"has_{code}_at_landmark"
