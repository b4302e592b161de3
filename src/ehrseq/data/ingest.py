"""Synthea CSV export (2.x / 3.x) → events and patients tables, streamed through DuckDB.

Columns are matched by name (case-insensitive), so any Synthea 2.x or 3.x export works: the
differences between versions (procedures ``DATE`` vs ``START``, observations ``CATEGORY``,
``SYSTEM`` columns, patients ``FIPS``/``INCOME``) are optional columns here. DuckDB reads every
CSV as text and writes Parquet with a bounded memory limit, spilling to disk, so memory does
not grow with the export (see bench/ingest.py).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import duckdb

from ..io import InputError
from .visits import known_time_sql

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TableSpec:
    file: str
    kind: str
    time: tuple[str, ...]  # candidate columns, first present wins
    system: str  # default code system when the file has no SYSTEM column
    encounter: str = "ENCOUNTER"
    numeric: bool = False


TABLES = (
    TableSpec("encounters.csv", "encounter", ("START", "DATE"), "SNOMED-CT", encounter="ID"),
    TableSpec("conditions.csv", "condition", ("START",), "SNOMED-CT"),
    TableSpec("medications.csv", "medication", ("START",), "RxNorm"),
    TableSpec("procedures.csv", "procedure", ("START", "DATE"), "SNOMED-CT"),
    TableSpec("observations.csv", "observation", ("DATE",), "LOINC", numeric=True),
    TableSpec("immunizations.csv", "immunization", ("DATE",), "CVX"),
    TableSpec("allergies.csv", "allergy", ("START",), "SNOMED-CT"),
    TableSpec("careplans.csv", "careplan", ("START",), "SNOMED-CT"),
    TableSpec("devices.csv", "device", ("START",), "SNOMED-CT"),
)
REQUIRED_FILES = ("patients.csv", "encounters.csv")
PATIENTS_PER_RANGE = 10_000
"""Patients whose events are sorted and written at once: past one range, events.parquet is the
ranges' sorted parts one after the other (the same rows in the same order), so DuckDB sorts
and spills one range, not the export."""
ROWS_PER_BATCH = 100_000
"""CSV rows numbered and written at a time (see _read)."""
PATIENT_REQUIRED = ("ID", "BIRTHDATE")
PATIENT_OPTIONAL = ("DEATHDATE", "GENDER", "RACE", "ETHNICITY")

EVENT_COLUMNS = ("patient", "time", "encounter", "kind", "system", "code", "description",
                 "value", "unit", "known_time")


@dataclass
class IngestResult:
    patients: int
    events: int
    events_by_kind: dict[str, int]
    dropped: dict[str, int]  # "<file>:<reason>" -> rows
    first_time: str
    last_time: str
    end_of_record: str  # of living patients: the export's end (see export_end)
    missing_files: list[str]
    missing_columns: list[str]
    events_per_patient: list[int]
    known_later: dict  # events known after their own time (back-linked to a later encounter)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def _header(con: duckdb.DuckDBPyConnection, path: Path) -> dict[str, str]:
    """Upper-cased column name → actual name, read from the CSV header only."""
    try:
        rel = con.sql(
            f"SELECT * FROM read_csv({_lit(path)}, all_varchar=true, header=true, "
            "sample_size=1) LIMIT 0"
        )
    except duckdb.Error as err:
        raise InputError(f"{path}: cannot be read as CSV: {err}") from None
    return {c.upper(): c for c in rel.columns}


def _check_version(con, src: Path) -> None:
    enc = _header(con, src / "encounters.csv")
    pat = _header(con, src / "patients.csv")
    if "START" not in enc and "DATE" in enc and "ENCOUNTERCLASS" not in enc:
        raise InputError(
            f"{src}: this is a Synthea 1.x export (encounters.csv has DATE, no START or "
            "ENCOUNTERCLASS): Synthea 1.x, unsupported. Re-export with Synthea 2.x or 3.x."
        )
    if "ID" not in pat:
        raise InputError(f"{src / 'patients.csv'}: required column Id is missing "
                         f"(found {sorted(pat.values())})")


def export_end(src: Path, last_event):
    """End of record of living patients: the export's own end (``export.json``'s ``end_time``,
    written for generated cohorts), else the latest event time of the export. An end before
    the latest event is not believed: the latest event is used and a warning names the file."""
    import datetime as dt
    import json

    from .synthesize import EXPORT_META

    meta = Path(src) / EXPORT_META
    if not meta.is_file():
        return last_event
    try:
        end = dt.datetime.fromisoformat(str(json.loads(meta.read_text())["end_time"]))
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{meta}: expected {{\"end_time\": \"YYYY-MM-DDTHH:MM:SS+00:00\"}} "
                         f"({err})") from None
    if end.tzinfo is None:
        end = end.replace(tzinfo=dt.timezone.utc)
    if end < last_event:
        log.warning("%s: end_time %s precedes the latest event (%s); using the latest event",
                    meta, end.isoformat(), last_event.isoformat())
        return last_event
    return end


def _time_expr(col: str) -> str:
    # Dates ('2020-01-02') and ISO datetimes ('2020-01-02T03:04:05Z') both cast; empty → NULL.
    return f"TRY_CAST(NULLIF(TRIM({col}), '') AS TIMESTAMPTZ)"


def ingest(src: str | Path, out_dir: str | Path, on_bad_rows: str = "drop",
           memory_limit: str = "2GB", threads: int | None = None,
           patients_per_range: int = PATIENTS_PER_RANGE) -> IngestResult:
    """Read a Synthea CSV export in ``src``; write events/patients/dropped_rows Parquet.

    ``out_dir`` must exist; the caller makes it atomic (see ``ehrseq.io.atomic_outputs``).
    """
    src, out_dir = Path(src), Path(out_dir)
    if not src.is_dir():
        raise InputError(f"{src}: not a directory; expected a Synthea CSV export directory")
    for f in REQUIRED_FILES:
        if not (src / f).is_file():
            raise InputError(f"{src}: required file {f} is missing "
                             "(a Synthea CSV export has patients.csv and encounters.csv)")
    with tempfile.TemporaryDirectory(prefix="ehrseq-duckdb-") as spill:
        con = duckdb.connect()
        con.execute("SET TimeZone='UTC'")
        con.execute(f"SET memory_limit={_lit(memory_limit)}")
        con.execute(f"SET temp_directory={_lit(spill)}")
        con.execute("SET preserve_insertion_order=true")
        if threads:
            con.execute(f"SET threads={int(threads)}")
        _check_version(con, src)
        try:
            return _ingest(con, src, out_dir, on_bad_rows, Path(spill), patients_per_range)
        finally:
            con.close()


def _read(con, path: Path, name: str, work: Path) -> None:
    """Register ``path`` as a view ``name`` with a 1-based data-row number column ``_row``.

    DuckDB parses the CSV and streams its rows in file order (``preserve_insertion_order``);
    they are numbered here, batch by batch, and written as compressed Parquet in ``work``.
    A window (``row_number() OVER ()``) would hold the whole file: at 100,000 patients it
    spilled 26 GB."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = work / f"{name}.parquet"
    try:
        reader = con.sql(
            f"SELECT * FROM read_csv({_lit(path)}, all_varchar=true, header=true, quote='\"', "
            "escape='\"', strict_mode=false, null_padding=true)").to_arrow_reader(ROWS_PER_BATCH)
        schema = pa.schema([pa.field("_row", pa.int64())] + list(reader.schema))
        n = 0
        with pq.ParquetWriter(out, schema, compression="zstd") as w:
            for batch in reader:
                rows = pa.array(range(n + 1, n + batch.num_rows + 1), pa.int64())
                w.write_batch(pa.RecordBatch.from_arrays([rows, *batch.columns], schema=schema))
                n += batch.num_rows
    except duckdb.Error as err:
        raise InputError(f"{path}: cannot be read as CSV: {err}") from None
    con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM read_parquet({_lit(out)})")


