"""Where a model change moved test C: Harrell's C before and after, per subgroup of test landmarks.

    python docs/tools/subgroup_c.py BEFORE_DIR AFTER_DIR --model finetune_behrt/full/behrt_full \
        [--model ...] [--reference baselines/coxnet] [--code LOINC/33914-3] [--scores RUN] \
        --title "..." [--note "..."] --out docs/X.md

BEFORE_DIR and AFTER_DIR ran the same cohort, outcome and splits (as ``before_after.py
--model-change``; refused otherwise) and differ in model code or parameters. Each ``--model``
is a prediction under ``data/predictions`` (without ``.npz``) present in both; ``--reference``
one read from the scoring run alone (AFTER_DIR, or ``--scores``; the best count model, say),
scored beside them. Every model is
scored as the evaluate stage scores it (risk ``1 - S(h*)`` at the run's ``risk_horizon``,
Harrell's C, patient-level paired bootstrap with the report's seed and resamples) within each
subgroup of the test landmarks:

- by landmark order within the patient: the first half of each patient's landmarks against the
  second (later landmarks have longer histories);
- by input window: windows that hold the patient's whole history before the landmark against
  windows cut by ``outcome.history`` (``input_visits < landmark_visits``: the oldest visits
  dropped to fit ``max_visits`` / ``max_tokens``);
- with ``--code CODE`` (a vocabulary code such as ``LOINC/33914-3``; its quantile-bin tokens
  count too): windows that hold at least one observation of it against windows that hold none.

A diagnosis, not a choice: nothing here selects a model (the test split is read only to say
where a change that was chosen on validation gained or lost).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from ehrseq.data.tensors import NUMERIC_BIN, Sequences  # noqa: E402
from ehrseq.evaluate import survival  # noqa: E402
from ehrseq.evaluate.scoring import Outcomes  # noqa: E402


def _test(run: Path) -> pd.DataFrame:
    t = pd.read_parquet(run / "data/processed/outcomes/outcomes.parquet")
    return t[t["split"] == "test"].reset_index(drop=True)


def _risk(run: Path, pred: str, o: Outcomes, horizon: float) -> np.ndarray:
    """Test risk ``1 - S(h*)`` of one prediction, in ``o``'s landmark order (as evaluate)."""
    path = run / "data/predictions" / f"{pred}.npz"
    if not path.is_file():
        sys.exit(f"{path}: missing; accepted: a prediction under data/predictions of both runs")
    with np.load(path) as z:
        return survival.risk_score(z["surv"][o.align(path, z)], z["times"], horizon)


def code_in_window(run: Path, test: pd.DataFrame, code: str) -> np.ndarray:
    """Per test landmark: how many observations of ``code`` (bare or binned) its window holds."""
    seqs = Sequences.load(run / "data/processed/sequences")
    ids = [i for i, t in enumerate(seqs.vocab["tokens"]) if NUMERIC_BIN.sub("", t) == code]
    if not ids:
        sys.exit(f"--code {code}: not in {run}/data/processed/sequences/vocab.json; accepted: "
                 "a code of the vocabulary, e.g. LOINC/33914-3")
    cum = np.concatenate([[0], np.cumsum(np.isin(seqs.codes, ids))])
    first = seqs.patient_offsets[test["index"].to_numpy()]
    end = first + test["landmark_visits"].to_numpy()
    start = end - test["input_visits"].to_numpy()
    return cum[seqs.visit_offsets[end]] - cum[seqs.visit_offsets[start]]


def subgroups(test: pd.DataFrame, held: np.ndarray | None = None,
              code: str = "") -> dict[str, np.ndarray]:
    """Masks over the test landmarks: every one, by landmark order, by input window, and by
    whether the window holds ``code`` (``held``: its count per landmark)."""
    order = test.groupby("index")["landmark_time"].rank(method="first").to_numpy()
    n = test.groupby("index")["landmark_time"].transform("size").to_numpy()
    cut = test["input_visits"].to_numpy() < test["landmark_visits"].to_numpy()
    out = {"every test landmark": np.ones(len(test), bool),
           "first half of each patient's landmarks": order <= np.ceil(n / 2),
           "second half (later landmarks)": order > np.ceil(n / 2),
           "window holds the whole history": ~cut,
           "window cut by outcome.history": cut}
    if held is not None:
        out[f"window holds {code}"] = held > 0
        out[f"window holds no {code}"] = held == 0
    return out


