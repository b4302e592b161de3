"""Real outcomes that Synthea itself simulated: death and the onset of a condition.

Both return, for every landmark (several per patient with ``outcome.landmark.count`` > 1), ``(duration, event, keep, reason)``: days from the
landmark to the event or to the end of record (administrative censoring), the event flag, which
patients stay eligible and the name under which the others are counted in the metrics.

- ``mortality``: the event is the death date (Synthea's DEATHDATE, 00:00 UTC) after the
  landmark. Landmarks need follow-up after them, so the dead have died after their landmark.
- ``lab_below:<code>:<value>`` / ``lab_above:...``: a numeric observation crossing a threshold
  (:func:`lab`), e.g. ``lab_below:33914-3:60``, eGFR below 60 (CKD stage 3).
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


def lab(events: str | Path, patient_ids, lm: Landmarks, code: str, op: str, threshold: float,
        end_of_record):
    """A numeric observation ``code`` crossing ``threshold`` (``op``: ``below`` / ``above``)
    after the landmark, e.g. eGFR (LOINC 33914-3) below 60 mL/min/1.73 m², the threshold of
    chronic kidney disease stage 3 that Synthea's kidney module announces by eGFR values. The
    event is the first such value that became known after the landmark; landmarks at which one
    was already known are excluded. A patient never measured after the landmark is censored at
    the end of record, like every other outcome."""
    import duckdb

    events = Path(events)
    if not events.is_file():
        raise InputError(f"{events}: missing; run the ingest stage first")
    cmp = "<" if op == "below" else ">"
    con = duckdb.connect()
    rows = con.execute(f"""
        SELECT patient, epoch_us(CAST(known_time AS TIMESTAMPTZ)) AS t_us
        FROM read_parquet({_lit(events)})
        WHERE kind = 'observation' AND code = {_lit(code)} AND value IS NOT NULL
              AND value {cmp} {float(threshold)!r}""").df()
    if rows.empty:
        top = con.execute(f"""
            SELECT code, any_value(description) AS description, count(DISTINCT patient) AS n,
                   min(value), max(value)
            FROM read_parquet({_lit(events)}) WHERE kind = 'observation' AND value IS NOT NULL
            GROUP BY code ORDER BY (code = {_lit(code)}) DESC, n DESC, code LIMIT 8""").fetchall()
        con.close()
        listing = "; ".join(f"{c} ({d}, {k} patients, {lo:.4g} to {hi:.4g})"
                            for c, d, k, lo, hi in top)
        raise InputError(f"outcome.name 'lab_{op}:{code}:{threshold:g}': no numeric "
                         f"observation {code} {op} {threshold:g} in {events}; numeric "
                         f"observations (patients, range): {listing or 'none'}")
    con.close()
    dur, event, keep = first_known_after(rows, patient_ids, lm, end_of_record)
    return dur, event, keep, f"{code}_{op}_{threshold:g}_at_landmark"


def first_known_after(rows: pd.DataFrame, patient_ids, lm: Landmarks, end_of_record):
    """(duration, event, keep) per landmark from event records (``patient``, ``t_us``: when
    each became known): the event is the first record known after the landmark; landmarks at
    which one was already known are not kept; the rest are censored at the end of record."""
    m = len(lm.index)
    pidx = pd.Index(np.asarray(patient_ids)).get_indexer(rows["patient"])
    rec, r = records_by_landmark(pidx, lm.index)     # every record against every landmark
    t = rows["t_us"].to_numpy(np.float64)[rec] / 86_400e6
    pre = t <= lm.landmark_time[r]
    known = np.bincount(r[pre], minlength=m) > 0
    first = np.full(m, np.inf)
    np.minimum.at(first, r[~pre], t[~pre])
    eor = np.asarray(end_of_record, np.float64)[lm.index]
    event = (np.isfinite(first) & ~known).astype(np.int64)
    return np.where(event == 1, first, eor) - lm.landmark_time, event, ~known


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

    dur, event, keep = first_known_after(rows, patient_ids, lm, end_of_record)
    return dur, event, keep, f"has_{code}_at_landmark"
