"""events/patients Parquet → visits, tokens, vocabulary, splits and tensor-ready arrays.

See docs/architecture.md for the output contract. The grouping into visits and tokens runs in
DuckDB; the arrays are assembled with NumPy (offsets from counts, no loop per event).
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from ..io import InputError
from ..params import SequencesParams
from .visits import events_sql, visit_events_sql

PATIENTS_PER_RANGE = 5000
"""Patients whose visits and tokens DuckDB builds at once (their working set and spill)."""
MEMORY_LIMIT = "2GB"   # DuckDB's working memory; past it, it spills to a temporary folder
VALUE_CLIP = 5.0   # normalised lab values are clipped to ±this many training SDs
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD, UNK, CLS, SEP, MASK = range(len(SPECIALS))
EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


def split_of(patient_ids, fractions: tuple[float, float, float], salt: str) -> np.ndarray:
    """'train'/'val'/'test' from a SHA-256 of (salt, patient id): stable as the cohort grows."""
    u = np.array([int.from_bytes(hashlib.sha256(f"{salt}:{p}".encode()).digest()[:8], "big")
                  for p in patient_ids], dtype=np.float64) / 2.0**64
    train, val, _ = fractions
    return np.where(u < train, "train", np.where(u < train + val, "val", "test"))


def normalise_values(value: np.ndarray, vid: np.ndarray, train_vid: np.ndarray,
                     train_value: np.ndarray, n_codes: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 z-scores of ``value`` (the visit's median of a token's values) against its
    code's (``vid``) training values ``train_value`` (sorted by ``train_vid``): mean and
    population SD summed by ``math.fsum`` (a fixed order: the same bits on every machine),
    clipped to ±VALUE_CLIP; 0 for a code whose training values are all equal; NaN where
    ``value`` is NaN. One loop over the codes, none over events. Returns (z, mean, sd)."""
    mu, sd = np.zeros(n_codes), np.zeros(n_codes)
    bounds = np.searchsorted(train_vid, np.arange(n_codes + 1))
    for k in range(n_codes):
        x = np.asarray(train_value[bounds[k]:bounds[k + 1]], np.float64)
        mu[k] = math.fsum(x.tolist()) / len(x)
        sd[k] = math.sqrt(math.fsum(((x - mu[k]) ** 2).tolist()) / len(x))
    z = np.full(len(value), np.nan)
    has = np.isfinite(value) & (vid >= 0)
    k = vid[has]
    scale = np.where(sd[k] > 0, sd[k], 1.0)
    z[has] = np.where(sd[k] > 0, np.clip((value[has] - mu[k]) / scale, -VALUE_CLIP, VALUE_CLIP),
                      0.0)
    return z.astype(np.float32), mu, sd


@dataclass
class SequencesResult:
    metrics: dict
    visits_per_patient: np.ndarray


def _lit(s) -> str:
    return "'" + str(s).replace("'", "''") + "'"


FIT = "split IN ('train', 'corpus')"
"""The rows the vocabulary is fitted on: the training split and the pre-training corpus, never
validation or test patients."""
FIT_VALUES = "split = 'train'"
"""The rows the value statistics and quantile bins are fitted on: the training split alone, so
that a corpus never moves the labelled cohort's value tokens (which a synthetic scenario reads
to plant its outcome)."""


