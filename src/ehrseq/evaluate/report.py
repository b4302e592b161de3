"""The benchmark table: every model's test metrics with intervals, from metrics/evaluate.json.

The command line (``table``, ``sweep``) is :mod:`ehrseq.ops.sweep`. Nothing in the table is
typed in.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

COLUMNS = ("outcome", "model", "size", "C (Harrell) [95% CI]", "C (Antolini)", "C (Uno)",
           "IBS", "AUC", "params", "trained params", "checkpoint MB", "train s",
           "test n (events)")
"""The table's columns; ``AUC`` stands for one column per evaluation horizon (``AUC@<h>d``, the
horizons the outcome was fitted to, read from the metrics' ``auc_<h>`` keys)."""


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


def horizons_of(metrics: dict) -> list[int]:
    """The evaluation horizons (days) of the metrics: every ``<model>.auc_<h>``."""
    import re

    return sorted({int(m[1]) for k in metrics if (m := re.search(r"\.auc_(\d+)$", k))})


def collect(metrics: dict, params: dict | None = None) -> list[dict]:
    """One row per scored model (and the oracle) from the flat metrics of the ``evaluate``
    stage (metrics/evaluate.json): every key ``<model>.c_harrell`` is a model; its other
    ``<model>.*`` keys (scores and the run statistics written beside its predictions) fill the
    row. Nothing is listed by hand."""
    params = params or {}
    outcome = params.get("outcome", {}).get("name", "?")
    m = metrics
    rows = []
    names = sorted(k[: -len(".c_harrell")] for k in m if k.endswith(".c_harrell")
                   and not k.startswith(("best.", "best_count.", "delta.")))
    best_count = m.get("best_count.model")
    for name in names:
        g = {k[len(name) + 1:]: v for k, v in m.items() if k.startswith(f"{name}.")}
        if name == "oracle":
            rows.insert(0, {"outcome": outcome, "model": "oracle (true risk)", "size": "",
                            "C (Harrell) [95% CI]": _ci(g, "c_harrell"),
                            "_c": g["c_harrell"], "_lo": g.get("c_harrell_lo"),
                            "_hi": g.get("c_harrell_hi")})
            continue
        neural = "n_params" in g
        rows.append({
            "outcome": outcome,
            "model": (f"{name} (best count)" if name == best_count else name)
            + (" ⚠ collapsed" if g.get("collapsed") else ""),
            "size": g.get("size", "") if neural else "",
            "C (Harrell) [95% CI]": _ci(g, "c_harrell"),
            "C (Antolini)": _ci(g, "c_antolini"), "C (Uno)": _ci(g, "c_uno"),
            "IBS": _ci(g, "ibs"),
            **{f"AUC@{h}d": _ci(g, f"auc_{h}") for h in horizons_of(m)},
            **{f"_ece_{h}": _ci(g, f"ece_{h}") for h in horizons_of(m)},
            "params": _num(g.get("n_params"), "{:,}"),
            "trained params": _num(g.get("n_params_trainable", g.get("n_params")), "{:,}"),
            "checkpoint MB": _num(None if g.get("checkpoint_bytes") is None
                                  else g["checkpoint_bytes"] / 1e6, "{:.2f}"),
            "train s": _num(g.get("train_seconds"), "{:.1f}"),
            "test n (events)": f"{g.get('n')} ({g.get('n_events')})",
            "_c": g["c_harrell"], "_lo": g.get("c_harrell_lo"), "_hi": g.get("c_harrell_hi"),
            "_params": g.get("n_params"), "_seconds": g.get("train_seconds"),
            "_gpu_usd": g.get("gpu_cost_usd"), "_name": name,
            "_collapse": g.get("collapse_reason") if g.get("collapsed") else None,
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


def paired_comparisons(risks: dict, outcomes, n_boot: int, seed: int,
                       best_count: str | None = None, others: list[str] = ()) -> list[dict]:
    """The :data:`COMPARISONS` whose two models were scored, then every model against the
    oracle (synthetic outcomes): difference in Harrell's C with a paired bootstrap interval
    (:func:`ehrseq.evaluate.survival.paired_c_difference`, the same resampled test patients
    for both). ``risks``: each model's test risk ``1 - S(h*)`` in ``outcomes``' test order
    (:func:`ehrseq.evaluate.scoring.score_all`); ``outcomes``: its
    :class:`~ehrseq.evaluate.scoring.Outcomes`. With ``best_count`` (the count model chosen on
    validation), every model of ``others`` is also compared with it (``b`` = ``best_count``)."""
    import numpy as np

    from .survival import paired_c_difference

    d, e, truth, risk = outcomes.duration, outcomes.event, outcomes.true_risk, risks
    g = outcomes.groups   # resample patients, all of a patient's landmarks together
    rows = []
    for question, a, b in COMPARISONS:
        if a in risk and b in risk:
            r = paired_c_difference(d, e, risk[a], risk[b], n_boot, seed, g)
            rows.append({"question": question, "a": a, "b": b, **r})
    if best_count in risk:
        for a in sorted(m for m in others if m in risk):
            r = paired_c_difference(d, e, risk[a], risk[best_count], n_boot, seed, g)
            rows.append({"question": f"{a} against the best count model, {best_count} "
                                     f"({a} - best_count)", "a": a, "b": "best_count", **r})
    if np.isfinite(truth).all():   # synthetic outcome: every model against the true risk
        for a in sorted(risk):
            r = paired_c_difference(d, e, risk[a], truth, n_boot, seed, g)
            rows.append({"question": f"{a} against the oracle ({a} - oracle)", "a": a,
                         "b": "oracle", **r})
    return rows


def headroom(pairs: list[dict], best_count: str | None) -> dict:
    """``headroom``: the oracle's Harrell's C minus the best count model's, on the same test
    patients, with its paired interval (the negated ``best_count - oracle`` comparison): how
    much a synthetic outcome leaves for sequence models to win. Empty without an oracle."""
    for r in pairs:
        if r["a"] == best_count and r["b"] == "oracle":
            return {"headroom": -r["delta"], "headroom_lo": -r["hi"], "headroom_hi": -r["lo"]}
    return {}


def sequence_models(flat: dict) -> list[str]:
    """The scored models of ``flat`` that are not count models (their stage is not
    ``baselines``; the oracle and the best-count alias have no stage), sorted."""
    return sorted(k[:-len(".c_harrell")] for k in flat if k.endswith(".c_harrell")
                  and flat.get(f"{k[:-len('.c_harrell')]}.stage") not in (None, "baselines"))


HEADLINE_MODEL_KEYS = ("c", "c_lo", "c_hi", "vs_best_count", "vs_best_count_lo",
                       "vs_best_count_hi", "vs_oracle", "train_s", "cost_usd")
"""What metrics/summary.json holds per sequence model (see :func:`headline`)."""


def headline(flat: dict) -> dict:
    """The benchmark's headline, the only file declared as a DVC metric (what `dvc exp show`
    and `dvc metrics diff` print): the test split's size; the oracle's and the best count
    model's Harrell C with their intervals and the headroom between them; and per model that
    is not a count model (its stage is not ``baselines``): C [interval], the paired ΔC against
    the best count model [interval] and against the oracle, train seconds and GPU cost; with
    cross-fitting (``crossfit.folds``) also its cross-fitted C and ΔC [interval]. Every
    other number (each metric at each horizon, every bound, the curve, the probes) stays in
    metrics/evaluate.json, a stage output that is not a DVC metric."""
    out = {f"test.{k}": flat[f"test.{k}"] for k in ("patients", "landmarks", "events")}
    for name in ("oracle", "best_count"):
        if f"{name}.c_harrell" in flat:
            out.update({f"{name}.c{s}": flat[f"{name}.c_harrell{s}"] for s in ("", "_lo", "_hi")})
    if "best_count.model" in flat:
        out["best_count.model"] = flat["best_count.model"]
    if "headroom" in flat:
        out.update({k: flat[k] for k in ("headroom", "headroom_lo", "headroom_hi")})
    for m in sequence_models(flat):
        d, o = f"delta.{m}-best_count.", f"delta.{m}-oracle."
        row = {"c": flat[f"{m}.c_harrell"], "c_lo": flat.get(f"{m}.c_harrell_lo"),
               "c_hi": flat.get(f"{m}.c_harrell_hi"), "vs_best_count": flat.get(d + "delta"),
               "vs_best_count_lo": flat.get(d + "lo"), "vs_best_count_hi": flat.get(d + "hi"),
               "vs_oracle": flat.get(o + "delta"), "train_s": flat.get(f"{m}.train_seconds"),
               "cost_usd": flat.get(f"{m}.gpu_cost_usd")}
        out.update({f"{m}.{k}": row[k] for k in HEADLINE_MODEL_KEYS if row[k] is not None})
        cf = f"crossfit.delta.{m}-best_count."   # cross-fitted (crossfit.folds): every patient
        if f"crossfit.{m}.c_harrell" in flat:
            out.update({f"crossfit.{m}.c": flat[f"crossfit.{m}.c_harrell"],
                        **{f"crossfit.{m}.vs_best_count{s}": flat[cf + k] for s, k in
                           (("", "delta"), ("_lo", "lo"), ("_hi", "hi")) if cf + k in flat}})
    if "crossfit.folds" in flat:
        out["crossfit.folds"] = flat["crossfit.folds"]
        if "crossfit.best_count.c_harrell" in flat:
            out["crossfit.best_count.c"] = flat["crossfit.best_count.c_harrell"]
    return out


def comparisons_markdown(rows: list[dict]) -> str:
    """Three tables: every model against the best count model, against the oracle, and the
    named questions (:data:`COMPARISONS`); each sorted by ΔC, largest first."""
    groups = (("Against the best count model (chosen on validation)",
               [r for r in rows if r["b"] == "best_count"]),
              ("Against the oracle (the true risk)", [r for r in rows if r["b"] == "oracle"]),
              ("Named questions", [r for r in rows if r["b"] not in ("best_count", "oracle")]))
    out = []
    for title, group in groups:
        if not group:
            continue
        out += [f"### {title}", "",
                "| comparison | ΔC (Harrell) [95% paired CI] | resamples where a is not better |",
                "|---|---|---|"]
        for r in sorted(group, key=lambda r: -r["delta"]):
            verdict = "" if not (r["lo"] > 0 or r["hi"] < 0) else (
                " **a better**" if r["lo"] > 0 else " **b better**")
            out.append(f"| {r['question']} | {r['delta']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]"
                       f"{verdict} | {r['p_not_better']:.2f} |")
        out.append("")
    return "\n".join(out)


def calibration_markdown(rows: list[dict]) -> str:
    """Expected calibration error of every model at each evaluation horizon (``ece_<h>``)."""
    hs = sorted({int(k[len("_ece_"):]) for r in rows for k in r if k.startswith("_ece_")})
    scored = [r for r in rows if any(f"_ece_{h}" in r for h in hs)]
    if not hs or not scored:
        return ""
    lines = ["| model | " + " | ".join(f"ECE@{h}d" for h in hs) + " |",
             "|---|" + "---|" * len(hs)]
    lines += [f"| {r['model']} | " + " | ".join(r.get(f"_ece_{h}", "") for h in hs) + " |"
              for r in scored]
    return "\n".join(lines) + "\n"


def onset_markdown(flat: dict) -> str:
    """The trajectory models' AUROC per (horizon, target) beside the cell's test positives
    (``onset.test.pos_<h>.<target>`` of ``n_<h>...`` known), n/a with the reason where a cell
    has too few positives or negatives to rank models; empty without trajectory scores."""
    cells = sorted({k[len("onset.test.pos_"):] for k in flat if k.startswith("onset.test.pos_")},
                   key=lambda c: (int(c.split(".", 1)[0]), c))
    models = sorted({k.split(".")[1] for k in flat if k.startswith("onset.")
                     and k.split(".")[1] not in ("test", "skipped")})
    if not cells or not models:
        return ""
    lines = ["| horizon | target | test positives / known | "
             + " | ".join(f"{m} AUROC" for m in models) + " |",
             "|---|---|---|" + "---|" * len(models)]
    for cell in cells:
        h, target = cell.split(".", 1)
        why = flat.get(f"onset.skipped.{cell}")
        scores = [f"n/a ({why})" if why else _ci(flat, f"onset.{m}.auroc_{cell}")
                  for m in models]
        lines.append(f"| {int(h)}d | {target} | {flat[f'onset.test.pos_{cell}']} / "
                     f"{flat[f'onset.test.n_{cell}']} | " + " | ".join(scores) + " |")
    return "\n".join(lines) + "\n"


def collapse_markdown(rows: list[dict]) -> str:
    """A paragraph naming every model flagged collapsed (``<model>.collapsed`` in
    metrics/evaluate.json, :func:`ehrseq.evaluate.scoring.collapse`) and why; empty if none."""
    flagged = [r for r in rows if r.get("_collapse")]
    if not flagged:
        return ""
    return ("\n**Collapsed predictions** (the model gives nearly every test landmark the same "
            "curve; its C rests on tiny differences): "
            + "; ".join(f"`{r['_name']}`: {r['_collapse']}" for r in flagged) + ".\n")


def to_markdown(rows: list[dict]) -> str:
    aucs = sorted({k for r in rows for k in r if k.startswith("AUC@")},
                  key=lambda k: int(k[4:-1]))
    cols = [c for name in COLUMNS for c in (aucs if name == "AUC" else [name])]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
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