def _write_events(con, path: Path, work: Path, per_range: int) -> None:
    """The valid events of ``ev``, sorted by patient, time and every other column, with their
    ``known_time`` (an event is known from its encounter's start on: ehrseq.data.visits),
    into ``path``. Patients in ranges of ``per_range``: each range sorted and written by DuckDB
    (one range: straight to ``path``), the parts' row groups then appended in order."""
    ids = [p for (p,) in con.execute("SELECT patient FROM patients ORDER BY patient").fetchall()]
    bounds = [(ids[i], ids[min(i + per_range, len(ids)) - 1]) for i in range(0, len(ids), per_range)]
    parts = [path] if len(bounds) <= 1 else [work / f"events-{i:05d}.parquet"
                                               for i in range(len(bounds))]
    cols = ", ".join(EVENT_COLUMNS)
    for (lo, hi), part in zip(bounds, parts, strict=True):   # patients: checked non-empty
        mine = "ev" if len(bounds) <= 1 else \
            f"(SELECT * FROM ev WHERE patient >= {_lit(lo)} AND patient <= {_lit(hi)})"
        con.execute(f"""
            COPY (SELECT {cols} FROM ({known_time_sql(mine)})
                  WHERE time IS NOT NULL AND code IS NOT NULL AND code <> ''
                    AND patient IN (SELECT patient FROM patients)
                  ORDER BY patient, time, kind, system, code, encounter NULLS FIRST,
                           description, value NULLS FIRST, unit NULLS FIRST)
            TO {_lit(part)} (FORMAT parquet, COMPRESSION zstd)""")
    if len(parts) > 1:
        import pyarrow.parquet as pq

        schema = pq.read_schema(parts[0])
        with pq.ParquetWriter(path, schema, compression="zstd") as w:
            for part in parts:
                f = pq.ParquetFile(part)
                for g in range(f.num_row_groups):
                    w.write_table(f.read_row_group(g))
                part.unlink()


