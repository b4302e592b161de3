"""MEDS (Medical Event Data Standard, the ``meds`` package 0.4.x) in and out.

- :func:`write_meds`: our ingest outputs (``data/interim/events.parquet``, ``patients.parquet``)
  → a MEDS dataset root: ``data/<split>/<i>.parquet`` shards, ``metadata/codes.parquet``,
  ``metadata/dataset.json``, ``metadata/subject_splits.parquet`` and
  ``metadata/subject_ids.parquet`` (Synthea patient id → ``subject_id``).
- :func:`read_meds` / :func:`ingest_meds`: a MEDS dataset root (ours or anyone's) → the ingest
  contract (:data:`ehrseq.data.ingest.EVENT_COLUMNS`, patients, dropped_rows), so every later
  stage runs unchanged. The ingest stage reads through :func:`ingest_source`: a MEDS root
  goes this way, a Synthea CSV export the CSV way.
- :func:`write_labels`, :func:`write_predictions`: task labels in the MEDS label schema and test
  predictions in meds-evaluation's format (``predicted_boolean_probability``).

See docs/meds.md for every choice (codes, visits, censoring, ids).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..io import InputError, atomic_outputs
from ..params import EVENT_KINDS
from .ingest import EVENT_COLUMNS, IngestResult, ingest
from .synthesize import is_meds_root, meds_shards
from .visits import known_time_sql

log = logging.getLogger(__name__)

ETL_NAME = "ehrseq"
ID_MAP = "metadata/subject_ids.parquet"
"""Beside the MEDS metadata: ``patient`` (Synthea id, string) → ``subject_id`` (int64)."""
TASK_LABELS = "task_labels"
"""Labels under the dataset root, one folder per task, as meds-testing-helpers lays them out."""
SPLIT_NAMES = {"train": "train", "val": "tuning", "test": "held_out"}
"""Our ``split`` values (sequences/patients.parquet) → MEDS split names."""
DEMOGRAPHICS = {"GENDER": "gender", "RACE": "race", "ETHNICITY": "ethnicity"}
"""Static codes ``<PREFIX>//<value>`` ↔ patients columns."""

OWN_KINDS = EVENT_KINDS
# Our export writes every event as <KIND>//<system>//<code> (CONDITION//SNOMED-CT//44054006).
KIND_PREFIXES: dict[str, str] = {k.upper(): k for k in OWN_KINDS} | {
    # event-type prefixes of public MEDS ETLs (MEDS-Extract MIMIC-IV, eICU, ...)
    "DIAGNOSIS": "condition", "DX": "condition", "PROBLEM": "condition",
    "LAB": "observation", "VITAL": "observation", "VITALS": "observation",
    "MEASUREMENT": "observation", "OBS": "observation",
    "DRUG": "medication", "MEDICATIONS": "medication", "PRESCRIPTION": "medication",
    "INFUSION_START": "medication",
    "PROCEDURES": "procedure", "PX": "procedure",
    "VACCINE": "immunization", "IMMUNISATION": "immunization",
    "ADMISSION": "encounter", "HOSPITAL_ADMISSION": "encounter", "VISIT": "encounter",
    "DISCHARGE": "encounter", "HOSPITAL_DISCHARGE": "encounter", "ED_REGISTRATION": "encounter",
    "ICU_ADMISSION": "encounter", "TRANSFER_TO": "encounter",
}
SYSTEM_KINDS: dict[str, str] = {
    # code systems used as the first segment (LOINC//8302-2, SNOMED-CT/44054006)
    "SNOMED-CT": "condition", "SNOMED": "condition", "SNOMEDCT": "condition",
    "ICD9CM": "condition", "ICD10CM": "condition", "ICD9": "condition", "ICD10": "condition",
    "LOINC": "observation",
    "RXNORM": "medication", "NDC": "medication", "ATC": "medication",
    "CVX": "immunization",
    "CPT4": "procedure", "CPT": "procedure", "HCPCS": "procedure", "ICD10PCS": "procedure",
    "ICD9PROC": "procedure",
}
DEFAULT_KIND = "observation"
"""Kind of a code whose prefix no mapping knows (``HR``, ``TEMP``): a measurement."""
ENCOUNTER_COLUMNS = ("encounter_id", "hadm_id", "visit_id", "visit_occurrence_id")
"""Extra shard columns taken as the visit id, first present wins."""

US_PER_DAY = 86_400_000_000


def _lit(s) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def _meds():
    import meds

    return meds


# --------------------------------------------------------------------------- ids


