"""When a fact became known, and how facts become visits: the one definition every stage uses.

- ``known_time`` of an event (written by ingest): the later of its own time and the start of
  the encounter it is linked to. Synthea links many condition records (e.g. "Medication review
  due", sinusitis) to an encounter that starts long after the condition's START; such a record
  is known from that encounter on, never from its START.
- A visit is an encounter (events without one: one visit per calendar day). It is dated when
  the last of its events became known: ``visit_time = max(known_time)``. For an ordinary
  encounter that is its start; for a back-linked condition it is the later encounter's start,
  not the condition's onset; for a stay of several days, its last fact.
- The model inputs at a landmark ``t`` are the visits with ``visit_time <= t``: every event in
  them was known at ``t``. Onset outcomes, trajectory labels and phenotypes decide "already
  known at the landmark" by the same rule (:func:`condition_records`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import duckdb
import pandas as pd

from ..io import InputError

US_PER_DAY = 86_400e6


def lit(s) -> str:
    """A SQL string literal."""
    return "'" + str(s).replace("'", "''") + "'"


def known_time_sql(rel: str) -> str:
    """``rel`` (a relation with patient, encounter, kind, time) plus ``known_time``."""
    return f"""
        SELECT r.*, greatest(r.time, COALESCE(s.enc_time, r.time)) AS known_time
        FROM {rel} r LEFT JOIN (
            SELECT patient, encounter, min(time) AS enc_time FROM {rel}
            WHERE kind = 'encounter' AND encounter IS NOT NULL GROUP BY patient, encounter
        ) s ON r.patient = s.patient AND r.encounter = s.encounter"""


def events_sql(con: duckdb.DuckDBPyConnection, events: str | Path) -> str:
    """A relation over ``events.parquet`` that always has ``known_time`` (computed by the same
    rule when a hand-made table lacks the column)."""
    src = f"read_parquet({lit(events)})"
    cols = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
    missing = {"patient", "time", "encounter", "kind", "code"} - cols
    if missing:
        raise InputError(f"{events}: columns {sorted(missing)} missing; expected the events "
                         "contract (patient, time, encounter, kind, code, known_time)")
    if "known_time" in cols:
        return f"(SELECT * FROM {src})"
    return f"({known_time_sql(f'(SELECT * FROM {src})')})"


def visit_events_sql(rel: str, kinds: Sequence[str]) -> str:
    """Events of ``kinds`` in ``rel`` with their visit key ``vkey`` and ``visit_time``."""
    return f"""
        WITH e AS (
            SELECT *, COALESCE(encounter, 'day:' || strftime(time, '%Y-%m-%d')) AS vkey
            FROM {rel} WHERE kind IN ({", ".join(lit(k) for k in kinds)}))
        SELECT e.*, v.visit_time FROM e JOIN (
            SELECT patient, vkey, max(known_time) AS visit_time FROM e GROUP BY patient, vkey
        ) v USING (patient, vkey)"""


def condition_records(events: str | Path, kinds: Sequence[str],
                      codes: Sequence[str] | None = None,
                      patients: Sequence[str] | None = None) -> pd.DataFrame:
    """``patient, code, t_us, vs_us``: every condition record (of ``codes``; ``None``: all, of
    ``patients``; ``None``: all) with the time it became known and its visit's time, in
    microseconds since epoch. Visits are formed from ``kinds`` plus conditions."""
    events = Path(events)
    if not events.is_file():
        raise InputError(f"{events}: missing; run the ingest stage first")
    kinds = sorted(set(kinds) | {"condition"})
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone='UTC'")
        rel = events_sql(con, events)
        if patients is not None:
            con.register("cohort", pd.DataFrame({"patient": pd.Series(patients, dtype=str)}))
            rel = f"(SELECT * FROM {rel} x SEMI JOIN cohort c ON x.patient = c.patient)"
        in_codes = "" if codes is None else \
            f"AND code IN ({', '.join(lit(c) for c in codes) or 'NULL'})"
        df = con.execute(f"""
            SELECT patient, code, epoch_us(CAST(known_time AS TIMESTAMPTZ)) AS t_us,
                   epoch_us(CAST(visit_time AS TIMESTAMPTZ)) AS vs_us
            FROM ({visit_events_sql(rel, kinds)})
            WHERE kind = 'condition' {in_codes}
            ORDER BY patient, vs_us, code""").df()
    except duckdb.Error as err:
        raise InputError(f"{events}: cannot read condition records ({err}); expected the "
                         "events contract (patient, time, encounter, kind, code)") from None
    finally:
        con.close()
    df["code"] = df["code"].astype(str)
    return df


def audit_inputs(events: str | Path, sequences: str | Path, table: pd.DataFrame,
                 kinds: Sequence[str]) -> dict:
    """Check, from the data alone, that no model input was known after its landmark.

    Every event of ``kinds`` in every landmark's input window (``table``: ``outcomes.parquet``
    rows, with ``index``, ``landmark_visits``, ``input_visits``, ``landmark_time``; the window's
    visits named by ``sequences/visits.parquet``) is joined back to ``events.parquet``, and its
    availability is recomputed from the raw encounter rows (the later of its own time and its
    encounter's start), independently of the ``known_time`` column. Returns counts and the
    largest lag in days (0 when nothing leaks).
    """
    import numpy as np

    from .tensors import ranges  # data -> data: no import of the outcomes package

    sequences = Path(sequences)
    if not (sequences / "visits.parquet").is_file():
        raise InputError(f"{sequences / 'visits.parquet'}: missing (the sequences stage writes "
                         "it); re-run the sequences stage")
    visits = pd.read_parquet(sequences / "visits.parquet")
    po = np.load(sequences / "patient_offsets.npy")
    lm = table["landmark_visits"].to_numpy(np.int64)
    iv = table["input_visits"].to_numpy(np.int64) if "input_visits" in table else lm
    vis, row, _ = ranges(po[table["index"].to_numpy(np.int64)] + lm - iv, iv)
    inputs = pd.DataFrame({"patient": visits["patient"].to_numpy()[vis],
                           "vkey": visits["visit_key"].to_numpy()[vis],
                           "landmark_us": (table["landmark_time"].to_numpy(np.float64)[row]
                                           * US_PER_DAY).round().astype(np.int64)})
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone='UTC'")
        con.register("inputs", inputs)
        src = f"read_parquet({lit(events)})"
        n, late, lag = con.execute(f"""
            WITH enc AS (SELECT patient, encounter, min(time) AS start FROM {src}
                         WHERE kind = 'encounter' GROUP BY ALL),
            ev AS (SELECT e.patient,
                          COALESCE(e.encounter, 'day:' || strftime(e.time, '%Y-%m-%d')) AS vkey,
                          epoch_us(greatest(e.time, COALESCE(enc.start, e.time))) AS avail_us
                   FROM {src} e LEFT JOIN enc USING (patient, encounter)
                   WHERE e.kind IN ({", ".join(lit(k) for k in kinds)}))
            SELECT count(*), count(*) FILTER (WHERE avail_us > landmark_us),
                   COALESCE(max(avail_us - landmark_us) FILTER (WHERE avail_us > landmark_us), 0)
            FROM ev JOIN inputs USING (patient, vkey)""").fetchone()
    finally:
        con.close()
    return {"audit_input_events": int(n), "audit_input_events_known_after_landmark": int(late),
            "audit_max_days_known_after_landmark": float(lag) / US_PER_DAY}
