"""The benchmark table: every model's test metrics with intervals, read from metrics/*.json.

``python -m ehrseq.evaluate.report table`` prints the table of the current workspace.
``python -m ehrseq.evaluate.report sweep --outcomes synthetic mortality --sizes small medium
--set data.patients=1000 --out docs/results.md`` runs one ``dvc exp run`` per combination (the
run-cache skips every stage whose inputs did not change, e.g. the baselines across sizes) and
writes a Markdown report with the machine, the command and the date. Nothing in it is typed in.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

COLUMNS = ("outcome", "model", "size", "C (Harrell) [95% CI]", "C (Antolini)", "C (Uno)",
           "IBS", "AUC@365d", "params", "trained params", "checkpoint MB", "train s",
           "test n (events)")


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _ci(m: dict, key: str) -> str:
    v = m.get(key)
    if v is None:
        return "n/a"
    lo, hi = m.get(f"{key}_lo"), m.get(f"{key}_hi")
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else f"{v:.3f}"


def _num(v, fmt="{:.3f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def model_metric_files(metrics_dir: str | Path = "metrics") -> list[Path]:
    """The stage metrics files that hold scored models (not the report's own)."""
    return [p for p in sorted(Path(metrics_dir).rglob("*.json")) if p.name != "evaluate.json"]


def collect(files, params: dict | None = None) -> list[dict]:
    """One row per model (and the oracle) from the stage metrics files of one run.

    Every key ``<model>.c_harrell`` is a model scored by the evaluation
    module; its other ``<model>.*`` keys fill the row. Nothing is listed by hand, so a new model
    stage appears in the table by writing its metrics the same way.
    """
    params = params or {}
    outcome = params.get("outcome", {}).get("name", "?")
    size = params.get("model", {}).get("size", "?")
    rows = []
    for path in files:
        m = _read(Path(path))
        for name in sorted(k[: -len(".c_harrell")] for k in m if k.endswith(".c_harrell")):
            g = {k[len(name) + 1:]: v for k, v in m.items() if k.startswith(f"{name}.")}
            if name == "oracle":
                rows.insert(0, {"outcome": outcome, "model": "oracle (true risk)", "size": "",
                                "C (Harrell) [95% CI]": _ci(g, "c_harrell"),
                                "_c": g["c_harrell"], "_lo": g.get("c_harrell_lo"),
                                "_hi": g.get("c_harrell_hi")})
                continue
            neural = "n_params" in g
            rows.append({
                "outcome": outcome, "model": name, "size": size if neural else "",
                "C (Harrell) [95% CI]": _ci(g, "c_harrell"),
                "C (Antolini)": _ci(g, "c_antolini"), "C (Uno)": _ci(g, "c_uno"),
                "IBS": _ci(g, "ibs"), "AUC@365d": _ci(g, "auc_365"),
                "params": _num(g.get("n_params"), "{:,}"),
                "trained params": _num(g.get("n_params_trainable", g.get("n_params")), "{:,}"),
                "checkpoint MB": _num(None if g.get("checkpoint_bytes") is None
                                      else g["checkpoint_bytes"] / 1e6, "{:.2f}"),
                "train s": _num(g.get("train_seconds"), "{:.1f}"),
                "test n (events)": f"{g.get('n')} ({g.get('n_events')})",
                "_c": g["c_harrell"], "_lo": g.get("c_harrell_lo"), "_hi": g.get("c_harrell_hi"),
                "_params": g.get("n_params"), "_seconds": g.get("train_seconds"),
                "_gpu_usd": g.get("gpu_cost_usd"),
            })
    return rows


ORACLE_NOTE = (
    "The oracle is the true log-hazard of the synthetic outcome: the ceiling in expectation. On "
    "a finite test split a model can score above it by chance; the paired interval of "
    "model - oracle then still contains 0.")


def window_note(history: dict, outcomes_metrics: dict) -> str:
    """The input window every model read (``outcome.history``), as the report states it."""
    mv, mt = history.get("max_visits"), history.get("max_tokens")
    med = outcomes_metrics.get("input_visits_median")
    cut = outcomes_metrics.get("history_truncated")
    return (f"Every model read the same history: at each landmark, the most recent whole visits "
            f"up to it, at most {mv} visits and {mt} tokens (`outcome.history`)"
            + (f"; median {med:g} visits, window shorter than the full history for "
               f"{100 * cut:.0f}% of landmarks" if med is not None and cut is not None else "")
            + ". Every input was known at the landmark (`audit_*` in metrics/outcomes.json).")


COMPARISONS = (  # (question, model a, model b): Harrell's C of a minus b on the same patients
    ("pre-training helps BEHRT (full - scratch)", "behrt_full", "behrt_scratch"),
    ("pre-trained features alone (probe - scratch)", "behrt_probe", "behrt_scratch"),
    ("LoRA instead of full fine-tuning (lora - full)", "behrt_lora", "behrt_full"),
    ("Med2Vec + head against the LSTM (med2vec - lstm)", "med2vec", "lstm"),
    ("BEHRT against the LSTM (behrt_full - lstm)", "behrt_full", "lstm"),
    ("LSTM against Cox (lstm - cox)", "lstm", "cox"),
    ("BEHRT against Cox (behrt_full - cox)", "behrt_full", "cox"),
    ("Med2Vec + head against Cox (med2vec - cox)", "med2vec", "cox"),
)


def paired_comparisons(prediction_files, outcomes_dir: str | Path, horizons, n_boot: int,
                       seed: int) -> list[dict]:
    """The :data:`COMPARISONS` whose two models have test predictions (``<model>.npz`` with
    ``index``, ``times``, ``surv``): difference in Harrell's C with a paired bootstrap interval
    (:func:`ehrseq.evaluate.survival.paired_c_difference`), risk ``1 - S(h*)`` at the same h*
    as every model's own score."""
    import numpy as np
    import pandas as pd

    from .survival import paired_c_difference, reference_horizon, risk_score

    table = pd.read_parquet(Path(outcomes_dir) / "outcomes.parquet")
    test, train = table[table["split"] == "test"], table[table["split"] == "train"]
    d, e = test["duration"].to_numpy(float), test["event"].to_numpy(int)
    h = reference_horizon(d, e, train["duration"].to_numpy(float),
                          train["event"].to_numpy(int), horizons)
    risk = {}
    for f in map(Path, prediction_files):
        with np.load(f, allow_pickle=False) as z:
            pos = pd.Index(z["index"]).get_indexer(test["index"].to_numpy())
            if (pos < 0).any():
                raise ValueError(f"{f}: predictions miss {int((pos < 0).sum())} test patients "
                                 "of outcomes.parquet; re-run the stage that wrote it")
            risk[f.stem] = risk_score(z["surv"][pos], z["times"], h)
    rows = []
    for question, a, b in COMPARISONS:
        if a in risk and b in risk:
            r = paired_c_difference(d, e, risk[a], risk[b], n_boot, seed)
            rows.append({"question": question, "a": a, "b": b, **r})
    truth = test["true_risk"].to_numpy(float) if "true_risk" in test else np.full(len(d), np.nan)
    if np.isfinite(truth).all():   # synthetic outcome: every model against the true risk
        for a in sorted(risk):
            r = paired_c_difference(d, e, risk[a], truth, n_boot, seed)
            rows.append({"question": f"{a} against the oracle ({a} - oracle)", "a": a,
                         "b": "oracle", **r})
    return rows


def comparisons_markdown(rows: list[dict]) -> str:
    lines = ["| question | ΔC (Harrell) [95% paired CI] | resamples where a is not better |",
             "|---|---|---|"]
    for r in rows:
        verdict = "" if not (r["lo"] > 0 or r["hi"] < 0) else (
            " **a better**" if r["lo"] > 0 else " **b better**")
        lines.append(f"| {r['question']} | {r['delta']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]"
                     f"{verdict} | {r['p_not_better']:.2f} |")
    return "\n".join(lines) + "\n"


def to_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, Python {platform.python_version()}, " \
           f"torch {torch.__version__}"


def _params() -> dict:
    import yaml

    return yaml.safe_load(Path("params.yaml").read_text())


def sweep(outcomes, sizes, overrides, out: Path) -> None:
    rows, cohort = [], {}
    t_start = dt.datetime.now(dt.timezone.utc)
    for outcome in outcomes:
        for size in sizes:
            sets = [*overrides, f"outcome.name={outcome}", f"model.size={size}"]
            cmd = ["dvc", "exp", "run", *[a for s in sets for a in ("-S", s)]]
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
            new = collect(model_metric_files(), _params())
            rows += [r for r in new if r["size"] or size == sizes[0]]
            cohort = _read(Path("metrics/sequences.json"))
    text = [
        f"# Survival benchmark: {cohort.get('patients')} patients",
        "",
        f"Generated by `python -m ehrseq.evaluate.report {' '.join(sys.argv[1:])}` on "
        f"{t_start:%Y-%m-%d} ({machine()}). Test split only; 95% bootstrap intervals "
        "(`evaluate.bootstrap` resamples). The risk score of every model is 1 - S(h*|x) "
        "(src/ehrseq/evaluate/survival.py). " + ORACLE_NOTE,
        "",
        f"Cohort: {cohort.get('patients')} patients (train {cohort.get('patients_train')}, "
        f"val {cohort.get('patients_val')}, test {cohort.get('patients_test')}), "
        f"{cohort.get('visits')} visits, {cohort.get('tokens')} tokens, vocabulary "
        f"{cohort.get('vocab_size')}.",
        "",
        to_markdown(rows),
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(text))
    print(out.read_text())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m ehrseq.evaluate.report")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("table", help="print the table of the current workspace")
    sw = sub.add_parser("sweep", help="run experiments and write a Markdown report")
    sw.add_argument("--outcomes", nargs="+", default=["synthetic", "mortality"])
    sw.add_argument("--sizes", nargs="+", default=["small", "medium"])
    sw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra params for every run (e.g. data.patients=1000)")
    sw.add_argument("--out", type=Path, default=Path("docs/results.md"))
    a = ap.parse_args(argv)
    if a.cmd == "table":
        print(to_markdown(collect(model_metric_files(), _params())))
    else:
        sweep(a.outcomes, a.sizes, a.set, a.out)


if __name__ == "__main__":
    main()
