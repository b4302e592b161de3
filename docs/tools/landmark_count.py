"""The landmark-count page (issue 26 part 7): do more landmarks per patient (more labelled rows
from the same generated patients) lift the models, and which count should the benchmark pages
use?

From two or more finished runs of one cohort that differ only in ``outcome.landmark.count``
(the first: the smallest count). A larger count keeps the landmarks of a smaller one and each
landmark's outcome is drawn from a hash of (seed, patient, landmark time) (src/ehrseq/outcomes),
so the first run's test landmarks are among every other run's, with nearly the same outcomes
(``MAX_FLIPS``, ``MIN_RHO``): each model of every run is scored on exactly those landmarks against the
first run's outcomes and compared with the same model of the first run, paired on the same
test patients. With ``--vary KEY``, the same page for runs of one cohort and one landmark count
that differ in another parameter (issue 26: ``model.size``), each run named by its value.
Every number is read from the runs' outputs or computed from their predictions:

- per run: landmarks, training rows, test landmarks and events, the oracle, the best count model
  chosen on validation, the headroom, training seconds per model;
- per model: C on the first run's test landmarks in each run, the paired ΔC (run − first run),
  and each run's own paired ΔC against its best count model and its oracle.

    python docs/tools/landmark_count.py --runs DIR3 DIR10 --title "..." --command "..." \\
        --note "..." --out docs/landmarks-1000-positive-control.md
    python docs/tools/landmark_count.py --vary model.size --runs TINY SMALL ... --out X.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ehrseq.evaluate.report import sequence_models
from ehrseq.evaluate.scoring import Outcomes
from ehrseq.evaluate.survival import harrell_c_interval, paired_c_difference
from ehrseq.survival.bins import read_bins

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus_curve import _iv, param, test_risk  # noqa: E402

N_BOOT = 200
# The outcomes of the shared test landmarks may differ a little between runs: every feature of
# a synthetic hazard is standardised over the run's landmarks, so more landmarks shift each
# log-hazard slightly (at 1,000 patients, 3 against 10: 8 of 2,995 events differ, the
# durations' rank correlation is 0.99997). More than MAX_FLIPS of the events differing, or a
# rank correlation below MIN_RHO, is another cohort: refused.
MAX_FLIPS = 0.02
MIN_RHO = 0.99


def _delta(ev: dict, a: str, b: str) -> str:
    k = f"delta.{a}-{b}."
    return _iv(ev[k + "delta"], ev[k + "lo"], ev[k + "hi"]) if k + "delta" in ev else "n/a"


def load(run: Path, vary: str | None = None) -> dict:
    """One run's report metrics, its landmark count and table sizes; the label of its columns:
    its landmarks per patient, or the value of ``vary``."""
    ev = json.loads((run / "metrics/evaluate.json").read_text())
    t = pd.read_parquet(run / "data/processed/outcomes/outcomes.parquet",
                        columns=["patient", "split", "event"])
    models = sorted(k[:-len(".stage")] for k in ev if k.endswith(".stage"))
    per_patient = f"{len(t) / t['patient'].nunique():.2f}"
    return {"dir": run, "ev": ev, "models": models, "per_patient": per_patient,
            "label": per_patient if vary is None else str(param(run, vary)),
            "landmarks": len(t), "patients": int(t["patient"].nunique()),
            "train_rows": int((t["split"] == "train").sum()),
            "test_rows": int((t["split"] == "test").sum()),
            "test_events": int(t.loc[t["split"] == "test", "event"].sum())}


def on_first(runs: list[dict], n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Each model's C on the first run's test landmarks in every run, and (run index, model) ->
    the paired ΔC of that run's model minus the first run's, on those landmarks."""
    base = runs[0]["dir"] / "data/processed/outcomes"
    o = Outcomes.load(base)
    h = o.reference_horizon(read_bins(base)[1])
    cs: dict = {}
    risks: dict = {}
    agree: list = []
    for i, r in enumerate(runs):
        other = Outcomes.load(r["dir"] / "data/processed/outcomes")
        mine = pd.MultiIndex.from_arrays([other.index, other.landmark_visits])
        pos = mine.get_indexer(pd.MultiIndex.from_arrays([o.index, o.landmark_visits]))
        if (pos < 0).any():
            raise SystemExit(f"{r['dir']}: {int((pos < 0).sum())} of {runs[0]['dir']}'s test "
                             "landmarks are not among its own; the runs must share the cohort, "
                             "its split and landmark.seed, the first with the smallest count")
        flips = int((other.event[pos] != o.event).sum())
        rho = float(spearmanr(other.duration[pos], o.duration).correlation)
        if flips > MAX_FLIPS * len(pos) or not rho >= MIN_RHO:
            raise SystemExit(f"{r['dir']}: the outcomes of the shared test landmarks differ "
                             f"from {runs[0]['dir']}'s ({flips} of {len(pos)} events, "
                             f"durations' rank correlation {rho:.4f}): not one cohort")
        agree.append((flips, rho))
        for m in r["models"]:
            f = r["dir"] / "data/predictions" / r["ev"][f"{m}.stage"] / f"{m}.npz"
            if not f.is_file():
                continue
            risks[i, m] = risk = test_risk(o, h, f)
            cs[i, m] = harrell_c_interval(o.duration, o.event, risk, n_boot, seed, o.groups)
    deltas = {(i, m): paired_c_difference(o.duration, o.event, risks[i, m], risks[0, m],
                                          n_boot, seed, o.groups)
              for (i, m) in risks if i > 0 and (0, m) in risks}
    oracle = harrell_c_interval(o.duration, o.event, o.true_risk, 0)["c_harrell"] \
        if np.isfinite(o.true_risk).all() else None
    return {"c": cs, "delta": deltas, "oracle": oracle, "n": len(o.index),
            "events": int(o.event.sum()), "agree": agree[1:]}


