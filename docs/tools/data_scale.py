"""The data-scale curve (issue 13): the benchmark at growing cohort sizes, one DVC experiment
per size, then C of every family and pre-training's gain against the number of patients.

The generator makes a cohort of N patients as the first N patients of any larger cohort with
the same seed (src/ehrseq/data/synthesize.py; tests/test_synthesize.py), so the sizes are
nested cohorts: the 250 patients are among the 500, and so on.

    python docs/tools/data_scale.py run --sizes 250 500 1000 2000 [-S key=value ...]
    python docs/tools/data_scale.py report --out docs/data-scale.md

``run`` runs ``dvc exp run -n scale-<N> -S data.source=generate -S data.patients=<N>`` (plus
every ``-S``) for each size in turn, in this repository; each experiment is the whole DAG at
that size (on a pod, ``python -m ehrseq.ops.pod run -S data.patients=<N>`` instead: the same
experiment, pushed stage by stage; docs/learning_curves.md). ``report`` lists the experiments
with ``dvc exp show --json`` (``--prefix`` keeps those whose name starts with it; default
``scale-``, ``--prefix ''`` takes all) and reads each one's ``metrics/evaluate.json`` (every
number; the DVC metric is only the headline) from its commit with ``dvc.api.read``, one per
size (the newest; the size is ``metrics/synthesize.json``'s ``patients``, so an imported
export counts too), or
with ``--dirs`` the finished checkouts named (one per size, e.g. worktrees run side by side),
and writes a Markdown page and ``<out>.png``: per family, test Harrell's C with its patient
bootstrap interval against the cohort size; and the paired ΔC of pre-trained against scratch
BEHRT (pre-training's gain) and of each neural family against the best count model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

from ehrseq.params import parse_params

FAMILIES = ("oracle", "best_count", "cox", "coxnet", "gbm", "lstm", "med2vec", "behrt_full",
            "behrt_scratch")
GAINS = (("behrt_full", "behrt_scratch", "pre-training's gain (BEHRT full − scratch)"),
         ("behrt_full", "best_count", "BEHRT full − best count model"),
         ("lstm", "best_count", "LSTM − best count model"),
         ("med2vec", "best_count", "Med2Vec + head − best count model"))
NEURAL_PAIRS = (("behrt_full", "behrt_scratch"), ("behrt_full", "lstm"), ("med2vec", "lstm"))


def run(sizes: list[int], sets: list[str], cwd: Path = Path(".")) -> None:
    for n in sorted(sizes):
        cmd = ["dvc", "exp", "run", "-n", f"scale-{n}", "-S", "data.source=generate",
               "-S", f"data.patients={n}", *[a for s in sets for a in ("-S", s)]]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=cwd, check=True)


def read_output(path: str, rev: str, repo: str = ".") -> dict | None:
    """A JSON stage output (DVC-tracked, not a DVC metric) as it is in commit ``rev``."""
    import dvc.api

    try:
        return json.loads(dvc.api.read(path, repo=repo, rev=rev))
    except Exception:   # noqa: BLE001 (not run yet, or not in the local cache)
        return None


def collect(shown: list[dict], prefix: str = "scale-", read=read_output) -> dict[int, dict]:
    """{cohort size: {"name", "metrics" (evaluate.json), "params"}} for the experiments of
    ``dvc exp show --json``: one experiment per size, the newest."""
    points: dict[int, dict] = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs") or []:
                name, data = rev.get("name") or "", rev.get("data") or {}
                if not name.startswith(prefix) or not rev.get("rev"):
                    continue
                # file names hold dots: look them up as keys, not dotted paths
                params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
                metrics = read("metrics/evaluate.json", rev["rev"])
                synth = read("metrics/synthesize.json", rev["rev"]) or {}
                n = synth.get("patients") or (params.get("data") or {}).get("patients")
                if metrics is None or n is None:
                    continue
                stamp = data.get("timestamp") or ""
                if n not in points or stamp > points[n]["timestamp"]:
                    points[n] = {"name": name, "metrics": metrics, "params": parse_params(params).model_dump(
                                     mode="json"), "timestamp": stamp}
    return dict(sorted(points.items()))


def collect_dirs(dirs: list[Path]) -> dict[int, dict]:
    """The same points from finished checkouts (a worktree or a pod's clone after `dvc pull`):
    each directory's metrics/evaluate.json, its cohort size from metrics/synthesize.json and its
    params.yaml. Two directories of one size are refused: the page would silently drop one."""
    import yaml

    points: dict[int, dict] = {}
    for d in dirs:
        files = {k: d / k for k in ("metrics/evaluate.json", "metrics/synthesize.json",
                                    "params.yaml")}
        missing = [str(f) for f in files.values() if not f.is_file()]
        if missing:
            raise SystemExit(f"--dirs: {d}: missing {', '.join(missing)} (a finished "
                             "`dvc repro evaluate` writes them)")
        n = json.loads(files["metrics/synthesize.json"].read_text())["patients"]
        if n in points:
            raise SystemExit(f"--dirs: {d} and {points[n]['name']} both have {n} patients; "
                             "accepted: one directory per cohort size")
        points[n] = {"name": str(d), "metrics": json.loads(files["metrics/evaluate.json"]
                                                           .read_text()),
                     "params": parse_params(yaml.safe_load(files["params.yaml"]
                                                           .read_text())).model_dump(mode="json")}
    return dict(sorted(points.items()))


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differing(points: dict[int, dict]) -> dict[str, dict[int, object]]:
    """Params (dotted keys) whose values differ between the points, besides ``data.*`` (the
    cohort is what varies) and ``runtime.*`` (the machine: changes no result). An ``outcome.*``
    difference is refused: the points would answer different questions."""
    flats = {n: _flat(p["params"]) for n, p in points.items()}
    keys = sorted({k for f in flats.values() for k in f})
    diff = {k: {n: f.get(k) for n, f in flats.items()} for k in keys
            if not k.startswith(("data.", "runtime."))
            and len({json.dumps(f.get(k), sort_keys=True) for f in flats.values()}) > 1}
    bad = {k: v for k, v in diff.items() if k.startswith("outcome.")}
    if bad:
        raise SystemExit("the points are runs of different outcomes: " + "; ".join(
            f"{k}: " + ", ".join(f"{v!r} ({points[n]['name']})" for n, v in vals.items())
            for k, vals in bad.items()) + "; accepted: one outcome for every cohort size")
    return diff


def _cell(m: dict, key: str) -> str:
    v, lo, hi = m.get(key), m.get(f"{key}_lo"), m.get(f"{key}_hi")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{v:.3f}"


def _signed(d: tuple[float, float, float] | None) -> str:
    """A paired difference with its interval, or a dash."""
    return "—" if d is None else f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]"


def _delta(m: dict, a: str, b: str) -> tuple[float, float, float] | None:
    k = f"delta.{a}-{b}"
    return (m[f"{k}.delta"], m[f"{k}.lo"], m[f"{k}.hi"]) if f"{k}.delta" in m else None


def report(points: dict[int, dict], out: Path, command: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not points:
        raise SystemExit("no experiment with metrics/evaluate.json: run `python "
                         "docs/tools/data_scale.py run --sizes ...` first (or see --prefix)")
    ns = list(points)
    fams = [f for f in FAMILIES if any(f"{f}.c_harrell" in p["metrics"] for p in
                                       points.values())]
    diff = differing(points)
    outcome = (next(iter(points.values()))["params"].get("outcome") or {})
    name = outcome.get("name")
    if name == "synthetic":
        name += f" (scenario {(outcome.get('synthetic') or {}).get('scenario')})"
    lines = [f"# Data-scale curve: the benchmark at {', '.join(f'{n:,}' for n in ns)} "
             "generated patients", "",
             f"Generated by `python docs/tools/data_scale.py report` from "
             f"{', '.join(p['name'] for p in points.values())} (one `dvc repro` per cohort "
             f"size); machine: {platform.machine()} with {os.cpu_count()} CPUs. Command: "
             f"`{command}`.", "",
             "Each cohort is the first N patients of the generator's seed; the test split is "
             "the test patients of that cohort (splits hash the patient id, so a larger "
             "cohort's test split holds the smaller one's), so the rows are not paired across "
             "sizes: read each row's intervals, not the differences between rows.", "",
             f"Outcome: `{name}`. "
             + ("Params that differ between the points (besides `data.*` and `runtime.*`): "
                + "; ".join(f"`{k}`: " + ", ".join(f"{json.dumps(v)} at {n:,}"
                                                    for n, v in vals.items())
                            for k, vals in diff.items())
                if diff else "Every other param (besides `data.*` and `runtime.*`) is the "
                "same at every size."), "",
             "## Test C (Harrell) per family, 95% patient-bootstrap interval", "",
             "| patients | test patients / landmarks / events | best count model | "
             + " | ".join(fams) + " |",
             "|---|---|---|" + "---|" * len(fams)]
    for n, p in points.items():
        m = p["metrics"]
        lines.append(f"| {n:,} | {m.get('test.patients')} / {m.get('test.landmarks')} / "
                     f"{m.get('test.events')} | {m.get('best_count.model', '—')} | "
                     + " | ".join(_cell(m, f"{f}.c_harrell") for f in fams) + " |")
    headroom = any("headroom" in p["metrics"] for p in points.values())
    lines += ["", "## Paired differences (same test patients within each cohort)", "",
              "| patients | " + "headroom (oracle − best count) | " * headroom
              + " | ".join(g[2] for g in GAINS) + " |",
              "|---|" + "---|" * (len(GAINS) + headroom)]
    for n, p in points.items():
        m = p["metrics"]
        cells = [_signed((m["headroom"], m["headroom_lo"], m["headroom_hi"])
                         if "headroom" in m else None)] if headroom else []
        cells += [_signed(_delta(m, a, b)) for a, b, _ in GAINS]
        lines.append(f"| {n:,} | " + " | ".join(cells) + " |")
    pairs = [pr for pr in NEURAL_PAIRS if any(_delta(p["metrics"], *pr) for p in points.values())]
    if pairs:
        lines += ["", "Half-width of the paired 95% interval between two neural models "
                  "(issue 12 asks for at most 0.02):", "",
                  "| patients | " + " | ".join(f"{a} − {b}" for a, b in pairs) + " |",
                  "|---|" + "---|" * len(pairs)]
        for n, p in points.items():
            ds = [_delta(p["metrics"], a, b) for a, b in pairs]
            lines.append(f"| {n:,} | " + " | ".join(
                "—" if d is None else f"{(d[2] - d[1]) / 2:.3f}" for d in ds) + " |")

    timed = [f for f in fams if f != "oracle"]
    lines += ["", "## Seconds per family", "",
              "A neural family's stage: training at every learning rate tried, and its test "
              "predictions (pre-training not included); a count model: its fit.", "",
              "| patients | " + " | ".join(timed) + " |", "|---|" + "---|" * len(timed)]
    for n, p in points.items():
        m = p["metrics"]
        cells = [m.get(f"{f}.stage_seconds", m.get(f"{f}.train_seconds")) for f in timed]
        lines.append(f"| {n:,} | " + " | ".join("—" if s is None else f"{s:,.0f}"
                                                  for s in cells) + " |")

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    for f in fams:
        xs = [n for n in ns if f"{f}.c_harrell" in points[n]["metrics"]]
        ms = [points[n]["metrics"] for n in xs]
        y = [m[f"{f}.c_harrell"] for m in ms]
        ax.plot(xs, y, marker="o", label=f, ls="--" if f == "oracle" else "-")
        if all(f"{f}.c_harrell_lo" in m for m in ms):
            ax.fill_between(xs, [m[f"{f}.c_harrell_lo"] for m in ms],
                            [m[f"{f}.c_harrell_hi"] for m in ms], alpha=0.1)
    ax.set_xscale("log")
    ax.set_xlabel("generated patients")
    ax.set_ylabel("test C-index (Harrell)")
    ax.legend(fontsize=7)
    for a, b, label in GAINS:
        pts = [(n, _delta(points[n]["metrics"], a, b)) for n in ns]
        pts = [(n, d) for n, d in pts if d is not None]
        if pts:
            bx.errorbar([n for n, _ in pts], [d[0] for _, d in pts],
                        yerr=[[d[0] - d[1] for _, d in pts], [d[2] - d[0] for _, d in pts]],
                        marker="o", capsize=3, label=label)
    bx.axhline(0, color="grey", lw=1)
    bx.set_xscale("log")
    bx.set_xlabel("generated patients")
    bx.set_ylabel("paired ΔC (95% interval)")
    bx.legend(fontsize=7)
    fig.tight_layout()
    png = out.with_suffix(".png")
    fig.savefig(png)
    plt.close(fig)
    lines += ["", f"![data-scale curve]({png.name})", ""]
    text = "\n".join(lines)
    out.write_text(text)
    return text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="one `dvc exp run` per cohort size")
    r.add_argument("--sizes", type=int, nargs="+", required=True)
    r.add_argument("-S", "--set-param", dest="sets", action="append", default=[],
                   help="more params for every size, as `dvc exp run -S`")
    p = sub.add_parser("report", help="the page and plot from `dvc exp show --json` (or --dirs)")
    p.add_argument("--out", type=Path, default=Path("docs/data-scale.md"))
    p.add_argument("--prefix", default="scale-")
    p.add_argument("--dirs", type=Path, nargs="+",
                   help="finished checkouts, one per cohort size, instead of DVC experiments")
    p.add_argument("--command", default="python docs/tools/data_scale.py run --sizes 250 500 1000 "
                   "2000", help="the run command, stated on the page")
    a = ap.parse_args(argv)
    if a.cmd == "run":
        bad = [n for n in a.sizes if n < 1]
        if bad:
            raise SystemExit(f"--sizes: {bad}: cohort sizes must be >= 1")
        return run(a.sizes, a.sets)
    if a.dirs:
        return print(report(collect_dirs(a.dirs), a.out, a.command))
    shown = json.loads(subprocess.run(["dvc", "exp", "show", "--json", "--no-pager"],
                                      check=True, capture_output=True, text=True).stdout)
    print(report(collect(shown, a.prefix), a.out, a.command))


if __name__ == "__main__":
    sys.exit(main())
