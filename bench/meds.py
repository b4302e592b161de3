"""Benchmark: MEDS export and import against the Synthea CSV ingest, at 1,000 patients.

Input: a real generated Synthea CSV export (default /work/c1000/csv, 1,000 patients; made with
``ehrseq.data.synthesize.generate_cohort`` into the work dir when absent and ``--generate`` is
given). Each measured step runs in a fresh subprocess that reports the wall time of the call
and its peak resident memory (VmHWM of that process: includes the interpreter and the
libraries; the RSS right after imports is shown too):

1. CSV ingest (``ehrseq.data.ingest.ingest``): the export → ``interim/`` (the baseline);
2. sequences (``build_sequences`` with the default ``SequencesParams``): only for the splits
   that the export needs, not compared;
3. MEDS export (``write_meds(interim, meds, splits=...)``);
4. MEDS import (``read_meds(meds, interim_meds)``), which must give the same events and
   patients as step 1 (counted; tests/test_meds.py compares them column by column).

Ratios are against the CSV ingest measured in the same run. Sizes on disk: every file under
the CSV export, ``interim/`` and the MEDS root (all zstd parquet).

    python bench/meds.py
    python bench/meds.py --csv DIR --repeat 1 --workdir DIR

Results: docs/meds.md ("Measured").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# run as a script, this folder leads sys.path and this file would shadow the `meds` package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
DEFAULT_CSV = Path("/work/c1000/csv")
STEPS = ("csv_ingest", "sequences", "meds_export", "meds_import")


def _rss_mb() -> float:
    """Peak resident memory of this process, MB (VmHWM: ``ru_maxrss`` survives fork+exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def child(step: str, work: Path, csv: Path, threads: int) -> None:
    """One step in this fresh process; prints one JSON line."""
    from ehrseq.data.ingest import ingest
    from ehrseq.data.meds import read_meds, write_meds
    from ehrseq.data.sequences import build_sequences
    from ehrseq.params import SequencesParams

    kw = {"threads": threads} if threads else {}
    base = _rss_mb()
    t0 = time.perf_counter()
    info: dict = {}
    if step == "csv_ingest":
        (work / "interim").mkdir()
        r = ingest(csv, work / "interim", **kw)
        info = {"patients": r.patients, "events": r.events}
    elif step == "sequences":
        info = {"patients": build_sequences(work / "interim", work / "seq",
                                            SequencesParams()).metrics["patients"]}
    elif step == "meds_export":
        w = write_meds(work / "interim", work / "meds", splits=work / "seq" / "patients.parquet")
        info = {"patients": w["subjects"], "rows": w["rows"], "codes": w["codes"]}
    elif step == "meds_import":
        r = read_meds(work / "meds", work / "interim_meds", **kw)
        info = {"patients": r.patients, "events": r.events}
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "peak_mb": _rss_mb(), "base_mb": base, **info}))


