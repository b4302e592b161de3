"""A benchmark page from one run's outputs (metrics/evaluate.json, metrics/outcomes.json):
every model beside the best count model and the oracle with paired intervals, the test
patients, landmarks and events, train time, the headroom, and the issue-12 expectations checked
against the numbers. Nothing is typed in: every number is read from the run.

    python docs/tools/benchmark_page.py RUN_DIR --title "..." --command "..." [--note "..."] --out docs/X.md

RUN_DIR holds ``metrics/`` (and ``params.yaml``) of a finished `dvc repro`. Beside the page,
``docs/X.json`` holds its headline (:func:`headline_row`), from which
``docs/tools/results_table.py`` generates the README's results table. When the run has
learning-curve points, the page also has the report's label-efficiency section (paired ΔC per
labelled count, crossovers, every point's cost) and its two plots, copied beside the page as
``<page>-learning_curve.png`` and ``<page>-learning_curve_cost.png``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ehrseq.params import resolved_params


def _ci(m: dict, key: str) -> str:
    v = m.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    lo, hi = m.get(f"{key}_lo"), m.get(f"{key}_hi")
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None and not math.isnan(lo) else \
        f"{v:.3f}"


def _delta(m: dict, a: str, b: str) -> str:
    k = f"delta.{a}-{b}"
    if f"{k}.delta" not in m:
        return ""
    return f"{m[k + '.delta']:+.3f} [{m[k + '.lo']:+.3f}, {m[k + '.hi']:+.3f}]"


def models(m: dict) -> list[str]:
    return sorted(k[:-len(".c_harrell")] for k in m if k.endswith(".c_harrell")
                  and not k.startswith(("oracle.", "best_count.", "best.")))


def expectations(m: dict, scenario: str | None) -> list[str]:
    """The issue-12 expectations, each checked on the numbers."""
    out = []
    best = m.get("best_count.model")
    neural = [a for a in models(m) if f"{a}.n_params" in m]
    pairs = [(k[len("delta."):-len(".delta")], m[k[:-len(".delta")] + ".hi"] -
              m[k[:-len(".delta")] + ".lo"]) for k in m
             if k.startswith("delta.") and k.endswith(".delta")
             and all(x in neural for x in k[len("delta."):-len(".delta")].split("-"))]
    for name, width in sorted(pairs):
        out.append(f"- paired interval {name}: half-width {width / 2:.3f} "
                   f"({'meets' if width / 2 <= 0.02 else 'misses'} the 0.02 target)")
    if "headroom" in m:
        h, lo, hi = m["headroom"], m["headroom_lo"], m["headroom_hi"]
        if scenario == "sequential":
            out.append(f"- positive control: headroom (oracle − {best}) {h:+.3f} [{lo:+.3f}, "
                       f"{hi:+.3f}] ({'exceeds' if h > 0.05 else 'does not exceed'} 0.05)")
            # the sequence model chosen on validation (lowest validation loss: every one
            # shares the survival loss on the same landmarks), never the test split's best
            chosen = [a for a in neural if f"delta.{a}-best_count.delta" in m
                      and m.get(f"{a}.best_val_loss") is not None]
            if chosen:
                a = min(chosen, key=lambda x: m[f"{x}.best_val_loss"])
                k = f"delta.{a}-best_count."
                d, lo_a, hi_a = m[k + "delta"], m[k + "lo"], m[k + "hi"]
                where = "above 0" if lo_a > 0 else "below 0" if hi_a < 0 else "includes 0"
                closed = d / h if h > 0 else math.nan
                out.append(f"- best sequence model on validation (lowest validation loss) {a}: "
                           f"{d:+.3f} [{lo_a:+.3f}, {hi_a:+.3f}] over {best} ({where}); "
                           f"share of the headroom closed {closed:+.2f}")
        else:
            out.append(f"- negative control: oracle − {best} = {h:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                       f" ({'within' if abs(h) <= 0.01 else 'not within'} 0.01)")
    return out


def _git(run: Path, *args: str) -> str:
    import subprocess

    res = subprocess.run(["git", "-C", str(run), *args], capture_output=True, text=True)
    return res.stdout.strip() if res.returncode == 0 else "unknown"


def outcome_label(run: Path, outcomes: dict) -> str:
    """The outcome as a reader knows it: the synthetic scenario (control) or the outcome name."""

    p = resolved_params(run / "params.yaml") if (run / "params.yaml").is_file() else {}
    name = (p.get("outcome") or {}).get("name", "synthetic")
    scenario = outcomes.get("synthetic_scenario")
    if name != "synthetic" or scenario is None:
        return f"`{name}`"
    effects = ((p.get("outcome") or {}).get("synthetic") or {}).get("effects")
    kind = {"sequential": "positive control", "additive": "negative control"}.get(scenario,
                                                                                  scenario)
    return f"{kind} (`{scenario}`" + (f", effects {effects}" if effects else "") + ")"


def headline_row(run: Path, page_name: str) -> dict:
    """The page's headline for the README's table, read from the run: the sequence model is
    the one with the lowest validation loss (all share the survival loss on the same
    validation landmarks), never the highest test C."""
    import datetime as dt

    from ehrseq.evaluate.report import sequence_models

    m = json.loads((run / "metrics/evaluate.json").read_text())
    o = json.loads((run / "metrics/outcomes.json").read_text())
    seq = [a for a in sequence_models(m) if m.get(f"{a}.best_val_loss") is not None]
    best_seq = min(seq, key=lambda a: m[f"{a}.best_val_loss"]) if seq else None

    def c(name: str) -> dict | None:
        k = f"{name}.c_harrell"
        return None if k not in m else {"c": m[k], "lo": m[f"{k}_lo"], "hi": m[f"{k}_hi"]}

    row = {"kind": "benchmark", "page": page_name, "outcome": outcome_label(run, o),
           "patients": o["patients"], "test_patients": m["test.patients"],
           "test_landmarks": m["test.landmarks"], "test_events": m["test.events"],
           "oracle": c("oracle"), "best_count": {"model": m["best_count.model"],
                                                 **c("best_count")},
           "best_sequence": None, "commit": _git(run, "rev-parse", "--short", "HEAD"),
           "date": dt.datetime.fromtimestamp((run / "metrics/evaluate.json").stat().st_mtime,
                                             dt.timezone.utc).date().isoformat()}
    if best_seq is not None:
        k = f"delta.{best_seq}-best_count"
        row["best_sequence"] = {"model": best_seq, **c(best_seq),
                                "val_loss": m[f"{best_seq}.best_val_loss"],
                                "vs_best_count": m[f"{k}.delta"], "vs_lo": m[f"{k}.lo"],
                                "vs_hi": m[f"{k}.hi"]}
    return row


CURVE_HEADING = "## Label efficiency"


def curve_section(run: Path, out: Path) -> list[str]:
    """The evaluate report's label-efficiency section, its plots copied beside ``out``."""
    import shutil

    report = run / "plots/evaluate/report.md"
    text = report.read_text() if report.is_file() else ""
    if CURVE_HEADING not in text:
        return []
    section = text[text.index(CURVE_HEADING):]
    for png in ("learning_curve.png", "learning_curve_cost.png"):
        src = run / "plots/evaluate" / png
        if src.is_file():
            dst = out.with_name(f"{out.stem}-{png}")
            shutil.copyfile(src, dst)
            section = section.replace(f"({png})", f"({dst.name})")
    lc = json.loads((run / "metrics/learning_curve.json").read_text())
    body = section.split("\n", 1)[1] if "\n" in section else ""
    return ["", "## Label efficiency and cost (issue 13): paired ΔC per labelled training "
            "patients", body.rstrip(), "", f"Every labelled training patient: n = "
            f"{lc.get('curve.n_all')} (the main run above)."]


