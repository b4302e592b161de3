"""How far below the oracle can a model of the right form get, on this cohort? (issue 12)

The negative control (``outcome.synthetic.scenario: additive``) expects the best count model
within 0.01 of the oracle. The oracle scores the *true* log-hazard; every model must estimate
it from the training split. This script fits penalised Cox models on the hazard's **own**
features (docs/outcomes.md, Named effects; recomputed from the sequences exactly as the
outcomes stage does), on the training landmarks, and scores them on the test landmarks against
the oracle with the patient bootstrap of the benchmark:

- ``true_form``: every named effect plus the planted subtype (one-hot): the correctly
  specified model, so its gap to the oracle is estimation noise alone at this cohort size;
- ``no_order``: without the order effect (``anemia_before_prediabetes``), which no count
  feature encodes;
- ``presence``: the presence effects and age only (what code counts reach directly).

With ``--prediction`` (a model's ``.npz`` from ``data/predictions``), that model is compared
with ``true_form`` too (same test landmarks, same resamples).

    python docs/tools/negative_control.py --run /path/to/repo [--prediction .../rsf.npz] [--out X.md]

``--run``: a repository where the sequences and an additive synthetic ``outcomes`` stage ran
(``data/processed/{sequences,outcomes}``, ``params.yaml``). Prints a Markdown table (and
writes it, with the machine and the command, to ``--out``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from ehrseq.data.tensors import Sequences  # noqa: E402
from ehrseq.evaluate.scoring import Outcomes  # noqa: E402
from ehrseq.evaluate.survival import harrell_c_interval, paired_c_difference  # noqa: E402
from ehrseq.outcomes.landmarks import choose_landmarks, input_window  # noqa: E402
from ehrseq.outcomes.synthetic import EFFECTS, named_effects  # noqa: E402
from ehrseq.params import load_params  # noqa: E402
from ehrseq.survival.bins import read_bins  # noqa: E402
from ehrseq.survival.curves import risk_score  # noqa: E402

SETS = {
    "true_form": lambda name: True,
    "no_order": lambda name: name != "anemia_before_prediabetes",
    "presence": lambda name: name in {e.name for e in EFFECTS if e.kind in ("presence", "age")},
}


def effect_table(run: Path) -> pd.DataFrame:
    """outcomes.parquet with the named-effect features of every landmark beside it."""
    p = load_params(run / "params.yaml").outcome
    if p.name != "synthetic" or p.synthetic.scenario != "additive":
        raise SystemExit(f"{run}: outcome {p.name} / {p.synthetic.scenario}; this diagnosis "
                         "needs the additive synthetic outcome (the negative control)")
    seqs = Sequences.load(run / "data/processed/sequences")
    lm = choose_landmarks(seqs.visit_time, seqs.patient_offsets, seqs.patients, p.landmark)
    lm.input_visits = input_window(seqs.visit_offsets, seqs.patient_offsets, lm.index,
                                   lm.landmark_visits, p.history.max_visits,
                                   p.history.max_tokens)
    X, _ = named_effects(seqs, lm)
    t = pd.read_parquet(run / "data/processed/outcomes/outcomes.parquet")
    keys = pd.DataFrame({"index": lm.index, "landmark_visits": lm.landmark_visits})
    feats = pd.concat([keys, pd.DataFrame(X, columns=[e.name for e in EFFECTS])], axis=1)
    out = t.merge(feats, on=["index", "landmark_visits"], how="left", validate="one_to_one")
    if out[EFFECTS[0].name].isna().any():
        raise SystemExit(f"{run}: outcomes.parquet has landmarks that the sequences do not "
                         "give; re-run the outcomes stage")
    return out


def fit_cox(table: pd.DataFrame, cols: list[str], penalizer: float) -> np.ndarray:
    """Test log-hazard of a penalised Cox on ``cols`` (+ subtype one-hot), fit on train."""
    from lifelines import CoxPHFitter

    sub = pd.get_dummies(table["subtype"], prefix="subtype", drop_first=True, dtype=float)
    X = pd.concat([table[cols].astype(float), sub], axis=1)
    X = X.loc[:, X[table["split"] == "train"].std() > 0]
    tr = table["split"] == "train"
    df = X[tr].assign(duration=table.loc[tr, "duration"], event=table.loc[tr, "event"])
    cph = CoxPHFitter(penalizer=penalizer).fit(df, "duration", "event")
    te = table["split"] == "test"
    return cph.predict_log_partial_hazard(X[te]).to_numpy(float)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--prediction", type=Path, action="append", default=[])
    ap.add_argument("--penalizer", type=float, default=0.01)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--out", type=Path, help="also write the table here, with a header")
    a = ap.parse_args(argv)

    table = effect_table(a.run)
    o = Outcomes.load(a.run / "data/processed/outcomes")
    test = table[table["split"] == "test"]
    assert (test["index"].to_numpy() == o.index).all()
    risks = {"oracle": o.true_risk}
    for name, keep in SETS.items():
        cols = [e.name for e in EFFECTS if keep(e.name)]
        risks[name] = fit_cox(table, cols, a.penalizer)
    horizons = read_bins(a.run / "data/processed/outcomes")[1]
    for f in a.prediction:
        with np.load(f, allow_pickle=False) as z:
            pos = o.align(f, z)
            risks[f.stem] = risk_score(z["surv"][pos].astype(float), z["times"].astype(float),
                                       o.reference_horizon(horizons))
    n_tr = table.loc[table["split"] == "train", "patient"].nunique()
    lines = [f"test: {o.groups.size} landmarks of {len(np.unique(o.groups))} patients, "
             f"{int(o.event.sum())} events; train: {n_tr} patients; Cox penalizer "
             f"{a.penalizer}", "",
             "| model | test C [95% CI] | C − oracle [95% CI] | C − true_form [95% CI] |",
             "|---|---|---|---|"]
    for name, r in risks.items():
        c = harrell_c_interval(o.duration, o.event, r, a.bootstrap, 0, o.groups)
        cells = []
        for ref in ("oracle", "true_form"):
            if name == ref:
                cells.append("—")
                continue
            d = paired_c_difference(o.duration, o.event, r, risks[ref], a.bootstrap, 0,
                                    o.groups)
            cells.append(f"{d['delta']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]")
        lines.append(f"| {name} | {c['c_harrell']:.3f} [{c['c_harrell_lo']:.3f}, "
                     f"{c['c_harrell_hi']:.3f}] | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        import platform

        cmd = "python docs/tools/negative_control.py " + " ".join(
            str(x) for x in (argv if argv is not None else sys.argv[1:]))
        a.out.write_text(f"Generated by `{cmd}` on {platform.machine()} "
                         f"({os.cpu_count()} CPUs).\n\n" + text)


if __name__ == "__main__":
    main()
