"""What the fine-tuned survival models' heads read: the representation probes of
src/ehrseq/evaluate/probes.py applied to the vector each fine-tuned model's hazard head reads,
not only to the pre-trained encoder the embed stage reads.

For every run folder of the ``sequential`` scenario given (a finished ``dvc repro``): BEHRT
fine-tuned in each mode found under ``models/finetune_behrt/`` (its :func:`readout`: ``[CLS]``,
or ``[CLS]`` beside the landmark visit's mean state, as its config.json says), the survival
LSTM's state (the embed stage's ``lstm.npz``) and the embed stage's count representations;
each planted feature of ``outcomes/features.parquet`` is fitted on the validation landmarks and
scored on the test landmarks (R², AUROC for a 0/1 feature). The models were fitted on the
training split, so a score is what the head's input carries, not what a probe memorised.

    python docs/tools/finetuned_probes.py --run RUN_DIR --label NAME [--run ... --label ...] \
        --title TITLE --note NOTE --out docs/X.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ehrseq.data.task import SurvivalTask
from ehrseq.data.tensors import make_loader, set_value_codes
from ehrseq.evaluate.embed import _landmark_dataset
from ehrseq.evaluate.probes import load_representations, probe_scores, probes_markdown
from ehrseq.models.behrt import BEHRTDataset, readout
from ehrseq.models.inference import predict
from ehrseq.models.store import load_model

SKIP = ("behrt_cls", "behrt_mean", "med2vec")   # the embed stage's pre-trained representations


def finetuned_behrt(run: Path, mode: str, task: SurvivalTask) -> tuple[np.ndarray, str]:
    """``[n, width]``: what BEHRT fine-tuned in ``mode`` feeds its hazard head, per row, and
    that readout's name (``cls``, ``cls_landmark``)."""
    model, _, _ = load_model(run / "models/finetune_behrt" / mode)
    c = model.config          # an old config.json without a key reads its default
    if c.value_deltas:
        set_value_codes(model, task.seqs)
    ds = BEHRTDataset(_landmark_dataset(task), c.max_len)
    return predict(model.encoder, make_loader(ds, 256, pin_memory=False),
                   lambda m, b: readout(m(b), b, c.readout), len(ds)), c.readout


def run_rows(run: Path, label: str, seen: set[bytes]) -> list[dict]:
    """The probe rows of one run; a representation identical to one of an earlier run (its
    digest in ``seen``: the same embed output checked out in two runs) is left out."""
    out = run / "data/processed/outcomes"
    if not (out / "features.parquet").is_file():
        raise SystemExit(f"{out}/features.parquet: missing; the probes need a run whose outcome "
                         "plants named features (outcome.synthetic, or a custom function's)")
    task = SurvivalTask.load(run / "data/processed/sequences", out)
    features = pd.read_parquet(out / "features.parquet")
    reps = {k: v for k, v in load_representations(run / "data/processed/embeddings").items()
            if k not in SKIP}
    for d in sorted((run / "models/finetune_behrt").glob("*/config.json")):
        if not (d.parent / "model.safetensors").is_file():   # lora: adapters only
            continue
        x, how = finetuned_behrt(run, d.parent.name, task)
        reps[f"behrt_{d.parent.name} ({how})"] = x
    for name, x in list(reps.items()):
        digest = hashlib.sha1(x.tobytes()).digest()
        if digest in seen:
            del reps[name]
        seen.add(digest)
    rows = probe_scores(features, task.table["split"], reps)
    rows += risk_rows(task.table, reps)
    for r in rows:
        r["representation"] = f"{label}: {r['representation']}"
    return rows


def risk_rows(table: pd.DataFrame, reps: dict[str, np.ndarray]) -> list[dict]:
    """Per representation: the true log-hazard (every planted mechanism at once) probed the same
    way (ridge fitted on the validation landmarks), as the test split's Harrell's C of that
    probe: how much of the oracle's ranking the vector carries linearly, beside which a model's
    own C says whether its (linear) head uses it; and by gradient-boosted trees fitted the same
    way (``nonlinear``): whether a head that is not linear could find more."""
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler

    from ehrseq.evaluate.probes import ALPHAS
    from ehrseq.evaluate.survival import harrell_c_interval

    split = table["split"].to_numpy()
    val, test = split == "val", split == "test"
    y = table["true_risk"].to_numpy(np.float64)
    dur, ev = table["duration"].to_numpy(float)[test], table["event"].to_numpy(int)[test]
    groups = table["index"].to_numpy()[test]
    rows = []
    for rep, X in reps.items():
        scaler = StandardScaler().fit(X[val])
        xv, xt = scaler.transform(X[val]), scaler.transform(X[test])
        row = {"representation": rep, "feature": "true log-hazard (test C of the probe)",
               "kind": "c", "n_val": int(val.sum()), "n_test": int(test.sum())}
        for key, fit in (("", RidgeCV(alphas=ALPHAS)),
                         ("nonlinear_", HistGradientBoostingRegressor(random_state=0))):
            c = harrell_c_interval(dur, ev, fit.fit(xv, y[val]).predict(xt), 200, 0, groups)
            row.update({f"{key}score": c["c_harrell"], f"{key}lo": c["c_harrell_lo"],
                        f"{key}hi": c["c_harrell_hi"]})
        rows.append(row)
    return rows


