"""Benchmark: the data stages (ingest, sequences) at 10,000 and 100,000 patients on one
machine, time and peak memory (issue 29: within the machine's 24 GB).

A cohort that large takes hours to generate here, so it is built by replicating a generated
Synthea CSV export under new ids: replica ``r`` of every table prefixes each patient,
encounter and care-plan id with ``r-`` (so every replica is a distinct patient with its own
visits), the rest of each row unchanged. Each stage then runs as its own process
(``python stages/<stage>.py`` in a scratch folder with the default params.yaml and the
replicated export as ``data/raw/synthea``), and its wall time and peak resident memory
(its own ``ru_maxrss``, Linux) are measured. Prints a Markdown table with the ratio of each size to the
smallest one.

    python bench/data_stages_scale.py --from /tmp/final7/data/raw/synthea --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
ID_COLUMNS = ("Id", "PATIENT", "ENCOUNTER")


def replicate(src: Path, out: Path, copies: int) -> int:
    """``copies`` replicas of every CSV table of ``src`` into ``out``; returns the patients."""
    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute("SET preserve_insertion_order = false")   # stream the copies, do not hold them
    for f in sorted(src.glob("*.csv")):
        cols = con.execute(f"SELECT * FROM read_csv('{f}', all_varchar=true, header=true) "
                           "LIMIT 0").description
        names = [c[0] for c in cols]
        sel = ", ".join(f"CASE WHEN \"{n}\" IS NULL OR \"{n}\" = '' THEN \"{n}\" ELSE r.r || '-' "
                        f"|| \"{n}\" END AS \"{n}\"" if n in ID_COLUMNS else f'"{n}"'
                        for n in names)
        con.execute(f"COPY (SELECT {sel} FROM read_csv('{f}', all_varchar=true, header=true), "
                    f"(SELECT range AS r FROM range({copies})) r) TO '{out / f.name}' "
                    "(HEADER, DELIMITER ',')")
    for f in src.iterdir():
        if f.suffix != ".csv":
            shutil.copy(f, out / f.name)
    n = con.execute(f"SELECT count(*) FROM read_csv('{out / 'patients.csv'}', "
                    "all_varchar=true)").fetchone()[0]
    con.close()
    return int(n)


WRAP = """import resource, runpy, sys
try:
    runpy.run_path(sys.argv[1], run_name="__main__")
finally:
    open(sys.argv[2], "w").write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
"""


def run_stage(stage: str, work: Path) -> tuple[float, float]:
    """(seconds, peak RSS in GB) of ``stages/<stage>.py`` run in ``work`` in its own process."""
    rss = work / f".{stage}.maxrss"
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", WRAP, str(ROOT / "stages" / f"{stage}.py"),
                        str(rss)], cwd=work, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                       capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"{stage} failed:\n{r.stderr[-3000:]}")
    return seconds, int(rss.read_text()) / 1024 / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="src", required=True, help="a Synthea CSV export")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--work", default="/tmp/data-stages-scale")
    ap.add_argument("--stages", nargs="+", default=["ingest", "sequences"],
                    help="ingest alone where sequences would not fit the machine")
    args = ap.parse_args()
    src = Path(args.src)
    base = len((src / "patients.csv").read_text().splitlines()) - 1
    rows = []
    for size in sorted(args.sizes):
        copies = max(1, round(size / base))
        work = Path(args.work) / str(size)
        shutil.rmtree(work, ignore_errors=True)
        t0 = time.perf_counter()
        patients = replicate(src, work / "data/raw/synthea", copies)   # synthesize's output
        build = time.perf_counter() - t0
        shutil.copy(ROOT / "params.yaml", work / "params.yaml")
        row = {"patients": patients, "build_s": build}
        for stage in args.stages:
            row[f"{stage}_s"], row[f"{stage}_gb"] = run_stage(stage, work)
        rows.append(row)
        print(row, flush=True)
        shutil.rmtree(work, ignore_errors=True)   # the disk, before the next size
    first = rows[0]
    print(f"\n{platform.node() and ''}{os.cpu_count()} CPUs ({platform.machine()}), Python "
          f"{platform.python_version()}; base export {base} patients ({src}); "
          f"`python bench/data_stages_scale.py --from {src} --sizes "
          f"{' '.join(map(str, args.sizes))}`\n")
    print("| patients | ingest s | ingest peak GB | sequences s | sequences peak GB | "
          "time vs smallest (ingest / sequences) |")
    print("|---|---|---|---|---|---|")
    def cell(r, key, fmt):
        return fmt.format(r[key]) if key in r else "not run"

    for r in rows:
        ratio = " / ".join(f"{r[f'{s}_s'] / first[f'{s}_s']:.1f}x" if f"{s}_s" in r else "-"
                           for s in ("ingest", "sequences"))
        print(f"| {r['patients']:,} | {cell(r, 'ingest_s', '{:.0f}')} | "
              f"{cell(r, 'ingest_gb', '{:.2f}')} | {cell(r, 'sequences_s', '{:.0f}')} | "
              f"{cell(r, 'sequences_gb', '{:.2f}')} | {ratio} |")


if __name__ == "__main__":
    main()