def mechanisms_section(run: Path, m: dict, o: dict) -> list[str]:
    """Scenario ``sequential`` (the positive control): the oracle with one planted mechanism
    left out, and with it alone, each against the best count model (paired, the report's
    resamples): how much of the headroom each mechanism holds, so a reader can tell what a
    model that reads every mechanism but one could reach. The true log-hazard is rebuilt from
    ``features.parquet`` exactly as the outcomes stage built it (each feature standardised over
    the landmarks, times its beta); a run whose rebuild does not match gets no section."""
    import numpy as np
    import pandas as pd
    import yaml

    from ehrseq.evaluate import survival
    from ehrseq.evaluate.scoring import Outcomes
    from ehrseq.outcomes.synthetic import SEQUENTIAL_EFFECTS
    from ehrseq.repro import round_decimals, standardise, weighted_sum

    out_dir = run / "data/processed/outcomes"
    if (o.get("synthetic_scenario") != "sequential" or "headroom" not in m
            or not (out_dir / "features.parquet").is_file()):
        return []
    table = pd.read_parquet(out_dir / "outcomes.parquet")
    feats = pd.read_parquet(out_dir / "features.parquet")
    names = [e.name for e in SEQUENTIAL_EFFECTS]
    beta = np.array([float(o.get(f"effect_{n}_beta", 0.0)) for n in names])
    Z = np.stack([standardise(feats[n].to_numpy(float)) for n in names], axis=1)
    truth = table["true_risk"].to_numpy(float)
    if not np.allclose(round_decimals(o["synthetic_signal"] * standardise(weighted_sum(Z, beta))),
                       truth, atol=1e-6):
        return []
    test = (table["split"] == "test").to_numpy()
    oc = Outcomes.load(out_dir)
    report = (yaml.safe_load((run / "params.yaml").read_text()) or {}).get("report") or {}
    boot, seed = int(report.get("bootstrap", 200)), int(report.get("seed", 0))
    best = m["best_count.model"]
    path = run / "data/predictions/baselines" / f"{best}.npz"   # the baselines stage's
    with np.load(path) as z:
        best_risk = survival.risk_score(z["surv"][oc.align(path, z)], z["times"],
                                        m["test.risk_horizon"])
    args = (oc.duration, oc.event)
    head = m["headroom"]

    def row(label: str, risk: np.ndarray, share: bool = True) -> str:
        c = survival.harrell_c_interval(*args, risk, boot, seed, oc.groups)
        d = survival.paired_c_difference(*args, risk, best_risk, boot, seed, oc.groups)
        part = f"{d['delta'] / head:.0%}" if share else ""
        return (f"| {label} | {c['c_harrell']:.3f} [{c['c_harrell_lo']:.3f}, "
                f"{c['c_harrell_hi']:.3f}] | {d['delta']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] "
                f"| {part} |")

    lines = ["", "## Where the headroom lies: the oracle without each planted mechanism", "",
             f"The true log-hazard is the sum of the planted mechanisms (each standardised, times "
             f"its beta). Each row rebuilds it on the test landmarks with one mechanism left out "
             f"(what a model that read every other mechanism perfectly could reach) or with it "
             f"alone, scored as the oracle (Harrell's C, {boot} patient-level resamples, seed "
             f"{seed}) and paired against {best}, the best count model; the last column is that "
             f"difference as a share of the headroom ({head:+.3f}): about the most a model that "
             f"misses that mechanism can close.", "",
             "| risk | C [95% CI] | − best count [paired 95% CI] | share of the headroom |",
             "|---|---|---|---|", row("every mechanism (the oracle)", truth[test])]
    for j, n in enumerate(names):
        if beta[j] == 0:
            continue
        rest = np.delete(np.arange(len(names)), j)
        lines.append(row(f"every mechanism but `{n}`",
                         weighted_sum(Z[test][:, rest], beta[rest])))
    for j, n in enumerate(names):
        if beta[j] != 0:
            lines.append(row(f"`{n}` alone", Z[test, j] * beta[j], share=False))
    return lines