def subject_id(patient: str) -> int:
    """Stable int64 ``subject_id`` of a Synthea patient id: the first 8 bytes of
    ``sha256("ehrseq-meds:" + id)``, top bit cleared. The same patient gets the same id in
    every export and in any larger cohort (like our splits, which also hash the id)."""
    d = hashlib.sha256(("ehrseq-meds:" + str(patient)).encode()).digest()
    return int.from_bytes(d[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def id_map_table(patients) -> pd.DataFrame:
    """``patient, subject_id`` for ``patients``; a collision (never seen) is an error."""
    pats = pd.Series(sorted(set(map(str, patients))), dtype=object)
    ids = pats.map(subject_id).astype("int64")
    if ids.duplicated().any():
        raise InputError(f"subject_id collision between patients {list(pats[ids.duplicated()])}")
    return pd.DataFrame({"patient": pats, "subject_id": ids})


def _load_id_map(id_map) -> dict[str, int]:
    if isinstance(id_map, Mapping):
        return {str(k): int(v) for k, v in id_map.items()}
    if isinstance(id_map, pd.DataFrame):
        t = id_map
    else:
        path = Path(id_map)
        if path.is_dir():
            path = path / ID_MAP
        if not path.is_file():
            raise InputError(f"{path}: missing; expected the subject id map that write_meds "
                             "writes (columns patient, subject_id)")
        t = pd.read_parquet(path)
    return dict(zip(t["patient"].astype(str), t["subject_id"].astype("int64"), strict=True))


# --------------------------------------------------------------------------- export


def _split_of(splits) -> dict[str, str] | None:
    """patient → MEDS split, from a mapping, a DataFrame or a parquet (column ``split``)."""
    if splits is None:
        return None
    if isinstance(splits, Mapping):
        raw = {str(k): str(v) for k, v in splits.items()}
    else:
        t = splits if isinstance(splits, pd.DataFrame) else pd.read_parquet(splits)
        raw = dict(zip(t["patient"].astype(str), t["split"].astype(str), strict=True))
    return {p: SPLIT_NAMES.get(s, s) for p, s in raw.items()}


def write_meds(interim_dir: str | Path, out_root: str | Path, splits=None,
               dataset_name: str = "ehrseq-synthea", subjects_per_shard: int = 10_000,
               ) -> dict:
    """Ingest outputs in ``interim_dir`` → a MEDS dataset at ``out_root`` (atomic).

    ``splits``: patient → ``train``/``val``/``test`` (a mapping, a DataFrame or a parquet with
    ``patient, split``, e.g. data/processed/sequences/patients.parquet); shards are then
    ``data/<train|tuning|held_out>/<i>.parquet`` and ``metadata/subject_splits.parquet`` is
    written. Without it: ``data/<i>.parquet`` and no splits file. The output depends on the
    input alone (``created_at`` is the cohort's end of record), so it is byte-reproducible.
    """
    interim_dir, out_root = Path(interim_dir), Path(out_root)
    for f in ("events.parquet", "patients.parquet"):
        if not (interim_dir / f).is_file():
            raise InputError(f"{interim_dir / f}: missing; run the ingest stage first")
    with atomic_outputs(out_root) as (tmp,):
        tmp.mkdir()
        return _write_meds(interim_dir, tmp, _split_of(splits), dataset_name,
                           subjects_per_shard)


def _connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.execute("SET preserve_insertion_order=true")
    return con


def _data_schema() -> pa.Schema:
    s = _meds().DataSchema.schema()
    return pa.schema([pa.field(f.name, f.type, nullable=f.name not in ("subject_id", "code"))
                      for f in s] + [pa.field("encounter_id", pa.string()),
                                     pa.field("unit", pa.string())])


def _write_meds(interim: Path, out: Path, split_of, dataset_name: str, per_shard: int) -> dict:
    meds = _meds()
    con = _connect()
    ev = f"read_parquet({_lit(interim / 'events.parquet')})"
    pats = pd.read_parquet(interim / "patients.parquet")
    bad = con.execute(f"SELECT DISTINCT system FROM {ev} WHERE contains(system, '//')").fetchall()
    if bad:
        raise InputError(f"{interim / 'events.parquet'}: column system holds '//' "
                         f"({bad[0][0]!r}); MEDS codes are <KIND>//<system>//<code>")
    ids = id_map_table(pats["patient"])
    if split_of is not None:
        missing = sorted(set(ids["patient"]) - set(split_of))
        if missing:
            raise InputError(f"splits: no split for {len(missing)} patient(s), e.g. "
                             f"{missing[0]}; give every patient of patients.parquet one")
        ids["split"] = ids["patient"].map(split_of)
    else:
        ids["split"] = ""
    con.register("ids", ids)
    con.register("pats", pats)
    end = pd.Timestamp(pats["end_of_record"].max())
    # One query for every row: static demographics, birth, death, then the events.
    con.execute(f"""
        CREATE TEMP TABLE rows AS
        WITH p AS (SELECT p.*, i.subject_id FROM pats p JOIN ids i USING (patient))
        SELECT subject_id, NULL::TIMESTAMP AS time, 'GENDER//' || gender AS code,
               NULL::DOUBLE AS numeric_value, NULL::VARCHAR AS encounter_id,
               NULL::VARCHAR AS unit,
               'Gender ' || gender AS description
        FROM p WHERE NULLIF(gender, '') IS NOT NULL
        UNION ALL SELECT subject_id, NULL, 'RACE//' || race, NULL, NULL, NULL, 'Race ' || race
        FROM p WHERE NULLIF(race, '') IS NOT NULL
        UNION ALL SELECT subject_id, NULL, 'ETHNICITY//' || ethnicity, NULL, NULL, NULL,
               'Ethnicity ' || ethnicity FROM p WHERE NULLIF(ethnicity, '') IS NOT NULL
        UNION ALL SELECT subject_id, CAST(birth_date AS TIMESTAMP), {_lit(meds.birth_code)},
               NULL, NULL, NULL, 'Birth' FROM p
        UNION ALL SELECT subject_id, CAST(death_date AS TIMESTAMP), {_lit(meds.death_code)},
               NULL, NULL, NULL, 'Death' FROM p WHERE death_date IS NOT NULL
        UNION ALL SELECT i.subject_id, CAST(e.time AS TIMESTAMP),
               upper(e.kind) || '//' || e.system || '//' || e.code, e.value, e.encounter,
               e.unit, e.description
        FROM {ev} e JOIN ids i USING (patient)""")
    # codes.parquet: every code, with its most frequent description (ties: the first).
    codes = con.sql("""
        SELECT code, description FROM (
            SELECT code, description,
                   row_number() OVER (PARTITION BY code ORDER BY n DESC, description) AS r
            FROM (SELECT code, COALESCE(description, '') AS description, count(*) AS n
                  FROM rows GROUP BY ALL)) WHERE r = 1 ORDER BY code""").to_arrow_table()
    codes = pa.table({"code": codes["code"], "description": codes["description"],
                      "parent_codes": pa.nulls(len(codes), pa.list_(pa.string()))},
                     schema=meds.CodeMetadataSchema.schema())
    meds.CodeMetadataSchema.validate(codes)
    shards = []
    schema = _data_schema()
    for split in sorted(ids["split"].unique()):
        subs = sorted(ids.loc[ids["split"] == split, "subject_id"])
        for i in range(0, len(subs), per_shard):
            chunk = [int(x) for x in subs[i:i + per_shard]]
            name = f"{split}/{i // per_shard}" if split else str(i // per_shard)
            tbl = con.sql("""
                SELECT subject_id, time, code, CAST(numeric_value AS FLOAT) AS numeric_value,
                       NULL::VARCHAR AS text_value, encounter_id, unit FROM rows
                WHERE subject_id IN (SELECT unnest(?::BIGINT[]))
                ORDER BY subject_id, time NULLS FIRST, code, numeric_value NULLS FIRST,
                         encounter_id NULLS FIRST, unit NULLS FIRST""",
                          params=[chunk]).to_arrow_table()
            tbl = tbl.cast(schema)
            meds.DataSchema.validate(tbl)
            path = out / meds.data_subdirectory / f"{name}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(tbl, path, compression="zstd")
            shards.append(name)
    (out / "metadata").mkdir(parents=True, exist_ok=True)
    pq.write_table(codes, out / meds.code_metadata_filepath, compression="zstd")
    if split_of is not None:
        sp = pa.table({"subject_id": pa.array(ids["subject_id"], pa.int64()),
                       "split": pa.array(ids["split"], pa.string())},
                      schema=meds.SubjectSplitSchema.schema()).sort_by("subject_id")
        meds.SubjectSplitSchema.validate(sp)
        pq.write_table(sp, out / meds.subject_splits_filepath, compression="zstd")
    pq.write_table(pa.Table.from_pandas(ids[["patient", "subject_id"]].sort_values("patient"),
                                        preserve_index=False), out / ID_MAP, compression="zstd")
    from .. import __version__

    meta = {
        "dataset_name": dataset_name,
        "etl_name": ETL_NAME,
        "etl_version": __version__,
        "meds_version": meds.__version__,
        # the cohort's end of record (export end), not the clock: reproducible bytes
        "created_at": end.tz_convert("UTC").isoformat() if end.tzinfo else end.isoformat(),
        "raw_source_id_columns": ["encounter_id"],
        "code_modifier_columns": ["unit"],
    }
    meds.DatasetMetadataSchema.validate(meta)
    (out / meds.dataset_metadata_filepath).write_text(json.dumps(meta, indent=2) + "\n")
    n_rows = con.execute("SELECT count(*) FROM rows").fetchone()[0]
    con.close()
    return {"subjects": len(ids), "rows": int(n_rows), "codes": len(codes), "shards": shards,
            "created_at": meta["created_at"]}


# --------------------------------------------------------------------------- import




_TYPES = {
    "subject_id": (pa.types.is_integer, "int64"),
    "time": (pa.types.is_timestamp, "timestamp[us]"),
    "code": (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)
             or (pa.types.is_dictionary(t) and pa.types.is_string(t.value_type)), "string"),
    "numeric_value": (lambda t: pa.types.is_floating(t) or pa.types.is_integer(t)
                      or pa.types.is_null(t), "float32"),
    "text_value": (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)
                   or pa.types.is_null(t), "large_string"),
}


def _check_schema(shard: Path) -> set[str]:
    try:
        schema = pq.read_schema(shard)
    except (OSError, pa.ArrowException) as err:
        raise InputError(f"{shard}: cannot be read as parquet: {err}") from None
    for col, (ok, want) in _TYPES.items():
        if col not in schema.names:
            if col in ("numeric_value", "text_value"):
                continue
            raise InputError(f"{shard}: required column {col} is missing (found "
                             f"{schema.names}); meds.DataSchema has subject_id, time, code")
        t = schema.field(col).type
        if not ok(t):
            raise InputError(f"{shard}: column {col} has type {t}; expected {want} "
                             "(meds.DataSchema)")
    return set(schema.names)


def _parse_code(code: str, own: bool, kind_map: Mapping[str, str], default_kind: str,
                ) -> tuple[str, str, str]:
    """(kind, system, code) of a MEDS code. Our own export: ``KIND//system//code`` exactly.
    Otherwise: split on ``//`` (or the first ``/`` when there is no ``//``); a first segment
    in ``kind_map`` gives the kind; when the second segment is a code system
    (:data:`SYSTEM_KINDS`) it is the system, else the first segment is; no segment: system
    ``MEDS``."""
    if own:
        parts = code.split("//", 2)
        if len(parts) == 3 and parts[0].lower() in OWN_KINDS:
            return parts[0].lower(), parts[1], parts[2]
    parts = code.split("//") if "//" in code else code.split("/", 1)
    head = parts[0].upper()
    kind = kind_map.get(head, default_kind)
    if len(parts) >= 3 and parts[1].upper() in SYSTEM_KINDS:
        return kind, parts[1], "//".join(parts[2:])
    if len(parts) >= 2:
        return kind, parts[0], "//".join(parts[1:])
    return kind, "MEDS", code


def ingest_source(src: str | Path, out_dir: str | Path, on_bad_rows: str = "drop",
                  **kw) -> IngestResult:
    """The ingest stage's reader: a MEDS root (:func:`is_meds_root`) → :func:`ingest_meds`,
    anything else → the Synthea CSV ingest (:func:`ehrseq.data.ingest.ingest`). A MEDS
    codes.parquet that misses codes is an error with ``on_bad_rows: error``; with ``drop``
    the codes are kept (a warning; many MEDS ETLs list only the codes they can describe)."""
    src = Path(src)
    if src.is_dir() and not (src / "patients.csv").is_file() and is_meds_root(src):
        kw.setdefault("unknown_codes", "error" if on_bad_rows == "error" else "keep")
        return ingest_meds(src, out_dir, on_bad_rows=on_bad_rows, **kw)
    return ingest(src, out_dir, on_bad_rows=on_bad_rows, **kw)


def read_meds(root: str | Path, out_dir: str | Path, **kw):
    """A MEDS dataset at ``root`` → ``out_dir`` (events/patients/dropped_rows.parquet, the
    ingest contract), atomically: on any error nothing is left at ``out_dir``. Keywords as
    :func:`ingest_meds`. Returns its :class:`~ehrseq.data.ingest.IngestResult`."""
    with atomic_outputs(out_dir) as (tmp,):
        tmp.mkdir()
        return ingest_meds(root, tmp, **kw)


def ingest_meds(root: str | Path, out_dir: str | Path, on_bad_rows: str = "drop",
                unknown_codes: str = "error", kind_map: Mapping[str, str] | None = None,
                default_kind: str = DEFAULT_KIND, visits: str = "time",
                memory_limit: str = "2GB", threads: int | None = None):
    """Read the MEDS dataset at ``root`` into the existing ``out_dir`` (the caller makes it
    atomic, as for :func:`ehrseq.data.ingest.ingest`).

    - ``kind_map``: extra or overriding ``PREFIX → kind`` entries (first code segment,
      upper-case) on top of :data:`KIND_PREFIXES` and :data:`SYSTEM_KINDS`;
      ``default_kind`` for codes no entry knows.
    - ``unknown_codes``: ``error`` (a code absent from metadata/codes.parquet is an
      InputError) or ``keep`` (kept, with an empty description; counted in the result).
      ``MEDS_BIRTH``/``MEDS_DEATH`` are the standard's own codes and need no entry.
    - ``visits``: without a visit id column (:data:`ENCOUNTER_COLUMNS`), ``time``: the events
      of a subject at one timestamp form a visit; ``day``: one visit per calendar day (the
      rule of :mod:`ehrseq.data.visits` for events without an encounter).
    - ``on_bad_rows``: rows with a null subject_id or code, and subjects without
      ``MEDS_BIRTH``, are dropped (kept in dropped_rows.parquet) or (``error``) an error.
    """
    root, out_dir = Path(root), Path(out_dir)
    if unknown_codes not in ("error", "keep"):
        raise ValueError(f"unknown_codes: {unknown_codes!r}; accepted: error, keep")
    if visits not in ("time", "day"):
        raise ValueError(f"visits: {visits!r}; accepted: time, day")
    kmap = {**SYSTEM_KINDS, **KIND_PREFIXES, **{k.upper(): v for k, v in (kind_map or {}).items()}}
    bad = sorted({v for v in [*kmap.values(), default_kind] if v not in OWN_KINDS})
    if bad:
        raise ValueError(f"kind_map/default_kind: unknown event kind(s) {bad}; accepted: "
                         f"{list(OWN_KINDS)}")
    if not root.is_dir():
        raise InputError(f"{root}: not a directory; expected a MEDS dataset root")
    shards = meds_shards(root)
    cols: set[str] | None = None
    for s in shards:
        names = _check_schema(s)
        cols = names if cols is None else cols & names
    with tempfile.TemporaryDirectory(prefix="ehrseq-duckdb-") as spill:
        con = _connect()
        con.execute(f"SET memory_limit={_lit(memory_limit)}")
        con.execute(f"SET temp_directory={_lit(spill)}")
        if threads:
            con.execute(f"SET threads={int(threads)}")
        try:
            return _ingest_meds(con, root, shards, cols or set(), out_dir, on_bad_rows,
                                unknown_codes, kmap, default_kind, visits)
        finally:
            con.close()


def _check_layout(con, root: Path) -> None:
    """Each subject contiguous in one shard and sorted by time (static rows first)."""
    r = con.execute("""
        SELECT subject_id, min(file) AS a, max(file) AS b FROM m
        WHERE subject_id IS NOT NULL GROUP BY subject_id HAVING count(DISTINCT file) > 1
        ORDER BY subject_id LIMIT 1""").fetchone()
    if r:
        raise InputError(f"{r[1]}: column subject_id: subject {r[0]} is split across shards "
                         f"{r[1]} and {r[2]}; MEDS keeps each subject in one shard")
    r = con.execute("""
        WITH o AS (SELECT file, _row, subject_id,
                          lag(subject_id) OVER (PARTITION BY file ORDER BY _row) AS ps FROM m),
             runs AS (SELECT file, subject_id, min(_row) AS r, count(*) AS n FROM o
                      WHERE ps IS DISTINCT FROM subject_id GROUP BY file, subject_id)
        SELECT file, subject_id, r FROM runs WHERE n > 1 ORDER BY file, r LIMIT 1""").fetchone()
    if r:
        raise InputError(f"{r[0]}: column subject_id: the rows of subject {r[1]} are not "
                         "contiguous; MEDS shards hold each subject's rows together, sorted "
                         "by time")
    r = con.execute("""
        WITH o AS (SELECT file, _row, subject_id, time,
                          lag(subject_id) OVER w AS ps, lag(time) OVER w AS pt
                   FROM m WINDOW w AS (PARTITION BY file ORDER BY _row))
        SELECT file, _row, subject_id, ps, time, pt FROM o
        WHERE (ps IS NOT DISTINCT FROM subject_id AND pt IS NOT NULL
               AND (time IS NULL OR time < pt))
        ORDER BY file, _row LIMIT 1""").fetchone()
    if r:
        raise InputError(f"{r[0]}: column time is not sorted: row {r[1] + 1} (subject {r[2]}) "
                         f"has {r[4]} after {r[5]}; MEDS shards hold each subject's rows "
                         "sorted by time (static rows, time null, first)")


def _ingest_meds(con, root: Path, shards: list[Path], cols: set[str], out: Path,
                 on_bad_rows: str, unknown_codes: str, kmap: dict, default_kind: str,
                 visits: str):
    meds = _meds()
    files = "[" + ", ".join(_lit(s) for s in shards) + "]"
    enc_col = next((c for c in ENCOUNTER_COLUMNS if c in cols), None)
    enc = f"NULLIF(CAST({enc_col} AS VARCHAR), '')" if enc_col else "NULL::VARCHAR"
    num = "CAST(numeric_value AS DOUBLE)" if "numeric_value" in cols else "NULL::DOUBLE"
    unit = "NULLIF(CAST(unit AS VARCHAR), '')" if "unit" in cols else "NULL::VARCHAR"
    con.execute(f"""
        CREATE TEMP TABLE m AS SELECT
            filename AS file,
            file_row_number AS _row, subject_id, CAST(time AS TIMESTAMP) AS time,
            CAST(code AS VARCHAR) AS code, {num} AS value, {enc} AS encounter, {unit} AS unit
        FROM read_parquet({files}, filename=true, file_row_number=true, union_by_name=true)""")
    _check_layout(con, root)

    # dataset.json (optional): our own export is parsed exactly; its created_at is its end.
    meta_path = root / meds.dataset_metadata_filepath
    meta = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as err:
            raise InputError(f"{meta_path}: not JSON ({err})") from None
    own = meta.get("etl_name") == ETL_NAME

    # codes.parquet
    codes_path = root / meds.code_metadata_filepath
    if codes_path.is_file():
        names = pq.read_schema(codes_path).names
        if "code" not in names:
            raise InputError(f"{codes_path}: required column code is missing (found {names})")
        desc = "CAST(description AS VARCHAR)" if "description" in names else "NULL"
        con.execute(f"""CREATE TEMP TABLE cm AS SELECT CAST(code AS VARCHAR) AS code,
                        any_value({desc}) AS description
                        FROM read_parquet({_lit(codes_path)}) GROUP BY 1""")
    else:
        con.execute("CREATE TEMP TABLE cm (code VARCHAR, description VARCHAR)")
    special = (meds.birth_code, meds.death_code)
    missing = [c for (c,) in con.execute(f"""
        SELECT DISTINCT code FROM m WHERE code IS NOT NULL AND code NOT IN (SELECT code FROM cm)
          AND split_part(code, '//', 1) NOT IN ({_lit(special[0])}, {_lit(special[1])})
        ORDER BY code""").fetchall()]
    if missing and unknown_codes == "error":
        where = codes_path if codes_path.is_file() else f"{codes_path} (missing)"
        raise InputError(f"{where}: column code lacks {len(missing)} code(s) that occur in "
                         f"data/, e.g. {missing[:5]}; a MEDS codes.parquet lists every code "
                         "(or read with unknown_codes='keep')")
    if missing:
        log.warning("%s: %d code(s) of data/ absent (kept, no description), e.g. %s",
                    codes_path, len(missing), missing[:5])

    # subject ids: our own map back to Synthea ids, else the id as text
    idp = root / ID_MAP
    if idp.is_file():
        con.execute(f"CREATE TEMP TABLE idmap AS SELECT CAST(patient AS VARCHAR) AS patient, "
                    f"subject_id FROM read_parquet({_lit(idp)})")
    else:
        con.execute("CREATE TEMP TABLE idmap AS SELECT DISTINCT CAST(subject_id AS VARCHAR) "
                    "AS patient, subject_id FROM m WHERE subject_id IS NOT NULL")

    # code → kind, system, code (parsed once per distinct code)
    distinct = [c for (c,) in con.execute(
        "SELECT DISTINCT code FROM m WHERE code IS NOT NULL ORDER BY 1").fetchall()]
    parsed = pd.DataFrame([(c, *_parse_code(c, own, kmap, default_kind)) for c in distinct],
                          columns=["full", "kind", "system", "code"])
    con.register("parsed_df", parsed)
    con.execute("CREATE TEMP TABLE parsed AS SELECT * FROM parsed_df")

    birth, death = (_lit(c) for c in special)
    demo = ", ".join(_lit(k) for k in DEMOGRAPHICS)
    con.execute("""
        CREATE TEMP TABLE tagged AS SELECT m.*, split_part(code, '//', 1) AS head,
            CASE WHEN subject_id IS NULL THEN 'missing subject_id'
                 WHEN code IS NULL OR code = '' THEN 'missing code' END AS reason FROM m""")
    con.execute(f"""
        CREATE TEMP TABLE p AS
        SELECT i.patient, s.subject_id,
               CAST(min(time) FILTER (WHERE head = {birth}) AS DATE) AS birth_date,
               CAST(min(time) FILTER (WHERE head = {death}) AS DATE) AS death_date,
               max(time) FILTER (WHERE head NOT IN ({birth}, {death})) AS last_time,
               min(substr(code, 9)) FILTER (WHERE head = 'GENDER' AND time IS NULL) AS gender,
               min(substr(code, 7)) FILTER (WHERE head = 'RACE' AND time IS NULL) AS race,
               min(substr(code, 12)) FILTER (WHERE head = 'ETHNICITY' AND time IS NULL)
                   AS ethnicity
        FROM tagged s JOIN idmap i USING (subject_id) WHERE reason IS NULL
        GROUP BY ALL""")
    con.execute(f"""
        CREATE TEMP TABLE bad AS
        SELECT replace(file, {_lit(str(root) + os.sep)}, '') AS file, _row + 1 AS row,
               COALESCE(reason, 'subject has no {meds.birth_code}') AS reason,
               concat_ws(',', subject_id, time, code) AS raw
        FROM tagged WHERE reason IS NOT NULL OR subject_id IN (
            SELECT subject_id FROM p WHERE birth_date IS NULL)""")
    n_bad = con.execute("SELECT count(*) FROM bad").fetchone()[0]
    if n_bad and on_bad_rows == "error":
        f, row, reason, raw = con.execute(
            "SELECT file, row, reason, raw FROM bad ORDER BY file, row LIMIT 1").fetchone()
        raise InputError(f"{root / f}: row {row}: {reason} ({raw!r}); {n_bad} bad row(s) in "
                         "all. Set data.on_bad_rows: drop to drop them")
    con.execute("DELETE FROM p WHERE birth_date IS NULL")
    if con.execute("SELECT count(*) FROM p").fetchone()[0] == 0:
        raise InputError(f"{root / 'data'}: empty cohort (no subject with {meds.birth_code})")

    # events: everything but birth, death and demographics; other static rows (time null,
    # e.g. EYE_COLOR//BROWN) are facts known from birth on: dated at birth, no encounter
    # with a visit id column, a null id is no encounter (visits.py: one visit per day)
    vkey = ("'t:' || strftime(e.time, '%Y-%m-%dT%H:%M:%S.%f')"
            if visits == "time" and enc_col is None else "NULL::VARCHAR")
    con.execute(f"""
        CREATE TEMP TABLE ev AS
        SELECT p.patient,
               CAST(COALESCE(e.time, CAST(p.birth_date AS TIMESTAMP)) AS TIMESTAMPTZ) AS time,
               COALESCE(e.encounter, CASE WHEN e.time IS NOT NULL THEN {vkey} END) AS encounter,
               c.kind,
               c.system, c.code, COALESCE(cm.description, '') AS description,
               CASE WHEN isnan(e.value) THEN NULL ELSE e.value END AS value, e.unit
        FROM tagged e JOIN p USING (subject_id) JOIN parsed c ON c.full = e.code
        LEFT JOIN cm ON cm.code = e.code
        WHERE e.reason IS NULL AND e.head NOT IN ({birth}, {death})
          AND NOT (e.time IS NULL AND e.head IN ({demo}))""")
    cols_sql = ", ".join(EVENT_COLUMNS)
    con.execute(f"""
        COPY (SELECT {cols_sql} FROM ({known_time_sql('ev')})
              ORDER BY patient, time, kind, system, code, encounter NULLS FIRST,
                       description, value NULLS FIRST, unit NULLS FIRST)
        TO {_lit(out / 'events.parquet')} (FORMAT parquet, COMPRESSION zstd)""")
    evp = f"read_parquet({_lit(out / 'events.parquet')})"
    n_events = con.execute(f"SELECT count(*) FROM {evp}").fetchone()[0]
    if n_events == 0:
        raise InputError(f"{root / 'data'}: empty cohort (no events besides birth and death)")
    first, last = con.execute(f"SELECT min(time), max(time) FROM {evp}").fetchone()
    # End of record of the living. Our export: its end (created_at, the cohort's export end,
    # as the CSV path reads export.json). Any other MEDS dataset states none: a subject's
    # record ends at their last event (censored at the last observation).
    if own and meta.get("created_at"):
        made = dt.datetime.fromisoformat(str(meta["created_at"]))
        made = made if made.tzinfo else made.replace(tzinfo=dt.timezone.utc)
        end = max(made, last)
        living = f"CAST({_lit(end.isoformat())} AS TIMESTAMPTZ)"
    else:
        end = last
        living = "CAST(COALESCE(last_time, CAST(birth_date AS TIMESTAMP)) AS TIMESTAMPTZ)"
    con.execute(f"""
        COPY (SELECT patient, birth_date, death_date, gender, race, ethnicity,
                     COALESCE(CAST(death_date AS TIMESTAMPTZ), {living}) AS end_of_record
              FROM p ORDER BY patient)
        TO {_lit(out / 'patients.parquet')} (FORMAT parquet, COMPRESSION zstd)""")
    con.execute(f"""COPY (SELECT file, CAST(row AS BIGINT) AS row, reason, raw FROM bad
                          ORDER BY file, row)
                    TO {_lit(out / 'dropped_rows.parquet')} (FORMAT parquet, COMPRESSION zstd)""")

    n_pat = con.execute("SELECT count(*) FROM p").fetchone()[0]
    later = con.execute(f"""
        SELECT count(*) FILTER (WHERE known_time > time),
               count(*) FILTER (WHERE known_time > time + INTERVAL 30 DAY),
               COALESCE(max(epoch(known_time) - epoch(time)) / 86400, 0) FROM {evp}""").fetchone()
    by_kind = dict(con.execute(f"SELECT kind, count(*) FROM {evp} GROUP BY kind ORDER BY kind")
                   .fetchall())
    dropped = {f"{f}:{r}": n for f, r, n in con.execute(
        "SELECT file, reason, count(*) FROM bad GROUP BY ALL ORDER BY ALL").fetchall()}
    note = [f"metadata/codes.parquet:code ({len(missing)} codes of data/ absent)"] \
        if missing else []
    per_patient = [n for (n,) in con.execute(f"""
        SELECT count(e.patient) FROM p LEFT JOIN {evp} e USING (patient)
        GROUP BY p.patient ORDER BY p.patient""").fetchall()]
    return IngestResult(
        patients=n_pat, events=n_events, events_by_kind=by_kind, dropped=dropped,
        first_time=first.isoformat(), last_time=last.isoformat(), end_of_record=end.isoformat(),
        missing_files=[], missing_columns=note, events_per_patient=per_patient,
        known_later={"events_known_after_own_time": int(later[0]),
                     "events_known_30d_after_own_time": int(later[1]),
                     "max_days_known_after_own_time": round(float(later[2]), 3)},
    )



# --------------------------------------------------------------------------- labels


def task_name(outcome: str, horizon) -> str:
    """``mortality`` at 30 days → ``mortality_30d``; ``onset:44054006`` → ``onset_44054006_30d``."""
    h = float(horizon)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(outcome)) + (f"_{int(h)}d" if h.is_integer()
                                                            else f"_{h:g}d")


