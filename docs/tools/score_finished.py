"""Score the models of a run that has not reached ``evaluate`` yet: what has finished, scored
by the evaluate stage's own code (the same risk score, metrics and patient bootstrap), with
paired comparisons against the best count model and the oracle. For a long run cut short (a
lost pod, a session's end): the ``evaluate`` stage itself refuses to score a DAG with
predictions missing, and rightly so.

    python docs/tools/score_finished.py RUN_DIR [--out X.md]

RUN_DIR: a repository with ``params.yaml``, ``data/processed/outcomes`` and the prediction
folders of the finished stages (``data/predictions/<stage>``, learning-curve points left out).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from ehrseq.data.runs import CURVE  # noqa: E402
from ehrseq.evaluate.report import comparisons_markdown, headroom, paired_comparisons  # noqa: E402
from ehrseq.evaluate.scoring import Outcomes, find_predictions, score_all  # noqa: E402
from ehrseq.params import load_params  # noqa: E402
from ehrseq.survival.bins import read_bins  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    run = a.run.resolve()
    params = load_params(run / "params.yaml")
    outcomes, pred = run / "data/processed/outcomes", run / "data/predictions"
    found = find_predictions(pred, ignore=[pred / CURVE])
    dirs = sorted({f.parent for f in [*found[0].values(), *found[1]]})
    flat, risks = score_all(pred, outcomes, read_bins(outcomes)[1], params.report, found=found)
    best = flat.get("best_count.model")
    pairs = paired_comparisons(risks, Outcomes.load(outcomes), params.report.bootstrap,
                               params.report.seed, best, [n for n in risks if n != best])
    flat.update(headroom(pairs, best))
    lines = [f"Scored by `python docs/tools/score_finished.py {a.run}` on {platform.machine()} "
             f"({os.cpu_count()} CPUs): the finished stages' predictions "
             f"({', '.join(d.relative_to(pred).as_posix() for d in dirs)}).", "",
             f"Test split: {flat['test.patients']} patients, {flat['test.landmarks']} "
             f"landmarks, {flat['test.events']} events. Best count model (validation): "
             f"**{best}**."
             + (f" Oracle C {flat['oracle.c_harrell']:.3f}; headroom (oracle − {best}) "
                f"{flat['headroom']:+.3f} [{flat['headroom_lo']:+.3f}, "
                f"{flat['headroom_hi']:+.3f}]." if "headroom" in flat else ""), "",
             "| model | C (Harrell) [95% CI] | train s (every lr) |", "|---|---|---|"]
    for name in sorted(risks, key=lambda n: -flat[f"{n}.c_harrell"]):
        secs = flat.get(f"{name}.tune.wall_time_s") or flat.get(f"{name}.train_seconds")
        lines.append(f"| {name} | {flat[f'{name}.c_harrell']:.3f} "
                     f"[{flat[f'{name}.c_harrell_lo']:.3f}, {flat[f'{name}.c_harrell_hi']:.3f}]"
                     f" | {'' if secs is None else f'{secs:,.0f}'} |")
    text = "\n".join(lines) + "\n\n" + comparisons_markdown(pairs)
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