def page(runs: list[dict], title: str, command: str, note: str,
         vary: str | None = None) -> str:
    first = on_first(runs)
    seq = set(sequence_models(runs[0]["ev"]))
    lines = [f"# {title}", "", "Generated by `python docs/tools/landmark_count.py` from the "
             "runs' outputs; every number is read from them or computed from their "
             "predictions.", "", f"How it was run: {command}", "", "## The runs", "",
             "| run | " + ("" if vary is None else f"`{vary}` | ") + "landmarks per patient | landmarks | training rows | test landmarks "
             "(events) | oracle C | best count (validation) | headroom (oracle − best count) | "
             "best sequence model (validation loss) − best count |",
             "|---|---|---|---|---|---|---|---|---|" + ("" if vary is None else "---|")]
    for r in runs:
        ev = r["ev"]
        head = _iv(ev["headroom"], ev["headroom_lo"], ev["headroom_hi"]) \
            if "headroom" in ev else "n/a"
        oracle = f"{ev['oracle.c_harrell']:.3f}" if "oracle.c_harrell" in ev else "n/a"
        seq = sequence_models(ev)
        best = min(seq, key=lambda a: ev[f"{a}.best_val_loss"]) if seq else None
        lines.append(f"| `{r['dir']}` | " + ("" if vary is None else f"{r['label']} | ")
                     + f"{r['per_patient']} | {r['landmarks']:,} | "
                     f"{r['train_rows']:,} | {r['test_rows']:,} ({r['test_events']:,}) | "
                     f"{oracle} | {ev.get('best_count.model', 'n/a')} | {head} | "
                     + (f"{best}: {_delta(ev, best, 'best_count')}" if best else "n/a") + " |")
    later = ", ".join(r["label"] for r in runs[1:])
    per = " per patient" if vary is None else ""
    oracle = f"; the oracle's C there: {first['oracle']:.3f}" if first["oracle"] else ""
    lines += ["", "## Every model on the same test landmarks", "",
              f"The first run's {first['n']:,} test landmarks ({first['events']:,} events), "
              f"which every run shares, scored against the first run's outcomes{oracle}. "
              "The later runs' outcomes of those landmarks: "
              + "; ".join(f"{f} events differ, durations' rank correlation {rho:.5f}"
                          for f, rho in first["agree"])
              + " (each feature of the synthetic hazard is standardised over the run's "
              "landmarks). C is Harrell's at the "
              "reference horizon h*; ΔC is paired on the same test patients with a 95% "
              f"patient-bootstrap interval ({N_BOOT} resamples).", "",
              "| model | family | " + " | ".join(f"C [95% CI], {r['label']}{per}" for r in runs)
              + f" | ΔC, {later} − {runs[0]['label']} [paired 95% CI] |",
              "|---|---|" + "---|" * len(runs) + "---|"]
    models = sorted({m for r in runs for m in r["models"] if m != "km"},
                    key=lambda m: -first["c"].get((len(runs) - 1, m), {}).get("c_harrell", 0.0))
    for m in models:
        cells = [f"{c['c_harrell']:.3f} [{c['c_harrell_lo']:.3f}, {c['c_harrell_hi']:.3f}]"
                 if (c := first["c"].get((i, m))) else "n/a" for i in range(len(runs))]
        ds = [_iv(d["delta"], d["lo"], d["hi"]) if (d := first["delta"].get((i, m))) else "n/a"
              for i in range(1, len(runs))]
        lines.append(f"| {m} | {'sequence' if m in seq else 'count'} | " + " | ".join(cells)
                     + " | " + "; ".join(ds) + " |")
    lines += ["", "## Each run on its own test split", "",
              "Each run's report (metrics/evaluate.json): C on its own test landmarks and the "
              "paired ΔC against its own best count model and oracle, with its training "
              "seconds (every lr of the tuning grid).", "",
              "| model | " + " | ".join(f"{r['label']}: C | − best count | − oracle | train s"
                                       for r in runs) + " |",
              "|---|" + "---|---|---|---|" * len(runs)]
    for m in models:
        cells = []
        for r in runs:
            ev = r["ev"]
            c = f"{ev[m + '.c_harrell']:.3f}" if m + ".c_harrell" in ev else "n/a"
            secs = ev.get(f"{m}.tune.wall_time_s") or ev.get(f"{m}.train_seconds")
            s = f"{secs:.0f}" if secs is not None else "n/a"
            cells.append(f"{c} | {_delta(ev, m, 'best_count')} | {_delta(ev, m, 'oracle')} "
                         f"| {s}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", "## Reading", "", note or "(none)", ""])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", required=True,
                    help="finished runs of one cohort, the smallest landmark count first")
    ap.add_argument("--vary", help="the params key the runs differ in (default: the landmark "
                    "count)")
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
