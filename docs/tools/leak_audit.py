"""How much post-landmark data the old visit rule let into the model inputs (issue 10's audit).

The old rule dated a visit (an encounter, else a calendar day) at its earliest event, so a
condition whose START precedes its encounter back-dated the whole encounter. This script reads a
workspace's ``data/interim/events.parquet`` and ``data/processed/outcomes/outcomes.parquet``
and counts, for every landmark, the events of the visits that rule put at or before the
landmark, and those of them that became known only after it (the later of the event's time and
its encounter's start). Run it on a workspace built by the old code (before commit 7c3de2a) to
measure the leak, and on a new one to see that its own ``audit_*`` metrics are 0:

    python docs/tools/leak_audit.py /path/to/workspace
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import duckdb

KINDS = ("condition", "medication", "procedure", "observation", "immunization", "allergy",
         "careplan", "device")


def audit_old_rule(root: Path) -> dict:
    ev = root / "data/interim/events.parquet"
    out = root / "data/processed/outcomes/outcomes.parquet"
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    kinds = ", ".join(f"'{k}'" for k in KINDS)
    row = con.execute(f"""
        WITH enc AS (SELECT patient, encounter, min(time) AS start
                     FROM read_parquet('{ev}') WHERE kind = 'encounter' GROUP BY ALL),
        e AS (SELECT e.patient, e.time,
                     COALESCE(e.encounter, 'day:' || strftime(e.time, '%Y-%m-%d')) AS vkey,
                     greatest(e.time, COALESCE(enc.start, e.time)) AS known
              FROM read_parquet('{ev}') e LEFT JOIN enc USING (patient, encounter)
              WHERE e.kind IN ({kinds})),
        v AS (SELECT patient, vkey, min(time) AS vstart FROM e GROUP BY ALL),
        lm AS (SELECT patient, to_timestamp(landmark_time * 86400) AS lt
               FROM read_parquet('{out}')),
        inp AS (SELECT e.patient, epoch(e.known) - epoch(lm.lt) AS lag
                FROM e JOIN v USING (patient, vkey) JOIN lm USING (patient)
                WHERE v.vstart <= lm.lt)
        SELECT count(*), count(*) FILTER (WHERE lag > 0),
               count(DISTINCT patient) FILTER (WHERE lag > 30 * 86400),
               count(DISTINCT patient) FILTER (WHERE lag > 365 * 86400),
               COALESCE(max(lag) / 86400, 0), (SELECT count(*) FROM lm)
        FROM inp""").fetchone()
    con.close()
    keys = ("input_events", "input_events_known_after_landmark",
            "patients_known_30d_after_landmark", "patients_known_365d_after_landmark",
            "max_days_known_after_landmark", "landmarks")
    return dict(zip(keys, [round(x, 1) if isinstance(x, float) else x for x in row],
                    strict=True))


if __name__ == "__main__":
    if sys.argv[1:] in (["-h"], ["--help"]):
        print(__doc__)
        sys.exit(0)
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    print(json.dumps(audit_old_rule(root), indent=1))