def risk_markdown(rows: list[dict], runs: list[Path], labels: list[str]) -> str:
    """The true log-hazard probes beside each model's own test C (metrics/evaluate.json)."""
    if not rows:
        return ""
    ev = {lab: json.loads((run / "metrics/evaluate.json").read_text())
          for run, lab in zip(runs, labels, strict=True)}
    lines = ["", "What the vector carries of the true log-hazard, every planted mechanism at once: "
             "a ridge fitted on the validation landmarks' oracle risk, its test Harrell's C "
             "(200 patient-level resamples, seed 0), and the same with gradient-boosted trees "
             "(scikit-learn's HistGradientBoostingRegressor, its defaults) for what a head that "
             "is not linear could find, beside the model's own test C (what its linear head "
             "made of it) and the run's oracle and best count model.", "",
             "| representation | C of the linear probe [95% CI] | C of the trees [95% CI] | "
             "the model's own C |", "|---|---|---|---|"]
    for r in rows:
        label, rep = r["representation"].split(": ", 1)
        m = ev[label]
        own = f"{rep.split(' ')[0]}.c_harrell"   # behrt_full (cls) -> behrt_full; lstm
        own_c = f"{m[own]:.3f}" if own in m else ""
        lines.append(f"| {r['representation']} | {r['score']:.3f} [{r['lo']:.3f}, "
                     f"{r['hi']:.3f}] | {r['nonlinear_score']:.3f} [{r['nonlinear_lo']:.3f}, "
                     f"{r['nonlinear_hi']:.3f}] | {own_c} |")
    for lab, m in ev.items():
        lines.append(f"| {lab}: oracle / best count ({m['best_count.model']}) | "
                     f"{m['oracle.c_harrell']:.3f} | | {m['best_count.c_harrell']:.3f} |")
    return "\n".join(lines) + "\n"


def parse_runs(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``ap`` (a tool's own options added) with ``--run DIR --label NAME`` pairs, ``--title``,
    ``--note`` and ``--out``, parsed; a label missing for a run is a usage error."""
    ap.add_argument("--run", action="append", type=Path, required=True, dest="runs")
    ap.add_argument("--label", action="append", required=True, help="one per --run")
    ap.add_argument("--title", required=True)
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if len(a.label) != len(a.runs):
        ap.error(f"{len(a.runs)} runs but {len(a.label)} --label; give one per run")
    return a


def command(tool: str, argv: list[str] | None) -> str:
    """The command line that made a page, for its header."""
    return f"python docs/tools/{tool} " + " ".join(
        shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a = parse_runs(ap, argv)
    seen: set[bytes] = set()
    rows = [r for run, label in zip(a.runs, a.label, strict=True)
            for r in run_rows(run, label, seen)]
    cmd = command("finetuned_probes.py", argv)
    groups = {}   # one table per set of landmarks (runs with another landmark count)
    for r in rows:
        groups.setdefault((r["n_val"], r["n_test"]), []).append(r)
    risk = [r for r in rows if r["kind"] == "c"]
    text = (f"# {a.title}\n\nGenerated by `{cmd}`.\n\n{a.note}\n\n"
            + "\n".join(probes_markdown([r for r in g if r["kind"] != "c"])
                         for g in groups.values())
            + risk_markdown(risk, a.runs, a.label)
            + "\nRepresentations: `behrt_<mode> (<readout>)` the vector fine-tuned BEHRT's "
            "hazard head reads (docs/tools/finetuned_probes.py); `lstm` the survival LSTM's "
            "state at the landmark visit; `tfidf_svd`, `random_proj` code counts (the embed "
            "stage).\n")
    a.out.write_text(text)
    a.out.with_suffix(".json").write_text(pd.DataFrame(rows).to_json(orient="records", indent=1))
    print(text)


if __name__ == "__main__":
    main()