def _corpus_patients(con, corpus: Path, labelled: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The corpus's patients (split ``corpus``) that are not labelled patients, and how many
    labelled training patients it repeated (dropped: their records are read once). A corpus
    patient of the labelled validation or test split is an error."""
    cp = con.execute(f"SELECT * FROM read_parquet({_lit(corpus / 'patients.parquet')}) "
                     "ORDER BY patient").df()
    held_out = labelled.loc[labelled["split"].isin(["val", "test"]), "patient"]
    clash = cp["patient"].isin(held_out)
    if clash.any():
        ids = ", ".join(map(str, cp.loc[clash, "patient"].head(3)))
        raise InputError(f"{corpus / 'patients.parquet'}: {int(clash.sum())} corpus patients "
                         f"are in the labelled cohort's validation or test split (e.g. {ids}); "
                         "pre-training must never read them: change pretrain.corpus (another "
                         "seed, or a source without those patients)")
    dup = cp["patient"].isin(labelled["patient"])
    cp = cp[~dup].reset_index(drop=True)
    cp["split"] = "corpus"
    return cp, int(dup.sum())


def build_sequences(interim: str | Path, out: str | Path, p: SequencesParams,
                    corpus: str | Path | None = None,
                    chunk: int = PATIENTS_PER_RANGE) -> SequencesResult:
    """``interim`` (the ingest stage's events and patients) → the arrays in ``out``.
    ``corpus``: a pre-training corpus flattened the same way (the corpus stage; a folder
    without events.parquet is no corpus): encoded with the same vocabulary into
    ``out/corpus/``, and part of what the vocabulary is fitted on (the value bins and
    statistics: the training split alone). Without one, the output is what it always was. ``chunk``: patients built at once
    (the output does not depend on it)."""
    interim, out = Path(interim), Path(out)
    for f in ("events.parquet", "patients.parquet"):
        if not (interim / f).is_file():
            raise InputError(f"{interim / f}: missing; run the ingest stage first")
    corpus = Path(corpus) if corpus is not None and (Path(corpus) / "events.parquet").is_file() \
        else None
    spill = tempfile.TemporaryDirectory(prefix="ehrseq-duckdb-")   # DuckDB past its limit
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.execute(f"SET memory_limit={_lit(MEMORY_LIMIT)}")
    con.execute(f"SET temp_directory={_lit(spill.name)}")
    patients = con.execute(
        f"SELECT * FROM read_parquet({_lit(interim / 'patients.parquet')}) ORDER BY patient"
    ).df()
    if patients.empty:
        raise InputError(f"{interim / 'patients.parquet'}: no patients")
    patients["split"] = split_of(patients["patient"], (p.split.train, p.split.val,
                                                       p.split.test), p.split.salt)
    n_labelled, repeated = len(patients), 0
    rel = events_sql(con, interim / "events.parquet")
    if corpus is not None:   # after the labelled patients: their rows and arrays come first
        cp, repeated = _corpus_patients(con, corpus, patients)
        con.register("corpus_pat", cp[["patient"]])
        rel = (f"(SELECT * FROM {rel} UNION ALL BY NAME SELECT * FROM "
               f"{events_sql(con, corpus / 'events.parquet')} "
               "WHERE patient IN (SELECT patient FROM corpus_pat))")
        patients = pd.concat([patients, cp[patients.columns]], ignore_index=True)
    patients["index"] = np.arange(len(patients), dtype=np.int64)
    con.register("pat", patients[["patient", "index", "split", "birth_date"]])

    def events(where: str) -> str:
        """Events of the patients of ``pat`` matching ``where``, with their visit (by the one
        rule of ehrseq.data.visits: dated when known)."""
        mine = f"(SELECT * FROM {rel} WHERE patient IN (SELECT patient FROM pat WHERE {where}))"
        return f"""
            SELECT e.patient, pat.index AS pidx, pat.split, e.known_time AS time, e.visit_time,
                   e.kind, e.system, e.code, e.value, e.vkey
            FROM ({visit_events_sql(mine, p.event_kinds)}) e JOIN pat USING (patient)"""

    # Numeric observations → their value (as float32: the same number whether it came from a
    # CSV or a MEDS export) normalised per code on the training split, in NumPy below, and,
    # with numeric_bins > 0, quantile-bin tokens fitted on the same rows (not the corpus's).
    con.execute(f"""
        CREATE TEMP TABLE fitobs AS
        SELECT system, code, value FROM {rel}
        WHERE {"'observation'" if "observation" in p.event_kinds else "NULL"} = kind
          AND value IS NOT NULL AND patient IN (SELECT patient FROM pat WHERE {FIT_VALUES})""")
    con.execute("""
        CREATE TEMP TABLE vcodes AS
        SELECT system, code, row_number() OVER (ORDER BY system, code) - 1 AS vid
        FROM (SELECT DISTINCT system, code FROM fitobs)""")
    v32 = "CAST(CAST(e.value AS FLOAT) AS DOUBLE)"
    train_values = con.execute(f"""
        SELECT s.vid, {v32} AS v FROM fitobs e JOIN vcodes s USING (system, code)
        ORDER BY s.vid, v""").fetchnumpy()
    value_codes = [r[0] for r in con.execute(
        "SELECT system || '/' || code FROM vcodes ORDER BY vid").fetchall()]
    value = (f"CASE WHEN e.kind = 'observation' AND s.vid IS NOT NULL THEN {v32} END")
    join = "LEFT JOIN vcodes s ON s.system = e.system AND s.code = e.code"
    token = "e.system || '/' || e.code"
    if p.numeric_bins > 0 and "observation" in p.event_kinds:
        qs = ", ".join(str(i / p.numeric_bins) for i in range(1, p.numeric_bins))
        con.execute(f"""
            CREATE TEMP TABLE edges AS
            SELECT system, code, list_distinct(quantile_cont(value, [{qs}])) AS edges
            FROM fitobs GROUP BY system, code""")
        token = (f"CASE WHEN e.kind = 'observation' AND e.value IS NOT NULL AND q.edges IS "
                 f"NOT NULL THEN {token} || ':q' || "
                 f"len(list_filter(q.edges, lambda x: x < e.value)) ELSE {token} END")
        join += " LEFT JOIN edges q ON q.system = e.system AND q.code = e.code"

    def visit_tokens(lo: int, hi: int) -> int:
        """Table ``vt``: one row per (patient, visit, distinct token) of the patients with
        index in [lo, hi), their ``max_visits`` most recent visits; returns its rows."""
        con.execute("DROP TABLE IF EXISTS vt")
        con.execute(f"""
            CREATE TEMP TABLE vt AS
            WITH t AS (SELECT e.pidx, e.split, e.vkey, e.time, e.visit_time, {token} AS token,
                              {value} AS value, s.vid
                       FROM ({events(f"index >= {lo} AND index < {hi}")}) e {join}),
                 v AS (SELECT pidx, vkey, max(visit_time) AS vtime FROM t GROUP BY pidx, vkey),
                 vr AS (SELECT pidx, vkey, vtime,
                               row_number() OVER (PARTITION BY pidx
                                                  ORDER BY vtime DESC, vkey DESC) AS recency
                        FROM v)
            SELECT t.pidx, t.split, vr.vtime, vr.vkey, t.token, min(t.time) AS first_time,
                   quantile_cont(t.value, 0.5) AS value, max(t.vid) AS vid
            FROM t JOIN vr USING (pidx, vkey)
            WHERE vr.recency <= {p.max_visits}
            GROUP BY t.pidx, t.split, vr.vtime, vr.vkey, t.token""")
        return con.execute("SELECT count(*) FROM vt").fetchone()[0]

    # Patients in ranges of ``chunk``: DuckDB's working set (and what it spills) is that of
    # one range, whatever the cohort's size. A first pass counts the fitted rows' tokens.
    ranges = [(lo, min(lo + chunk, len(patients))) for lo in range(0, len(patients), chunk)]
    parts, n_rows = [], 0
    for lo, hi in ranges:
        n_rows += visit_tokens(lo, hi)
        parts.append(con.execute(f"SELECT token, count(*) AS n FROM vt WHERE {FIT} "
                                 "GROUP BY token").df())
    if n_rows == 0:
        raise InputError(f"{interim / 'events.parquet'}: no events of kinds {p.event_kinds}")

    # Vocabulary from the training split (and corpus): occurrences, then min count and size.
    counts = pd.concat(parts).groupby("token", as_index=False)["n"].sum()
    counts = counts[counts["n"] >= p.min_count].sort_values(["n", "token"],
                                                           ascending=[False, True])
    counts = counts.head(p.max_vocab - len(SPECIALS)).reset_index(drop=True)
    if counts.empty:
        raise InputError("the training split has no token with count >= "
                         f"sequences.min_count={p.min_count}; lower it or use more patients")
    tokens = list(SPECIALS) + counts["token"].tolist()
    vocab = pd.DataFrame({"token": counts["token"], "id": np.arange(len(SPECIALS), len(tokens))})
    con.register("vocab", vocab)

    # Visits numbered in array order; tokens fetched as numeric arrays only (no per-token
    # strings in Python: the stage's memory stays near the arrays' own size).
    toks, visit_parts, first_visit = [], [], 0
    for lo, hi in ranges:
        if len(ranges) > 1:   # one range: its table is still there
            visit_tokens(lo, hi)
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE vis AS
            SELECT pidx, vkey, vtime,
                   row_number() OVER (ORDER BY pidx, vtime, vkey) - 1 + {first_visit} AS vno
            FROM (SELECT DISTINCT pidx, vkey, vtime FROM vt)""")
        toks.append(con.execute(f"""
            WITH r AS (
                SELECT vt.pidx, vt.vkey, COALESCE(vocab.id, {UNK}) AS id, vt.value, vt.vid,
                       row_number() OVER (PARTITION BY vt.pidx, vt.vkey
                                          ORDER BY vt.first_time, vt.token) AS k
                FROM vt LEFT JOIN vocab USING (token))
            SELECT vis.vno, r.id, COALESCE(r.value, 'NaN'::DOUBLE) AS value,
                   COALESCE(r.vid, -1) AS vid
            FROM r JOIN vis USING (pidx, vkey)
            WHERE r.k <= {p.max_codes_per_visit}
            ORDER BY vis.vno, r.k""").fetchnumpy())
        visit_parts.append(con.execute("""
            SELECT pidx, vkey, epoch_us(vtime) AS vtime_us FROM vis ORDER BY vno""").df())
        first_visit += len(visit_parts[-1])
    tok = {k: np.concatenate([np.asarray(x[k]) for x in toks]) for k in toks[0]}
    visits = pd.concat(visit_parts, ignore_index=True)
    con.close()
    spill.cleanup()

    # Arrays: offsets from the tokens per visit and the visits per patient.
    vno = np.asarray(tok["vno"], np.int64)
    per_visit = np.bincount(vno, minlength=len(visits))
    visit_offsets = np.concatenate([[0], np.cumsum(per_visit)]).astype(np.int64)
    visit_pidx = visits["pidx"].to_numpy(np.int64)
    visits_per_patient = np.bincount(visit_pidx, minlength=len(patients))
    patient_offsets = np.concatenate([[0], np.cumsum(visits_per_patient)]).astype(np.int64)
    visit_time = visits["vtime_us"].to_numpy(np.float64) / 86_400e6
    birth_days = ((pd.to_datetime(patients["birth_date"]).dt.tz_localize("UTC") - EPOCH)
                  .dt.days.to_numpy(np.float64))
    visit_age = ((visit_time - birth_days[visit_pidx]) / 365.25).astype(np.float32)
    codes = np.asarray(tok["id"]).astype(np.int32)
    raw_value = np.asarray(tok["value"], np.float64)
    z, mu, sd = normalise_values(raw_value, np.asarray(tok["vid"], np.int64),
                                 train_values["vid"], train_values["v"], len(value_codes))
    del tok
    fitted = {
        "vocab.json": json.dumps({
            "tokens": tokens,
            "counts": [0] * len(SPECIALS) + counts["n"].astype(int).tolist(),
            "specials": {s: i for i, s in enumerate(SPECIALS)},
        }, indent=1) + "\n",
        "values.json": json.dumps(
            {"codes": value_codes, "mean": mu.tolist(), "sd": sd.tolist()}, indent=1) + "\n"}
    pat_out = patients[["patient", "split", "gender", "birth_date", "death_date"]].copy()
    pat_out["end_of_record"] = (pd.to_datetime(patients["end_of_record"], utc=True) - EPOCH) \
        / pd.Timedelta(days=1)
    pat_out["n_visits"] = visits_per_patient

    # The labelled patients come first: their arrays are a prefix, the corpus's the rest.
    v_end = int(patient_offsets[n_labelled])
    t_end = int(visit_offsets[v_end])
    parts = [(out, slice(0, n_labelled), slice(0, v_end), slice(0, t_end))]
    if corpus is not None:
        parts.append((out / "corpus", slice(n_labelled, len(patients)),
                      slice(v_end, len(visits)), slice(t_end, len(codes))))
    for where, ps, vs, ts in parts:
        where.mkdir(parents=True, exist_ok=True)
        np.save(where / "codes.npy", codes[ts])
        np.save(where / "values.npy", z[ts])
        np.save(where / "visit_offsets.npy", visit_offsets[vs.start:vs.stop + 1] - ts.start)
        np.save(where / "patient_offsets.npy", patient_offsets[ps.start:ps.stop + 1] - vs.start)
        np.save(where / "visit_time.npy", visit_time[vs])
        np.save(where / "visit_age.npy", visit_age[vs])
        # One row per visit, in array order: which encounter (or day) each visit is (audits).
        pd.DataFrame({"patient": patients["patient"].to_numpy()[visit_pidx[vs]],
                      "visit_key": visits["vkey"].to_numpy()[vs].astype(str),
                      "visit_time": visit_time[vs]}).to_parquet(where / "visits.parquet",
                                                                index=False)
        pat_out.iloc[ps].reset_index(drop=True).to_parquet(where / "patients.parquet",
                                                           index=False)
        for name, text in fitted.items():
            (where / name).write_text(text)

    tokens_per_patient = np.bincount(visit_pidx, weights=per_visit,
                                     minlength=len(patients)).astype(np.int64)
    # out of vocabulary = [UNK] (no vocabulary token has its id); counted per patient, then split
    oov_per_patient = np.bincount(visit_pidx[vno[codes == UNK]], minlength=len(patients))
    split_of_patient = patients["split"].to_numpy()

    def oov_rate(split: str) -> float | None:
        mine = split_of_patient == split
        n = int(tokens_per_patient[mine].sum())
        return int(oov_per_patient[mine].sum()) / n if n else None

    lab = slice(0, n_labelled)
    metrics = {
        "patients": n_labelled,
        **{f"patients_{s}": int((split_of_patient == s).sum()) for s in ("train", "val", "test")},
        "patients_without_visits": int((visits_per_patient[lab] == 0).sum()),
        "vocab_size": len(tokens),
        "tokens": t_end,
        "tokens_with_value": int(np.isfinite(raw_value[:t_end]).sum()),
        "visits": v_end,
        **{f"oov_rate_{s}": oov_rate(s) for s in ("val", "test")},
    }
    if corpus is not None:
        metrics.update({"corpus.patients": len(patients) - n_labelled,
                        "corpus.repeated_training_patients": repeated,
                        "corpus.visits": len(visits) - v_end, "corpus.tokens": len(codes) - t_end})
    for name, arr in (("visits_per_patient", visits_per_patient[lab]),
                      ("tokens_per_patient", tokens_per_patient[lab])):
        for q in (50, 90, 99):
            metrics[f"{name}_p{q}"] = float(np.percentile(arr, q))
    return SequencesResult(metrics=metrics, visits_per_patient=visits_per_patient[lab])