def _ingest(con, src: Path, out: Path, on_bad_rows: str, work: Path,
            per_range: int) -> IngestResult:
    missing_cols: list[str] = []
    # --- patients ---------------------------------------------------------------------
    ph = _header(con, src / "patients.csv")
    for c in PATIENT_REQUIRED:
        if c not in ph:
            raise InputError(f"{src / 'patients.csv'}: required column {c} is missing "
                             f"(found {sorted(ph.values())})")
    missing_cols += [f"patients.csv:{c}" for c in PATIENT_OPTIONAL if c not in ph]
    _read(con, src / "patients.csv", "raw_patients", work)

    def col(h: dict[str, str], c: str) -> str:
        return _q(h[c]) if c in h else "NULL"

    con.execute(f"""
        CREATE TEMP TABLE p AS SELECT _row,
            TRIM({col(ph, 'ID')}) AS patient,
            {col(ph, 'BIRTHDATE')} AS birth_raw,
            TRY_CAST(NULLIF(TRIM({col(ph, 'BIRTHDATE')}), '') AS DATE) AS birth_date,
            NULLIF(TRIM({col(ph, 'DEATHDATE')}), '') AS death_raw,
            TRY_CAST(NULLIF(TRIM({col(ph, 'DEATHDATE')}), '') AS DATE) AS death_date,
            {col(ph, 'GENDER')} AS gender, {col(ph, 'RACE')} AS race,
            {col(ph, 'ETHNICITY')} AS ethnicity
        FROM raw_patients""")
    con.execute("""
        CREATE TEMP TABLE bad AS
        SELECT 'patients.csv' AS file, _row AS row,
               CASE WHEN patient IS NULL OR patient = '' THEN 'missing patient id'
                    WHEN birth_date IS NULL THEN 'unparseable BIRTHDATE'
                    WHEN death_raw IS NOT NULL AND death_date IS NULL
                         THEN 'unparseable DEATHDATE'
                    ELSE 'duplicate patient id' END AS reason,
               concat_ws(',', patient, birth_raw, death_raw) AS raw
        FROM (SELECT *, row_number() OVER (PARTITION BY patient ORDER BY _row) AS dup FROM p)
        WHERE patient IS NULL OR patient = '' OR birth_date IS NULL
           OR (death_raw IS NOT NULL AND death_date IS NULL) OR dup > 1""")
    con.execute("""
        CREATE TEMP TABLE patients AS
        SELECT patient, birth_date, death_date, gender, race, ethnicity FROM p
        WHERE _row NOT IN (SELECT row FROM bad WHERE file = 'patients.csv')""")

    # --- events, one SELECT per present file -----------------------------------------
    selects, missing_files = [], []
    for spec in TABLES:
        path = src / spec.file
        if not path.is_file():
            missing_files.append(spec.file)
            continue
        h = _header(con, path)
        tcol = next((c for c in spec.time if c in h), None)
        patient_col = "PATIENT"
        for need, what in ((patient_col, "PATIENT"), (tcol, "/".join(spec.time)), ("CODE", "CODE")):
            if need is None or need not in h:
                raise InputError(f"{path}: required column {what} is missing "
                                 f"(found {sorted(h.values())})")
        for opt in ("DESCRIPTION", spec.encounter):
            if opt not in h:
                missing_cols.append(f"{spec.file}:{opt}")
        view = f"raw_{spec.kind}"
        _read(con, path, view, work)
        system = f"COALESCE(NULLIF(TRIM({_q(h['SYSTEM'])}), ''), {_lit(spec.system)})" \
            if "SYSTEM" in h else _lit(spec.system)
        if spec.numeric and "VALUE" in h:
            value = f"TRY_CAST(NULLIF(TRIM({_q(h['VALUE'])}), '') AS DOUBLE)"
            if "TYPE" in h:
                value = f"CASE WHEN lower({_q(h['TYPE'])}) IN ('numeric', '') OR {_q(h['TYPE'])} IS NULL THEN {value} END"
            unit = f"NULLIF(TRIM({col(h, 'UNITS')}), '')"
        else:
            value, unit = "CAST(NULL AS DOUBLE)", "CAST(NULL AS VARCHAR)"
        selects.append(f"""
            SELECT {_lit(spec.file)} AS file, _row,
                TRIM({_q(h[patient_col])}) AS patient,
                {_q(h[tcol])} AS time_raw, {_time_expr(_q(h[tcol]))} AS time,
                NULLIF(TRIM({col(h, spec.encounter)}), '') AS encounter,
                {_lit(spec.kind)} AS kind, {system} AS system,
                TRIM({_q(h['CODE'])}) AS code,
                COALESCE({col(h, 'DESCRIPTION')}, '') AS description,
                {value} AS value, {unit} AS unit
            FROM {view}""")
    if missing_files:
        log.warning("optional files absent from %s: %s", src, ", ".join(missing_files))
    if missing_cols:
        log.warning("optional columns absent: %s", ", ".join(missing_cols))

    # Every file's rows once, unsorted, as compressed Parquet in the work folder (a DuckDB
    # table of a 30 GB export spilled past the disk); read back as the view ``ev``. In any
    # order: every row carries its file and row number, and the events are sorted on all of
    # their columns after; keeping the insertion order here spilled 4.5 GB at 10,000 patients.
    con.execute("SET preserve_insertion_order=false")
    con.execute(f"COPY ({' UNION ALL '.join(selects)}) TO {_lit(work / 'ev.parquet')} "
                "(FORMAT parquet, COMPRESSION zstd)")
    con.execute("SET preserve_insertion_order=true")
    con.execute(f"CREATE TEMP VIEW ev AS SELECT * FROM read_parquet({_lit(work / 'ev.parquet')})")
    for spec in TABLES:   # the numbered copies of the event files are read; free their disk
        con.execute(f"DROP VIEW IF EXISTS raw_{spec.kind}")
        (work / f"raw_{spec.kind}.parquet").unlink(missing_ok=True)
    con.execute("""
        CREATE TEMP TABLE ev_bad AS
        SELECT file, _row AS row,
               CASE WHEN time IS NULL THEN 'unparseable date'
                    WHEN code IS NULL OR code = '' THEN 'missing code'
                    ELSE 'unknown patient id' END AS reason,
               concat_ws(',', patient, time_raw, code) AS raw
        FROM ev
        WHERE time IS NULL OR code IS NULL OR code = ''
           OR patient NOT IN (SELECT patient FROM patients)""")
    con.execute("INSERT INTO bad SELECT * FROM ev_bad")
    n_bad = con.execute("SELECT count(*) FROM bad").fetchone()[0]
    if n_bad and on_bad_rows == "error":
        f, row, reason, raw = con.execute(
            "SELECT file, row, reason, raw FROM bad ORDER BY file, row LIMIT 1").fetchone()
        raise InputError(
            f"{src / f}: data row {row} (line {row + 1}): {reason} ({raw!r}); "
            f"{n_bad} bad row(s) in all. Set data.on_bad_rows: drop to drop them "
            "(they are kept in data/interim/dropped_rows.parquet)")

    n_patients = con.execute("SELECT count(*) FROM patients").fetchone()[0]
    if n_patients == 0:
        raise InputError(f"{src / 'patients.csv'}: empty cohort (no valid patients)")

    _write_events(con, out / "events.parquet", work, per_range)
    ev = f"read_parquet({_lit(out / 'events.parquet')})"
    n_events = con.execute(f"SELECT count(*) FROM {ev}").fetchone()[0]
    if n_events == 0:
        raise InputError(f"{src}: empty cohort (no valid events in any file)")
    first, last = con.execute(f"SELECT min(time), max(time) FROM {ev}").fetchone()
    end = export_end(src, last)
    con.execute(f"""
        COPY (SELECT patient, birth_date, death_date, gender, race, ethnicity,
                     COALESCE(CAST(death_date AS TIMESTAMPTZ),
                              CAST({_lit(end.isoformat())} AS TIMESTAMPTZ)) AS end_of_record
              FROM patients ORDER BY patient)
        TO {_lit(out / 'patients.parquet')} (FORMAT parquet, COMPRESSION zstd)""")
    con.execute(f"""
        COPY (SELECT file, row, reason, raw FROM bad ORDER BY file, row)
        TO {_lit(out / 'dropped_rows.parquet')} (FORMAT parquet, COMPRESSION zstd)""")

    later = con.execute(f"""
        SELECT count(*) FILTER (WHERE known_time > time),
               count(*) FILTER (WHERE known_time > time + INTERVAL 30 DAY),
               COALESCE(max(epoch(known_time) - epoch(time)) / 86400, 0) FROM {ev}""").fetchone()
    by_kind = dict(con.execute(f"SELECT kind, count(*) FROM {ev} GROUP BY kind ORDER BY kind")
                   .fetchall())
    dropped = {f"{f}:{r}": n for f, r, n in con.execute(
        "SELECT file, reason, count(*) FROM bad GROUP BY ALL ORDER BY ALL").fetchall()}
    per_patient = [n for (n,) in con.execute(f"""
        SELECT count(e.patient) FROM patients p LEFT JOIN {ev} e USING (patient)
        GROUP BY p.patient ORDER BY p.patient""").fetchall()]
    return IngestResult(
        patients=n_patients, events=n_events, events_by_kind=by_kind, dropped=dropped,
        first_time=first.isoformat(), last_time=last.isoformat(), end_of_record=end.isoformat(),
        missing_files=missing_files, missing_columns=missing_cols,
        events_per_patient=per_patient,
        known_later={"events_known_after_own_time": int(later[0]),
                     "events_known_30d_after_own_time": int(later[1]),
                     "max_days_known_after_own_time": round(float(later[2]), 3)},
    )
