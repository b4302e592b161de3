"""Benchmark: our DuckDB ingest against a straightforward pandas ingest of the same input.

The two real Synthea exports in ``shared/data/synthea-csv`` (unmc-v3.2, ~32k events, and
dbt-synthea-v3.0, ~3k events including observations) are tiled N times into one export with
fresh patient and encounter ids per copy (uuid5 of copy and old id), at two sizes: the target
(``--events``, default 5 million) and half of it. Only the files the ingest reads are written.
Each engine runs on each size in a fresh subprocess, which reports the wall time and CPU time
(user + system, all threads) of the ingest call and its peak resident memory (VmHWM: includes
the interpreter and imported libraries; the RSS right after imports is shown too). Both engines
must produce the same events: per-kind counts asserted, full event multisets and the
(patient, time) order compared with DuckDB.

    python bench/ingest.py                  # 2.5M and 5M events
    python bench/ingest.py --quick          # ~100k and ~200k events, a smoke run
    python bench/ingest.py --workdir DIR    # keep (and reuse) the tiled inputs in DIR
    python bench/ingest.py --repeat 2       # best of 2 runs each (for a shared machine)

Target (issue): ours at least 10x the pandas events/s, and our peak memory flat as the input
doubles. Exits 1 if a run failed (e.g. out of memory under ``--memory-limit``). Results and
diagnosis: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPORTS = ROOT.parent / "shared" / "data" / "synthea-csv"
SOURCES = ("unmc-v3.2", "dbt-synthea-v3.0")  # unmc first: its headers lead
EVENT_FILES = ("encounters.csv", "conditions.csv", "medications.csv", "procedures.csv",
               "observations.csv", "immunizations.csv", "allergies.csv", "careplans.csv",
               "devices.csv")
FILES = ("patients.csv",) + EVENT_FILES  # the files the ingest reads; the others are not tiled
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
NS = uuid.UUID("6f1c1f5e-7a52-4d0c-9a51-2f4b8e0c3d17")
GEN_VERSION = 1  # bump when the tiling changes, to invalidate cached inputs


def _exports_dir() -> Path:
    for d in (EXPORTS, Path("/work/shared/data/synthea-csv")):
        if d.is_dir():
            return d
    sys.exit(f"real Synthea exports not found (looked in {EXPORTS})")


# --- input generation -------------------------------------------------------------------------

def _split_csv(path: Path) -> tuple[list[str], str]:
    """Header columns and the raw body (every data line, newline-terminated)."""
    text = path.read_text(encoding="utf-8")
    header, _, body = text.partition("\n")
    if body and not body.endswith("\n"):
        body += "\n"
    return header.rstrip("\r").split(","), body


def _reorder(body: str, cols: list[str], out_cols: list[str]) -> str:
    """Re-serialise ``body`` (columns ``cols``) with the columns ``out_cols`` ('' if absent)."""
    import csv
    import io

    idx = [cols.index(c) if c in cols else None for c in out_cols]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for row in csv.reader(io.StringIO(body)):
        w.writerow(["" if i is None else row[i] for i in idx])
    return buf.getvalue()


def _templates(exports: Path) -> tuple[dict[str, tuple[str, str]], set[str], int]:
    """Per file: (header line, body of all sources); the ids to rewrite; events per copy."""
    tmpl: dict[str, tuple[str, str]] = {}
    ids: set[str] = set()
    events = 0
    for f in FILES:
        parts = [(s, *_split_csv(exports / s / f)) for s in SOURCES if (exports / s / f).is_file()]
        out_cols: list[str] = []
        for _, cols, _ in parts:
            out_cols += [c for c in cols if c not in out_cols]
        body = "".join(b if cols == out_cols else _reorder(b, cols, out_cols)
                       for _, cols, b in parts)
        tmpl[f] = (",".join(out_cols) + "\n", body)
        if f in ("patients.csv", "encounters.csv"):  # their Id column: patient / encounter ids
            import csv
            import io
            for row in csv.DictReader(io.StringIO(tmpl[f][0] + body)):
                ids.add(row["Id"])
        if f != "patients.csv":  # clean exports: every event-file row is one event
            events += body.count("\n")
    return tmpl, ids, events


def build_input(dst: Path, copies: int, exports: Path) -> None:
    """Write ``copies`` tiled copies of the real exports to ``dst`` (cached by a stamp file)."""
    stamp = dst / ".complete"
    spec = json.dumps({"v": GEN_VERSION, "copies": copies, "sources": SOURCES})
    if stamp.is_file() and stamp.read_text() == spec:
        return
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    tmpl, ids, _ = _templates(exports)
    t0 = time.perf_counter()
    outs = {f: open(dst / f, "w", encoding="utf-8", newline="") for f in FILES}
    try:
        for f, (header, _) in tmpl.items():
            outs[f].write(header)
        for k in range(copies):  # stream: one copy of one file in memory at a time
            new = {old: str(uuid.uuid5(NS, f"{k}/{old}")) for old in ids}

            def sub(m: re.Match, new=new) -> str:
                return new.get(m.group(0), m.group(0))

            for f, (_, body) in tmpl.items():
                outs[f].write(UUID_RE.sub(sub, body))
    finally:
        for fh in outs.values():
            fh.close()
    stamp.write_text(spec)
    mb = sum((dst / f).stat().st_size for f in FILES) / 2**20
    print(f"  built {dst.name}: {copies} copies, {mb:,.0f} MB of CSV in "
          f"{time.perf_counter() - t0:.1f}s", flush=True)


# --- the pandas baseline ----------------------------------------------------------------------

PANDAS_TABLES = (  # (file, kind, time column candidates, default system, encounter col, numeric)
    ("encounters.csv", "encounter", ("START", "DATE"), "SNOMED-CT", "ID", False),
    ("conditions.csv", "condition", ("START",), "SNOMED-CT", "ENCOUNTER", False),
    ("medications.csv", "medication", ("START",), "RxNorm", "ENCOUNTER", False),
    ("procedures.csv", "procedure", ("START", "DATE"), "SNOMED-CT", "ENCOUNTER", False),
    ("observations.csv", "observation", ("DATE",), "LOINC", "ENCOUNTER", True),
    ("immunizations.csv", "immunization", ("DATE",), "CVX", "ENCOUNTER", False),
    ("allergies.csv", "allergy", ("START",), "SNOMED-CT", "ENCOUNTER", False),
    ("careplans.csv", "careplan", ("START",), "SNOMED-CT", "ENCOUNTER", False),
    ("devices.csv", "device", ("START",), "SNOMED-CT", "ENCOUNTER", False),
)
EVENT_COLUMNS = ["patient", "time", "encounter", "kind", "system", "code", "description",
                 "value", "unit"]
SORT_KEY = ["patient", "time", "kind", "system", "code", "encounter", "description", "value",
            "unit"]


def pandas_ingest(src: Path, out: Path) -> dict[str, int]:
    """read_csv of every file, build the event columns, concat, groupby, sort, write parquet.

    Same semantics as ``ehrseq.data.ingest`` on clean input: columns matched case-insensitively,
    empty fields are missing, invalid patients and events (no time, no code, unknown patient)
    dropped. Dropped rows are not reported.
    """
    import numpy as np
    import pandas as pd

    def read(path: Path, want: set[str]) -> tuple[pd.DataFrame, dict[str, str]]:
        header = pd.read_csv(path, nrows=0).columns
        h = {c.upper(): c for c in header if c.upper() in want}
        df = pd.read_csv(path, dtype=str, keep_default_na=False, usecols=list(h.values()))
        return df.rename(columns={v: k for k, v in h.items()}), h

    def strip_or_none(s: pd.Series) -> pd.Series:
        s = s.str.strip()
        return s.where(s != "", None)

    def to_time(s: pd.Series) -> pd.Series:
        return pd.to_datetime(s.str.strip(), format="ISO8601", utc=True, errors="coerce")

    p, ph = read(src / "patients.csv", {"ID", "BIRTHDATE", "DEATHDATE", "GENDER", "RACE",
                                        "ETHNICITY"})
    for c in ("DEATHDATE", "GENDER", "RACE", "ETHNICITY"):
        if c not in p:
            p[c] = ""
    pats = pd.DataFrame({
        "patient": p["ID"].str.strip(),
        "birth_date": pd.to_datetime(p["BIRTHDATE"].str.strip(), format="ISO8601",
                                     errors="coerce").dt.date,
        "death_raw": strip_or_none(p["DEATHDATE"]),
        "death_date": pd.to_datetime(p["DEATHDATE"].str.strip(), format="ISO8601",
                                     errors="coerce").dt.date,
        "gender": p["GENDER"].where(p["GENDER"] != "", None),
        "race": p["RACE"].where(p["RACE"] != "", None),
        "ethnicity": p["ETHNICITY"].where(p["ETHNICITY"] != "", None),
    })
    ok = (pats["patient"] != "") & pats["birth_date"].notna() \
        & (pats["death_raw"].isna() | pats["death_date"].notna())
    pats = pats[ok & ~pats["patient"].duplicated()].drop(columns="death_raw")

    frames = []
    for file, kind, times, system, enc, numeric in PANDAS_TABLES:
        path = src / file
        if not path.is_file():
            continue
        df, h = read(path, {"PATIENT", *times, enc, "CODE", "DESCRIPTION", "SYSTEM", "VALUE",
                            "UNITS", "TYPE"})
        tcol = next(c for c in times if c in h)
        n = len(df)
        ev = pd.DataFrame({
            "patient": df["PATIENT"].str.strip(),
            "time": to_time(df[tcol]),
            "encounter": strip_or_none(df[enc]) if enc in df else None,
            "kind": kind,
            "system": strip_or_none(df["SYSTEM"]).fillna(system) if "SYSTEM" in df else system,
            "code": df["CODE"].str.strip(),
            "description": df["DESCRIPTION"] if "DESCRIPTION" in df else "",
            "value": np.nan,
            "unit": None,
        }, index=range(n))
        if numeric and "VALUE" in df:
            value = pd.to_numeric(df["VALUE"].str.strip(), errors="coerce")
            if "TYPE" in df:
                value = value.where(df["TYPE"].str.lower().isin(["numeric", ""]))
            ev["value"] = value.astype("float64")
            if "UNITS" in df:
                ev["unit"] = strip_or_none(df["UNITS"])
        frames.append(ev[(ev["time"].notna()) & (ev["code"] != "")
                         & ev["patient"].isin(pats["patient"])])
    events = pd.concat(frames, ignore_index=True)
    per_patient = events.groupby("patient").size()  # the events-per-patient groupby
    per_patient = per_patient.reindex(pats["patient"], fill_value=0)
    assert int(per_patient.sum()) == len(events)
    events = events.sort_values(SORT_KEY, na_position="first", ignore_index=True)
    events.to_parquet(out / "events.parquet", compression="zstd", index=False)
    last = events["time"].max()
    pats["end_of_record"] = pd.to_datetime(pats["death_date"]).dt.tz_localize("UTC") \
        .fillna(last)
    pats.sort_values("patient").to_parquet(out / "patients.parquet", compression="zstd",
                                           index=False)
    return {str(k): int(v) for k, v in events["kind"].value_counts().sort_index().items()}


# --- one measured run (in a fresh subprocess) ------------------------------------------------

def _rss_mb() -> float:
    """Peak resident memory of this process so far, MB.

    VmHWM, not ``ru_maxrss``: on Linux ``ru_maxrss`` survives fork+exec, so a child would
    report its parent's RSS if that was larger; VmHWM belongs to this process's own memory map.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def child(engine: str, src: Path, out: Path, memory_limit: str) -> None:
    if engine == "ours":
        from ehrseq.data.ingest import ingest
    else:
        import numpy  # noqa: F401  (imports before the baseline RSS, as for ours)
        import pandas  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    base = _rss_mb()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if engine == "ours":
        res = ingest(src, out, memory_limit=memory_limit)
        by_kind = {str(k): int(v) for k, v in res.events_by_kind.items()}
    else:
        by_kind = pandas_ingest(src, out)
    seconds = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    print(json.dumps({"seconds": seconds, "cpu_s": cpu, "by_kind": by_kind,
                      "peak_mb": _rss_mb(), "base_mb": base}))


