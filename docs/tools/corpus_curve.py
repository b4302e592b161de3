"""The corpus-size page (issue 29 part 3): does a bigger pre-training corpus pay, at a fixed
number of labelled patients? With ``--vary KEY``, the same page for runs that differ in another
pre-training parameter (issue 26: ``pretrain.objective``), named by its value in each run.

From finished runs of one labelled cohort that differ only in ``pretrain.corpus`` (the first
run: none, pre-training on the training split alone), every number read from each run's
outputs:

- per run: the corpus's patients, the patients pre-training read, its seconds;
- per run and labelled count (the label-efficiency curve's points and every labelled patient):
  pre-trained BEHRT's C, its paired ΔC against the run's best count model and against BEHRT
  from scratch (``metrics/learning_curve.json``), and against pre-trained BEHRT of the first
  run, paired on the same test patients (computed here from both runs' predictions).

    python docs/tools/corpus_curve.py --runs DIR ... --command "..." --note "..." \\
        --out docs/corpus-1000-positive-control.md
    python docs/tools/corpus_curve.py --vary pretrain.objective --runs DIR ... --out X.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ehrseq.data.task import stage_name
from ehrseq.evaluate.scoring import Outcomes
from ehrseq.evaluate.survival import paired_c_difference, risk_score
from ehrseq.params import resolved_params
from ehrseq.survival.bins import read_bins

MODEL = "behrt_full"


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _iv(d: float, lo: float, hi: float) -> str:
    return f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def _delta(m: dict, key: str) -> str:
    return _iv(m[key + "delta"], m[key + "lo"], m[key + "hi"]) if key + "delta" in m else "n/a"


def param(run: Path, key: str):
    """The value of the dotted ``key`` the run's params.yaml resolves to (its default when the
    file leaves it out)."""
    value = resolved_params(run / "params.yaml")
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise SystemExit(f"{run}/params.yaml: no parameter {key!r}")
        value = value[part]
    return value


def load(run: Path, vary: str | None = None) -> dict:
    """One run: its pre-training statistics and ``MODEL``'s points: every labelled training
    patient (metrics/evaluate.json) and the learning curve's (metrics/learning_curve.json);
    the label of its rows: its corpus's patients, or the value of ``vary``."""
    import pandas as pd

    pre = _json(run / "metrics/pretrain_behrt.json")
    ev = _json(run / "metrics/evaluate.json")
    curve = _json(run / "metrics/learning_curve.json")
    if f"{MODEL}.c_harrell" not in ev:
        raise SystemExit(f"{run}: no {MODEL} in metrics/evaluate.json")
    t = pd.read_parquet(run / "data/processed/outcomes/outcomes.parquet",
                        columns=["patient", "split"])
    n_all = int(t.loc[t["split"] == "train", "patient"].nunique())
    points = {n_all: {"c": ev[f"{MODEL}.c_harrell"], "lo": ev[f"{MODEL}.c_harrell_lo"],
                      "hi": ev[f"{MODEL}.c_harrell_hi"],
                      **{b: _delta(ev, f"delta.{MODEL}-{b}.")
                         for b in ("best_count", "behrt_scratch")}}}
    for k in curve:
        if k.startswith(f"curve.{MODEL}.n") and k.endswith(".c_harrell"):
            n = int(k.split(".")[2][1:])
            if n != n_all:
                points[n] = {"c": curve[k], "lo": curve[k + "_lo"], "hi": curve[k + "_hi"],
                             **{b: _delta(curve, f"curve.delta.{MODEL}-{b}.n{n}.")
                                for b in ("best_count", "behrt_scratch")}}
    corpus = int(pre.get("behrt.corpus_patients", 0))
    return {"dir": run, "points": points, "ns": sorted(points), "n_all": n_all,
            "corpus": corpus, "label": f"{corpus:,}" if vary is None else str(param(run, vary)),
            "pretrain_patients": int(pre.get("behrt.train_patients", 0)),
            "pretrain_s": float(pre.get("behrt.train_seconds", 0.0))}


def prediction(run: Path, n: int, n_all: int) -> Path:
    """``MODEL``'s test prediction at ``n`` labelled patients (``n_all``: the main run), where
    the stage writes it (:func:`ehrseq.data.task.stage_name`, replicate 0)."""
    stage = stage_name("finetune_behrt/full", None if n == n_all else n, 0)
    return run / "data/predictions" / stage / f"{MODEL}.npz"