def _label_rows(t: pd.DataFrame, h: float) -> tuple[pd.Series, pd.Series]:
    """(keep, label) at horizon ``h`` days: the event within ``h`` → True; followed to at
    least ``h`` without it → False; censored before ``h`` → no label (not kept)."""
    dur, ev = t["duration"].to_numpy(float), t["event"].to_numpy(int) == 1
    pos = ev & (dur <= h)
    neg = ~pos & (dur >= h)
    return pd.Series(pos | neg, index=t.index), pd.Series(pos, index=t.index)


def _label_table(t: pd.DataFrame, ids: dict[str, int], h: float, path) -> tuple[pa.Table, int]:
    keep, label = _label_rows(t, h)
    miss = sorted(set(t["patient"].astype(str)) - set(ids))
    if miss:
        raise InputError(f"{path}: {len(miss)} patient(s) absent from the subject id map, "
                         f"e.g. {miss[0]}; export the MEDS dataset of the same cohort")
    k = t[keep.to_numpy()]
    us = np.round(k["landmark_time"].to_numpy(float) * US_PER_DAY).astype("int64")
    tbl = pa.table({
        "subject_id": pa.array(k["patient"].astype(str).map(ids).to_numpy("int64")),
        "prediction_time": pa.array(us, pa.timestamp("us")),
        "boolean_value": pa.array(label[keep].to_numpy(bool)),
    })
    return tbl, int((~keep).sum())