def measure(engine: str, src: Path, out: Path, memory_limit: str) -> dict:
    """One run in a fresh interpreter; {'error': ...} if it failed (e.g. out of memory)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, __file__, "--child", engine, str(src), str(out), memory_limit]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    load = os.getloadavg()[0]
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        err = next((ln for ln in reversed(lines) if "Error" in ln or "Exception" in ln),
                   lines[-1] if lines else f"exit {proc.returncode}")
        return {"error": err.strip()[:160], "load": load}
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r["events"] = sum(r["by_kind"].values())
    r["load"] = load
    return r


def best_of(engine: str, src: Path, out: Path, memory_limit: str, repeat: int) -> dict:
    """Fastest of ``repeat`` runs (the machine may be shared); peak memory is the largest."""
    runs = [measure(engine, src, out, memory_limit) for _ in range(repeat)]
    bad = [r for r in runs if "error" in r]
    if bad:
        return bad[0]
    best = dict(min(runs, key=lambda r: r["seconds"]))
    best["peak_mb"] = max(r["peak_mb"] for r in runs)
    return best


def same_events(a: Path, b: Path) -> None:
    """Both events.parquet hold the same multiset of rows, in the same (patient, time) order."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    cols = ", ".join(f"CAST({c} AS {'TIMESTAMPTZ' if c == 'time' else 'VARCHAR'}) AS {c}"
                     if c in ("time", "value") else c for c in EVENT_COLUMNS)
    ra, rb = (f"(SELECT {cols} FROM read_parquet('{p / 'events.parquet'}'))" for p in (a, b))
    for x, y in ((ra, rb), (rb, ra)):
        n = con.execute(f"SELECT count(*) FROM (SELECT * FROM {x} EXCEPT ALL SELECT * FROM {y})"
                        ).fetchone()[0]
        assert n == 0, f"{n} events differ between {a} and {b}"
    n = con.execute(f"SELECT count(*) FROM {ra} x POSITIONAL JOIN {rb} y WHERE x.patient IS "
                    "DISTINCT FROM y.patient OR x.time IS DISTINCT FROM y.time").fetchone()[0]
    assert n == 0, f"{n} rows out of (patient, time) order between {a} and {b}"
    con.close()