def page(run: Path, title: str, command: str, note: str = "", out: Path | None = None) -> str:
    m = json.loads((run / "metrics/evaluate.json").read_text())
    o = json.loads((run / "metrics/outcomes.json").read_text())
    scenario = o.get("synthetic_scenario")
    best = m.get("best_count.model")
    lines = [f"# {title}", "", "Generated by `python docs/tools/benchmark_page.py` from the run's "
             "outputs; every number is read from them.", "", f"How it was run: {command}", "",
             f"Cohort: {o['patients']} patients, {o['eligible_patients']} with a landmark, "
             f"{o['eligible']} landmarks ({o['landmarks_per_patient']:.2f} per patient); "
             f"horizons {o['horizons']} days"
             + (" (fitted: quartiles of the training event times)" if o.get("horizons_fitted")
                else "") + ". "
             f"Test split: **{m['test.patients']} patients, {m['test.landmarks']} landmarks, "
             f"{m['test.events']} events**; intervals resample test patients "
             f"({m.get('cox.n_boot', 'n/a')} resamples).", ""]
    if "oracle.c_harrell" in m:
        lines.append(f"Oracle (the true log-hazard): C = {_ci(m, 'oracle.c_harrell')}. "
                     f"Best count model, chosen on validation: **{best}**. Headroom (oracle − "
                     f"best count, paired): **{m['headroom']:+.3f} [{m['headroom_lo']:+.3f}, "
                     f"{m['headroom_hi']:+.3f}]**.")
    else:
        lines.append(f"Best count model, chosen on validation: **{best}** (a real outcome: "
                     "no oracle).")
    lines += ["", "| model | C (Harrell) [95% CI] | − best count [paired 95% CI] | − oracle "
              "[paired 95% CI] | train s |", "|---|---|---|---|---|"]
    for a in sorted(models(m), key=lambda a: -m[f"{a}.c_harrell"]):
        secs = m.get(f"{a}.tune.wall_time_s") or m.get(f"{a}.train_seconds")
        name = f"**{a}** (best count)" if a == best else a
        lines.append(f"| {name} | {_ci(m, a + '.c_harrell')} | {_delta(m, a, 'best_count')} | "
                     f"{_delta(m, a, 'oracle')} | "
                     f"{'' if secs is None else f'{secs:,.1f}'} |")
    lines += ["", "## Expectations (issue 12), checked on these numbers", "",
              *expectations(m, scenario)]
    lines += mechanisms_section(run, m, o)
    if out is not None:
        lines += curve_section(run, out)
    if note:
        lines += ["", "## Reading", "", note]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--title", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    a.out.write_text(page(a.run, a.title, a.command, a.note, a.out))
    side = a.out.with_suffix(".json")
    side.write_text(json.dumps(headline_row(a.run, a.out.name), indent=2, sort_keys=True) + "\n")
    print(a.out, side)


if __name__ == "__main__":
    main()
