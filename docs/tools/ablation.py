"""Ablation: re-train stages of a finished run under a grid of parameter values and seeds, and
print their validation losses as a Markdown table (the criterion every choice reads; the test
split is never scored here).

    python docs/tools/ablation.py --from /tmp/a500 --name lstm \\
        --stage train_survival --metric lstm.best_val_loss \\
        --grid model.lstm.pool=attention,mean,sum --grid model.lstm.time=days,gap --seeds 0 1 2 \\
        --out docs/ablation-lstm-500.md

``--from`` is a checkout that ran ``dvc repro`` (its data/processed and params.yaml are copied
into a scratch folder, ``--work``); every stage of ``--stage`` (``NAME`` or ``NAME:ARGS``, run in
order as ``python stages/NAME.py ARGS`` with the code of ``--code``, default this checkout;
a learning-curve point ``NAME:MODE --labelled N`` reports its metrics as ``n<N>.<key>``) runs
once per point of the grid and seed (``train.seed``), and the ``--metric`` keys are read from
the stage's metrics file. Rows are the grid points; columns each metric's mean over the seeds
and its range. ``--rows X.json`` renders the rows an earlier run saved (``--out X.md`` writes
``X.json`` beside it) again, with another ``--note``, without training.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def set_key(params: dict, key: str, value) -> None:
    *path, leaf = key.split(".")
    node = params
    for k in path:
        node = node.setdefault(k, {})
    node[leaf] = value


def stage_metrics(stage: str) -> tuple[str, str, str]:
    """``NAME[:ARGS]`` -> (script name, its metrics file under metrics/, the prefix of its
    ``--metric`` keys: ``n<N>.`` for a learning-curve point ``--labelled N``, else none)."""
    name, _, args = stage.partition(":")
    words = args.split()
    pos = words[0] if words and not words[0].startswith("--") else ""
    if "--labelled" in words:
        n = words[words.index("--labelled") + 1]
        r = words[words.index("--replicate") + 1] if "--replicate" in words else "0"
        return name, f"curve/{name}/{pos + '/' if pos else ''}n{n}_r{r}.json", f"n{n}."
    return name, f"{name}/{pos}.json" if pos else f"{name}.json", ""


def workspace(src: Path, work: Path, stages: list[str]) -> None:
    """A fresh ``work`` with the run's sequences and outcomes and its pre-trained encoders
    (BEHRT's, Med2Vec's: what fine-tuning reads), but those of a stage in ``stages``."""
    shutil.rmtree(work, ignore_errors=True)
    (work / "data/processed").mkdir(parents=True)
    for d in ("sequences", "outcomes"):
        shutil.copytree(src / "data/processed" / d, work / "data/processed" / d)
    for stage in ("pretrain_behrt", "train_med2vec"):
        pre = src / "models" / stage
        if (pre / "model.safetensors").exists() and \
                stage not in (s.partition(":")[0] for s in stages):
            shutil.copytree(pre, work / "models" / stage)


def run(a: argparse.Namespace) -> list[dict]:
    work = Path(a.work)
    workspace(Path(a.src), work, a.stage)
    base = yaml.safe_load((Path(a.src) / "params.yaml").read_text())
    grid = [(k, [yaml.safe_load(v) for v in vs.split(",")])
            for k, vs in (g.split("=", 1) for g in a.grid)]
    env = {**os.environ, "PYTHONPATH": str(Path(a.code) / "src"), "OMP_NUM_THREADS": "1"}
    rows = []
    for point in itertools.product(*(vs for _, vs in grid)):
        for seed in a.seeds:
            params = json.loads(json.dumps(base, default=str))
            for (key, _), value in zip(grid, point, strict=True):
                set_key(params, key, value)
            set_key(params, "train.seed", seed)
            (work / "params.yaml").write_text(yaml.safe_dump(params))
            row = {"point": dict(zip((k for k, _ in grid), point, strict=True)), "seed": seed}
            t0 = time.monotonic()
            for stage in a.stage:
                name, mfile, prefix = stage_metrics(stage)
                r = subprocess.run([sys.executable, str(Path(a.code) / f"stages/{name}.py"),
                                    *stage.partition(":")[2].split()], cwd=work, env=env,
                                   capture_output=True, text=True)
                if r.returncode:
                    raise SystemExit(f"{stage} failed at {row}:\n{r.stderr[-3000:]}")
                m = json.loads((work / "metrics" / mfile).read_text())
                row.update({k: m[k.removeprefix(prefix)] for k in a.metric
                            if k.startswith(prefix) and k.removeprefix(prefix) in m})
            row["seconds"] = time.monotonic() - t0
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def table(rows: list[dict], metrics: list[str]) -> str:
    points = []
    for r in rows:
        if r["point"] not in points:
            points.append(r["point"])
    keys = list(points[0]) if points else []
    lines = ["| " + " | ".join(keys + [f"{m} (mean; min-max over seeds)" for m in metrics])
             + " | seeds |", "|" + "---|" * (len(keys) + len(metrics) + 1)]
    for p in points:
        rs = [r for r in rows if r["point"] == p]
        cells = [str(p[k]) for k in keys]
        for m in metrics:
            v = [r[m] for r in rs if r.get(m) is not None]
            if v and not all(isinstance(x, int | float) for x in v):   # e.g. the objective used
                cells.append(", ".join(sorted({str(x) for x in v})))
                continue
            cells.append(f"{sum(v) / len(v):.4f} ({min(v):.4f}-{max(v):.4f})" if v else "n/a")
        lines.append("| " + " | ".join(cells + [str(len(rs))]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="src", required=True, help="a checkout that ran dvc repro")
    ap.add_argument("--code", default=str(ROOT), help="checkout whose src/ and stages/ run")
    ap.add_argument("--work", default=None, help="scratch folder (default /tmp/ablation-NAME)")
    ap.add_argument("--name", default="run")
    ap.add_argument("--stage", action="append", required=True, metavar="NAME[:ARG]")
    ap.add_argument("--metric", action="append", required=True)
    ap.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--title", default="Ablation")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--rows", type=Path, help="the JSON an earlier run wrote beside its --out: "
                    "its rows are rendered again (with another --note or --title), nothing "
                    "is trained")
    a = ap.parse_args()
    a.work = a.work or f"/tmp/ablation-{a.name}"
    rows = json.loads(a.rows.read_text()) if a.rows else run(a)
    if a.out:   # first, so that no rendering error loses a measured row
        a.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    text = "\n".join([
        f"# {a.title}", "",
        f"Generated by `python docs/tools/ablation.py {' '.join(sys.argv[1:])}` on "
        f"{dt.date.today():%Y-%m-%d} ({os.cpu_count()} CPUs, {platform.machine()}, Python "
        f"{platform.python_version()}). Validation losses only: every choice reads the "
        "validation split; the test split is not scored here.", "",
        *([a.note, ""] if a.note else []), table(rows, a.metric)])
    if a.out:
        a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