# --- driver ----------------------------------------------------------------------------------

def _fmt(r: dict, copies: int, per_copy: int, engine: str) -> str:
    if "error" in r:
        return (f"| {copies * per_copy:,} | {engine} | failed: {r['error']} | | | | | "
                f"{r['load']:.1f} |")
    return (f"| {r['events']:,} | {engine} | {r['seconds']:.1f} | "
            f"{r['events'] / r['seconds']:,.0f} | {r['cpu_s']:.1f} | {r['peak_mb']:,.0f} | "
            f"{r['base_mb']:,.0f} | {r['load']:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=5_000_000,
                    help="events in the larger input (the smaller has half); default 5M")
    ap.add_argument("--quick", action="store_true", help="~100k and ~200k events, a smoke run")
    ap.add_argument("--workdir", type=Path,
                    help="where tiled inputs are kept and reused (default: a temporary dir)")
    ap.add_argument("--memory-limit", default="1GB", help="DuckDB memory_limit for ours")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per engine and size; the fastest is reported (default 1)")
    ap.add_argument("--child", nargs=4, metavar=("ENGINE", "SRC", "OUT", "MEMLIMIT"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        engine, src, out, mem = args.child
        child(engine, Path(src), Path(out), mem)
        return

    exports = _exports_dir()
    _, _, per_copy = _templates(exports)
    target = 200_000 if args.quick else args.events
    big = max(2, math.ceil(target / per_copy))
    big += big % 2
    sizes = (big // 2, big)
    tmp = None
    if args.workdir:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="ehrseq-bench-ingest-")
        work = Path(tmp.name)
    print(f"inputs: {', '.join(SOURCES)} tiled with fresh ids, {per_copy:,} events per copy; "
          f"copies {sizes[0]} and {sizes[1]}; work dir {work}", flush=True)
    results: dict[int, dict[str, dict]] = {}
    try:
        for copies in sizes:
            src = work / f"input-x{copies}"
            build_input(src, copies, exports)
            res = results[copies] = {}
            for engine in ("ours", "pandas"):
                out = work / "out" / f"x{copies}-{engine}"
                r = res[engine] = best_of(engine, src, out, args.memory_limit, args.repeat)
                if "error" in r:
                    print(f"  {copies * per_copy:>10,} events  {engine:<6}  FAILED: {r['error']}",
                          flush=True)
                    continue
                print(f"  {copies * per_copy:>10,} events  {engine:<6}  {r['seconds']:7.1f}s  "
                      f"{r['events'] / r['seconds']:>10,.0f} ev/s  peak {r['peak_mb']:,.0f} MB",
                      flush=True)
                assert r["events"] == copies * per_copy, (engine, r["events"], copies)
            if not any("error" in r for r in res.values()):
                assert res["ours"]["by_kind"] == res["pandas"]["by_kind"], \
                    (res["ours"]["by_kind"], res["pandas"]["by_kind"])
                same_events(work / "out" / f"x{copies}-ours", work / "out" / f"x{copies}-pandas")
                print("  same events from both engines (per kind, as multisets, and in "
                      "(patient, time) order)", flush=True)
            shutil.rmtree(work / "out")
    finally:
        if tmp is not None:
            tmp.cleanup()

    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python "
          f"{platform.python_version()}; ours: memory_limit={args.memory_limit}, default "
          f"threads; best of {args.repeat}")
    print("| events | engine | seconds | events/s | CPU s | peak MB | RSS after imports MB "
          "| load avg |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for copies, res in results.items():
        for engine in ("ours", "pandas"):
            print(_fmt(res[engine], copies, per_copy, engine))
    print()
    ok = {c: res for c, res in results.items() if not any("error" in r for r in res.values())}
    for copies, res in results.items():
        if copies not in ok:
            print(f"{copies * per_copy:,} events: a run failed, no speed ratio "
                  "(target >= 10x: NOT met)")
            continue
        sp = (res["ours"]["events"] / res["ours"]["seconds"]) / \
            (res["pandas"]["events"] / res["pandas"]["seconds"])
        cpu = res["pandas"]["cpu_s"] / res["ours"]["cpu_s"]
        print(f"{res['ours']['events']:,} events: ours/pandas events/s = {sp:.1f}x "
              f"(target >= 10x: {'met' if sp >= 10 else 'NOT met'}); pandas/ours CPU "
              f"seconds = {cpu:.1f}x")
    small, large = (results[c] for c in sizes)
    for engine in ("ours", "pandas"):
        if "error" in small[engine] or "error" in large[engine]:
            print(f"{engine}: peak memory at 2x / 1x input: n/a (a run failed)")
            continue
        ratio = large[engine]["peak_mb"] / small[engine]["peak_mb"]
        print(f"{engine}: peak memory at 2x / 1x input = {ratio:.2f}"
              + (f" (target flat, <= 1.10: {'met' if ratio <= 1.10 else 'NOT met'})"
                 if engine == "ours" else ""))
    if len(ok) < len(results):
        sys.exit("a run failed (see the table)")


if __name__ == "__main__":
    main()