def _c(x: dict) -> str:
    return f"{x['c_harrell']:.3f} [{x['c_harrell_lo']:.3f}, {x['c_harrell_hi']:.3f}]"


def _d(x: dict) -> str:
    return f"{x['delta']:+.3f} [{x['lo']:+.3f}, {x['hi']:+.3f}]"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--reference", action="append", default=[])
    ap.add_argument("--code", default="", help="subgroups by whether the window holds it")
    ap.add_argument("--scores", type=Path, default=None,
                    help="the finished run whose h* (metrics/evaluate.json) and report params "
                         "score both (default AFTER): for ablation work folders, which hold "
                         "predictions but no evaluate stage")
    ap.add_argument("--title", required=True)
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)

    test = _test(a.after)
    same = ["index", "landmark_visits", "duration", "event", "input_visits"]
    scores = a.scores or a.after
    for run in {a.before, scores}:
        o = _test(run)
        if len(o) != len(test) or not o[same].equals(test[same]):
            sys.exit(f"{run} and {a.after}: their test landmarks or outcomes differ; accepted: "
                     "runs of the same cohort, outcome and splits")
    if not (scores / "metrics/evaluate.json").is_file():
        sys.exit(f"{scores}/metrics/evaluate.json: missing; accepted: a run whose evaluate stage "
                 "ran (--scores RUN for ablation work folders)")
    ev = json.loads((scores / "metrics/evaluate.json").read_text())
    report = (yaml.safe_load((scores / "params.yaml").read_text()) or {}).get("report") or {}
    boot, seed = int(report.get("bootstrap", 200)), int(report.get("seed", 0))
    horizon = float(ev["test.risk_horizon"])
    o = Outcomes.load(a.after / "data/processed/outcomes")   # the test rows of ``test``
    t, d, groups = o.duration, o.event, o.groups
    risks = {m: (_risk(a.before, m, o, horizon), _risk(a.after, m, o, horizon))
             for m in a.model}
    refs = {m: _risk(scores, m, o, horizon) for m in a.reference}

    head = ["subgroup", "landmarks", "events"]
    for m in a.model:
        name = Path(m).name
        head += [f"{name} before", f"{name} after", f"{name} after − before"]
    head += [f"{Path(m).name} ({'after' if a.scores is None else 'scoring'} run)"
             for m in a.reference]
    rows, data = [], []
    held = code_in_window(a.after, test, a.code) if a.code else None
    for label, mask in subgroups(test, held, a.code).items():
        args = (t[mask], d[mask])
        row = [label, str(int(mask.sum())), str(int(d[mask].sum()))]
        rec = {"subgroup": label, "landmarks": int(mask.sum()), "events": int(d[mask].sum())}
        for m, (rb, ra) in risks.items():
            cb = survival.harrell_c_interval(*args, rb[mask], boot, seed, groups[mask])
            ca = survival.harrell_c_interval(*args, ra[mask], boot, seed, groups[mask])
            diff = survival.paired_c_difference(*args, ra[mask], rb[mask], boot, seed,
                                                groups[mask])
            row += [_c(cb), _c(ca), _d(diff)]
            rec[m] = {"before": cb, "after": ca, "difference": diff}
        for m, r in refs.items():
            c = survival.harrell_c_interval(*args, r[mask], boot, seed, groups[mask])
            row.append(_c(c))
            rec[f"{m} (reference)"] = c
        rows.append(row)
        data.append(rec)

    cmd = shlex.join(["python", "docs/tools/subgroup_c.py", *(sys.argv[1:] if argv is None else argv)])
    lines = [f"# {a.title}", "",
             f"Generated {dt.date.today()} by `{cmd}`.", "",
             f"Test landmarks only; Harrell's C at h* = {horizon:g} days, 95% patient-level "
             f"bootstrap ({boot} resamples, seed {seed}); the difference is paired on the same "
             "landmarks. A diagnosis of where a change chosen on validation moved test C; "
             "nothing here chooses.", ""]
    if a.note:
        lines += [a.note, ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    a.out.write_text("\n".join(lines) + "\n")
    a.out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    print(a.out)


if __name__ == "__main__":
    main()