def write_labels(outcomes_parquet: str | Path, horizons, out_dir: str | Path, id_map,
                 outcome: str = "outcome") -> dict:
    """One MEDS label task per horizon of ``outcome`` (``<out_dir>/<task>/labels.parquet``,
    meds.LabelSchema, plus ``.task_names.json`` as meds-testing-helpers reads it).

    Every landmark row of outcomes.parquet (several per patient are kept apart) is a
    prediction at ``prediction_time`` = its landmark. MEDS labels have no censoring: a
    landmark censored before the horizon has no defined label and is dropped; the counts
    per task are returned (``{task: {"labels", "positive", "dropped_censored"}}``).
    ``out_dir`` is written whole or not at all.
    """
    meds = _meds()
    t = pd.read_parquet(outcomes_parquet)
    ids = _load_id_map(id_map)
    counts = {}
    with atomic_outputs(out_dir) as (tmp,):
        for h in horizons:
            name = task_name(outcome, h)
            tbl, dropped = _label_table(t, ids, float(h), outcomes_parquet)
            tbl = meds.LabelSchema.align(tbl.sort_by([("subject_id", "ascending"),
                                                      ("prediction_time", "ascending")]))
            (tmp / name).mkdir(parents=True)
            pq.write_table(tbl, tmp / name / "labels.parquet", compression="zstd")
            counts[name] = {"labels": tbl.num_rows, "dropped_censored": dropped,
                            "positive": int(pc.sum(tbl["boolean_value"]).as_py() or 0)}
        tmp.mkdir(exist_ok=True)
        (tmp / ".task_names.json").write_text(json.dumps(sorted(counts)) + "\n")
    return counts


