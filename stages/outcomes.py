"""Stage `outcomes`: landmarks, then the outcome named by `outcome.name` (docs/outcomes.md).

Reads data/interim (events, for onset outcomes) and data/processed/sequences; writes
data/processed/outcomes/{outcomes.parquet, time_bins.json}, metrics/outcomes.json and a
Kaplan–Meier curve per planted subtype in plots/outcomes/ (PNG + CSV).
"""

import logging
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ehrseq.io import atomic_outputs, run_stage, write_json  # noqa: E402
from ehrseq.outcomes.build import build_outcomes  # noqa: E402
from ehrseq.params import load_params  # noqa: E402
from ehrseq.repro import RISK_DECIMALS, kaplan_meier, round_decimals  # noqa: E402

OUT = Path("data/processed/outcomes")
PLOTS = Path("plots/outcomes")


def km_by_subtype(table: pd.DataFrame, stem: Path, title: str) -> None:
    """``<stem>.csv`` (subtype, days, survival, at_risk) and ``<stem>.png``. Survival is a
    product (no log/exp), rounded to RISK_DECIMALS: the same CSV bytes on every machine."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    parts = []
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for k, g in table.groupby("subtype"):   # one curve per subtype (K <= 16)
        days, at_risk, _, surv = kaplan_meier(g["duration"], g["event"])
        surv = round_decimals(surv, RISK_DECIMALS)
        parts.append(pd.DataFrame({"subtype": int(k), "days": days, "survival": surv,
                                   "at_risk": at_risk}))
        ax.step(days, surv, where="post",
                label=f"subtype {k} (n={len(g)}, events={int(g['event'].sum())})")
    pd.concat(parts).to_csv(stem.with_suffix(".csv"), index=False)
    ax.set_xlabel("days from landmark")
    ax.set_ylabel("event-free probability (Kaplan–Meier)")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"))
    plt.close(fig)


def main() -> None:
    params = load_params()
    p = params.outcome
    t0 = time.time()
    with atomic_outputs(OUT) as (tmp,):
        res = build_outcomes("data/interim", "data/processed/sequences", tmp, p,
                             params.sequences.event_kinds)
    write_json("metrics/outcomes.json", res.metrics)
    km_by_subtype(res.table, PLOTS / "km_by_subtype",
                  f"outcome {p.name}: Kaplan–Meier by planted subtype")
    m = res.metrics
    oracle = m.get("oracle_cindex_test")
    print(f"outcomes ({p.name}): {m['eligible']} eligible of {m['patients']}, event rate "
          f"{m['event_rate']:.3f}, {m['n_time_bins']} time bins, {time.time() - t0:.1f} s"
          + (f", oracle C-index (test) {oracle:.3f}" if oracle is not None else ""))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_stage(main)