def measure(step: str, work: Path, csv: Path, threads: int) -> dict:
    out = {"csv_ingest": "interim", "sequences": "seq", "meds_export": "meds",
           "meds_import": "interim_meds"}[step]
    shutil.rmtree(work / out, ignore_errors=True)
    cmd = [sys.executable, __file__, "--child", step, str(work), str(csv), str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{step} failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r["load"] = os.getloadavg()[0]
    return r


def du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def same_as_csv(work: Path) -> str:
    """Events and patients of the MEDS import against the CSV ingest: same counts per kind."""
    import duckdb

    con = duckdb.connect()
    q = "SELECT kind, count(*) FROM read_parquet('{}') GROUP BY kind ORDER BY kind"
    a = con.execute(q.format(work / "interim" / "events.parquet")).fetchall()
    b = con.execute(q.format(work / "interim_meds" / "events.parquet")).fetchall()
    assert a == b, f"events per kind differ: CSV {a}, MEDS {b}"
    q = "SELECT count(*), count(death_date) FROM read_parquet('{}')"
    pa_, pb = (con.execute(q.format(work / d / "patients.parquet")).fetchone()
               for d in ("interim", "interim_meds"))
    assert pa_ == pb, f"patients (all, dead) differ: CSV {pa_}, MEDS {pb}"
    return f"same events per kind ({sum(n for _, n in a):,}) and patients ({pa_[0]:,}, " \
           f"{pa_[1]} dead) from the MEDS import as from the CSV ingest"


def input_csv(args, work: Path) -> Path:
    if (args.csv / "patients.csv").is_file():
        return args.csv
    if not args.generate:
        sys.exit(f"{args.csv}/patients.csv not found: give --csv DIR (a Synthea CSV export) "
                 "or --generate to make a 1,000-patient cohort (several minutes)")
    import datetime as dt

    from ehrseq.data.synthesize import generate_cohort

    out = work / "csv"
    if not (out / "patients.csv").is_file():
        print(f"generating {args.patients} patients into {out} ...", flush=True)
        tmp = work / "csv.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        generate_cohort(tmp, args.patients, 42, dt.date(2025, 1, 1), "Massachusetts", None,
                        progress=False)
        tmp.rename(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="a Synthea CSV export")
    ap.add_argument("--generate", action="store_true",
                    help="generate the cohort (--patients) when --csv is absent")
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--workdir", type=Path, help="keep the outputs here (default: a temp dir)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per step (default 3); the fastest time and the largest peak are kept")
    ap.add_argument("--threads", type=int, default=0, help="DuckDB threads (0 = every core)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        step, work, csv, threads = a.child
        child(step, Path(work), Path(csv), int(threads))
        return

    tmp = None
    if a.workdir:
        work = a.workdir
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="ehrseq-bench-meds-")
        work = Path(tmp.name)
    try:
        csv = input_csv(a, work)
        machine = (f"{platform.machine()}, {os.cpu_count()} CPUs, "
                   f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB "
                   f"RAM, Python {platform.python_version()}, load "
                   f"{os.getloadavg()[0]:.1f} at start")
        print(f"input: {csv}; work dir {work}\nmachine: {machine}", flush=True)
        res: dict[str, dict] = {}
        for step in STEPS:
            runs = [measure(step, work, csv, a.threads) for _ in range(a.repeat)]
            r = dict(min(runs, key=lambda x: x["seconds"]))
            r["peak_mb"] = max(x["peak_mb"] for x in runs)
            res[step] = r
            print(f"  {step:<12} {r['seconds']:7.1f} s  peak {r['peak_mb']:6.0f} MB  "
                  f"(after imports {r['base_mb']:.0f} MB, load {r['load']:.1f})", flush=True)
        check = same_as_csv(work)
        size = {"csv": du_mb(csv), "interim": du_mb(work / "interim"),
                "meds": du_mb(work / "meds"), "interim_meds": du_mb(work / "interim_meds")}
    finally:
        if tmp is not None:
            tmp.cleanup()

    base = res["csv_ingest"]
    pats, events = base["patients"], base["events"]
    rows = [
        ("CSV ingest (baseline)", "csv_ingest", f"CSV export {size['csv']:,.1f}",
         f"data/interim {size['interim']:,.1f}"),
        ("MEDS export (write_meds)", "meds_export", f"data/interim {size['interim']:,.1f}",
         f"MEDS root {size['meds']:,.1f}"),
        ("MEDS import (read_meds)", "meds_import", f"MEDS root {size['meds']:,.1f}",
         f"data/interim {size['interim_meds']:,.1f}"),
    ]
    lines = [
        f"{pats:,} patients, {events:,} events ({res['meds_export']['rows']:,} MEDS rows, "
        f"{res['meds_export']['codes']:,} codes); {machine}; best of {a.repeat}; "
        f"`python bench/meds.py`",
        "",
        "| step | seconds | time / CSV ingest | peak MB | peak / CSV ingest | input, MB "
        "| output, MB |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for label, step, inp, outp in rows:
        r = res[step]
        lines.append(f"| {label} | {r['seconds']:.1f} | {r['seconds'] / base['seconds']:.2f} | "
                     f"{r['peak_mb']:,.0f} | {r['peak_mb'] / base['peak_mb']:.2f} | {inp} | "
                     f"{outp} |")
    lines += [
        "",
        f"Peak MB: the step's own process (VmHWM), {base['base_mb']:.0f} MB of it the "
        f"interpreter and libraries. MEDS root / CSV export on disk = "
        f"{size['meds'] / size['csv']:.3f}; MEDS root / data/interim = "
        f"{size['meds'] / size['interim']:.2f}. Sequences (for the splits, not compared): "
        f"{res['sequences']['seconds']:.1f} s. {check}.",
    ]
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