def _survival_at(surv, times, t: float) -> np.ndarray:
    """S(t) read off a stored curve as a step, as ``ehrseq.survival.curves.survival_at`` does
    (1 before the first time; tested equal): kept here so the ingest stage, which imports this
    module, does not depend on the survival code."""
    k = int(np.searchsorted(np.asarray(times, float), t, side="right"))
    return np.ones(len(surv)) if k == 0 else np.asarray(surv, float)[:, k - 1]


def write_predictions(predictions: Mapping[str, str | Path], outcomes_parquet: str | Path,
                      horizons, out_dir: str | Path, id_map, outcome: str = "outcome") -> dict:
    """Each model's test predictions for the tasks of :func:`write_labels`, in meds-evaluation's
    format: ``<out_dir>/<task>/<model>.parquet`` with subject_id, prediction_time,
    boolean_value, ``predicted_boolean_value`` (null: no threshold chosen) and
    ``predicted_boolean_probability`` = 1 - S(h) (the model's survival
    curve read at the horizon, a step function as in evaluation). ``predictions``: model name
    → npz with ``index``, ``landmark_visits``, ``surv`` [n, T], ``times``. Rows are the test
    landmarks of outcomes.parquet, matched as the evaluate stage matches them
    (``Outcomes.align``: patient row and landmark); censored ones dropped.
    """
    t = pd.read_parquet(outcomes_parquet)
    test = t[t["split"] == "test"].reset_index(drop=True)
    key = pd.MultiIndex.from_arrays([test["index"], test["landmark_visits"]])
    ids = _load_id_map(id_map)
    counts: dict = {}
    with atomic_outputs(out_dir) as (tmp,):
        tmp.mkdir()
        for model, path in sorted(predictions.items()):
            with np.load(path, allow_pickle=False) as z:
                miss = {"index", "landmark_visits", "surv", "times"} - set(z.files)
                if miss:
                    raise InputError(f"{path}: arrays {sorted(miss)} missing; expected "
                                     "index, landmark_visits, surv, times (survival predictions)")
                # as the evaluate stage (Outcomes.align): (patient row, landmark visits)
                pos = pd.MultiIndex.from_arrays([z["index"], z["landmark_visits"]]) \
                    .get_indexer(key)
                surv, times = z["surv"], z["times"]
            if (pos < 0).any():
                raise InputError(f"{path}: predictions miss {int((pos < 0).sum())} test "
                                 "landmarks of outcomes.parquet; re-run the stage that wrote it")
            for h in horizons:
                name = task_name(outcome, h)
                tbl, _ = _label_table(test, ids, float(h), outcomes_parquet)
                keep, _ = _label_rows(test, float(h))
                risk = 1.0 - _survival_at(surv[pos[keep.to_numpy()]], times, float(h))
                # no decision threshold is ours to choose: the value column is present (the
                # meds-evaluation CLI reads it) and null, so it scores the probabilities only
                tbl = tbl.append_column("predicted_boolean_value", pa.nulls(len(risk), pa.bool_()))
                tbl = tbl.append_column("predicted_boolean_probability",
                                        pa.array(risk.astype(np.float32)))
                (tmp / name).mkdir(exist_ok=True)
                pq.write_table(tbl, tmp / name / f"{model}.parquet", compression="zstd")
                counts.setdefault(name, {})[model] = tbl.num_rows
    return counts