def test_risk(o: Outcomes, h: float, f: Path) -> np.ndarray:
    """The risk ``1 - S(h)`` of the prediction file ``f`` at each of ``o``'s test landmarks."""
    with np.load(f, allow_pickle=False) as z:
        return risk_score(z["surv"][o.align(f, z)].astype(float), z["times"].astype(float), h)


def against_first(runs: list[dict], n_boot: int = 200, seed: int = 0) -> dict:
    """(run index, n) -> paired ΔC of ``MODEL`` in that run minus in the first run, on the
    first run's test landmarks (every run must have the same ones)."""
    base = runs[0]["dir"] / "data/processed/outcomes"
    o = Outcomes.load(base)
    h = o.reference_horizon(read_bins(base)[1])

    def risk(f: Path) -> np.ndarray | None:
        return test_risk(o, h, f) if f.is_file() else None

    out = {}
    for i, r in enumerate(runs[1:], 1):
        other = Outcomes.load(r["dir"] / "data/processed/outcomes")
        if not (np.array_equal(other.index, o.index) and np.array_equal(other.event, o.event)
                and np.array_equal(other.duration, o.duration)):
            raise SystemExit(f"{r['dir']}: its test landmarks differ from {runs[0]['dir']}'s; "
                             "the runs must share the labelled cohort and its split")
        for n in r["ns"]:
            a = risk(prediction(r["dir"], n, r["n_all"]))
            b = risk(prediction(runs[0]["dir"], n, runs[0]["n_all"]))
            if a is not None and b is not None:
                out[i, n] = paired_c_difference(o.duration, o.event, a, b, n_boot, seed, o.groups)
    return out


def page(runs: list[dict], title: str, command: str, note: str,
         vary: str | None = None) -> str:
    name = "corpus patients" if vary is None else f"`{vary}`"
    base_train = runs[0]["pretrain_patients"]
    first = against_first(runs)
    lines = [f"# {title}", "", "Generated by `python docs/tools/corpus_curve.py` from the runs' "
             "outputs; every number is read from them or computed from their predictions.", "",
             f"How it was run: {command}", "", "## The runs", "",
             "| run | " + ("" if vary is None else f"{name} | ") + "corpus patients | "
             "pre-training read (patients) | × the first run's | pre-training s |",
             "|---|---|---|---|---|" + ("" if vary is None else "---|")]
    for r in runs:
        lines.append(f"| `{r['dir']}` | " + ("" if vary is None else f"{r['label']} | ")
                     + f"{r['corpus']:,} | {r['pretrain_patients']:,} | "
                     f"{r['pretrain_patients'] / max(base_train, 1):.1f} | "
                     f"{r['pretrain_s']:.0f} |")
    lines += ["", f"## Pre-trained BEHRT (`{MODEL}`) per "
              f"{'corpus' if vary is None else 'run'} and labelled patients", "",
              "The largest labelled count of each run is every labelled training patient (the "
              "main run); ΔC are paired on the same test patients with 95% patient-bootstrap "
              "intervals.", "",
              f"| {name} | labelled | C [95% CI] | − best count | − BEHRT from scratch | "
              "− the first run's pre-trained BEHRT |", "|---|---|---|---|---|---|"]
    for i, r in enumerate(runs):
        for n in r["ns"]:
            pt, vs = r["points"][n], first.get((i, n))
            lines.append(f"| {r['label']} | {n} | {pt['c']:.3f} [{pt['lo']:.3f}, "
                         f"{pt['hi']:.3f}] | {pt['best_count']} | {pt['behrt_scratch']} | "
                         + ("(the first run)" if i == 0 else
                            _iv(vs["delta"], vs["lo"], vs["hi"]) if vs else "n/a") + " |")
    return "\n".join(lines + ["", "## Reading", "", note or "(none)", ""])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", required=True,
                    help="finished runs; the first without a corpus")
    ap.add_argument("--vary", help="the params key the runs differ in (default: the corpus)")
    ap.add_argument("--title", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--note", default="")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    runs = [load(Path(r), args.vary) for r in args.runs]
    Path(args.out).write_text(page(runs, args.title, args.command, args.note, args.vary))
    print(args.out)


if __name__ == "__main__":
    main()
