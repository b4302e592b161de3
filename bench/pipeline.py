"""Benchmark: wall time of the whole default pipeline, stage by stage, against the 15-minute
budget for a 2-core CPU machine (issue: "the whole default pipeline finishes with dvc repro on
a 2-core CPU within 15 minutes").

A fresh ``git clone`` of the committed HEAD into a temporary folder (so no output, DVC cache,
run-cache or training checkpoint of this workspace is reused), then one ``dvc repro`` of the
default DAG; every line of its output is timestamped as it arrives, and a stage's time runs
from its ``Running stage`` line to the next one (or the end). Prints a Markdown table with each
stage's seconds and share, the total and its ratio to the budget, the machine and its load
average before and after (other jobs on the machine slow every stage: report it).

    python bench/pipeline.py                   # the default params (150 generated patients)
    python bench/pipeline.py -S runtime.threads=1 -S data.patients=100
    python bench/pipeline.py --keep DIR        # clone into DIR and keep it

Exits 1 when ``dvc repro`` fails. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 15 * 60
STAGE = re.compile(r"Running stage '([^']+)'")


def set_params(path: Path, overrides: list[str]) -> None:
    """``key.sub=value`` overrides (YAML values) written into params.yaml."""
    params = yaml.safe_load(path.read_text())
    for o in overrides:
        key, _, value = o.partition("=")
        *parents, leaf = key.split(".")
        node = params
        for k in parents:
            node = node.setdefault(k, {})   # a key params.yaml leaves to the schema
        node[leaf] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def timed_repro(repo: Path, env: dict) -> tuple[list[tuple[str, float]], float, int, str]:
    """(stage, seconds) in run order, total seconds, exit code, the output's tail."""
    t0 = time.monotonic()
    starts: list[tuple[str, float]] = []
    tail: list[str] = []
    proc = subprocess.Popen(["dvc", "repro"], cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.monotonic() - t0
        m = STAGE.search(line)
        if m:
            starts.append((m.group(1), now))
            print(f"[{now:7.1f} s] {m.group(1)}", flush=True)
        tail = (tail + [line])[-40:]
    rc = proc.wait()
    total = time.monotonic() - t0
    ends = [s for _, s in starts[1:]] + [total]
    return [(n, e - s) for (n, s), e in zip(starts, ends, strict=True)], total, rc, "".join(tail)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                    help="params.yaml override, e.g. -S runtime.threads=1")
    ap.add_argument("--keep", type=Path, help="clone here and keep it (must not exist)")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-pipeline-")) / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=work,
                            capture_output=True, text=True).stdout.strip()   # the one measured
    set_params(work / "params.yaml", [*args.set, f"runtime.checkpoint_dir={work / 'checkpoints'}"])
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": str(work / "src")}
    load_before = os.getloadavg()
    try:
        stages, total, rc, tail = timed_repro(work, env)
    finally:
        if not args.keep:
            shutil.rmtree(work.parent, ignore_errors=True)
    load_after = os.getloadavg()
    if rc:
        print(tail, file=sys.stderr)
        print(f"dvc repro failed (exit {rc})", file=sys.stderr)
        return 1
    print(f"\ncommit {commit}; {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"Python {platform.python_version()}; load average before "
          f"{load_before[0]:.2f}, after {load_after[0]:.2f}; overrides: {args.set or 'none'}\n")
    print("| stage | seconds | share |\n|---|---|---|")
    for name, s in stages:
        print(f"| `{name}` | {s:.0f} | {100 * s / total:.0f} % |")
    print(f"| **total (`dvc repro`)** | **{total:.0f}** | {total / BUDGET_S:.2f} x the "
          f"{BUDGET_S // 60}-minute budget |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
