"""docs/tools/benchmark_page.py: the expectations a benchmark page checks on its numbers."""

from __future__ import annotations

from conftest import script


def flat(val_loss: dict, delta: dict) -> dict:
    """evaluate.json keys for two sequence models and LightGBM as the best count model."""
    m = {"best_count.model": "gbm", "gbm.c_harrell": 0.65, "headroom": 0.08,
         "headroom_lo": 0.06, "headroom_hi": 0.10}
    for a in ("lstm", "med2vec"):
        m.update({f"{a}.c_harrell": 0.6, f"{a}.n_params": 10, f"{a}.best_val_loss": val_loss[a]})
        d, lo, hi = delta[a]
        m.update({f"delta.{a}-best_count.delta": d, f"delta.{a}-best_count.lo": lo,
                  f"delta.{a}-best_count.hi": hi})
    return m


def test_the_sequence_model_is_chosen_on_validation_not_on_test():
    tool = script("docs/tools/benchmark_page.py")
    # med2vec is better on test, the LSTM on validation: the LSTM is the one checked
    m = flat({"lstm": 1.70, "med2vec": 1.72},
             {"lstm": (-0.036, -0.065, -0.013), "med2vec": (-0.007, -0.037, 0.020)})
    line = [x for x in tool.expectations(m, "sequential") if "best sequence model" in x]
    assert line == ["- best sequence model on validation (lowest validation loss) lstm: "
                    "-0.036 [-0.065, -0.013] over gbm (below 0); share of the headroom "
                    "closed -0.45"]
    # a model that beats the count model with its whole interval, closing half the headroom
    m = flat({"lstm": 1.70, "med2vec": 1.72},
             {"lstm": (0.04, 0.01, 0.07), "med2vec": (0.0, -0.02, 0.02)})
    line = [x for x in tool.expectations(m, "sequential") if "best sequence model" in x]
    assert line[0].endswith("over gbm (above 0); share of the headroom closed +0.50")
    m = flat({"lstm": 1.70, "med2vec": 1.72},
             {"lstm": (0.0, -0.02, 0.02), "med2vec": (0.0, -0.02, 0.02)})
    assert "(includes 0)" in [x for x in tool.expectations(m, "sequential")
                              if "best sequence model" in x][0]


def _sequential_run(root, best_drops: str):
    """A run folder with what the mechanisms section reads: outcomes and planted features of
    a sequential scenario (true risk built as the outcomes stage builds it), the outcomes
    metrics with the betas, and the best count model's test predictions, whose risk is the
    oracle without ``best_drops``."""
    import numpy as np
    import pandas as pd
    import yaml

    from ehrseq.outcomes.synthetic import SEQUENTIAL_EFFECTS
    from ehrseq.repro import round_decimals, standardise, weighted_sum

    rng = np.random.default_rng(0)
    n = 400
    names = [e.name for e in SEQUENTIAL_EFFECTS]
    beta = np.array([0.0 if e.name == "high_bmi_first" else e.beta for e in SEQUENTIAL_EFFECTS])
    feats = pd.DataFrame({nm: rng.integers(-2, 3, n).astype(float) for nm in names})
    Z = np.stack([standardise(feats[nm].to_numpy()) for nm in names], axis=1)
    risk = round_decimals(standardise(weighted_sum(Z, beta)))
    index = np.repeat(np.arange(n // 2), 2)
    out = root / "data/processed/outcomes"
    out.mkdir(parents=True)
    split = np.where(index < n // 4, "train", "test")
    pd.DataFrame({"index": index, "split": split, "landmark_visits": np.tile([3, 6], n // 2),
                  "duration": rng.exponential(100 / np.exp(risk)).round() + 1,
                  "event": rng.integers(0, 2, n) | (index % 3 == 0), "true_risk": risk}
                 ).to_parquet(out / "outcomes.parquet")
    feats.to_parquet(out / "features.parquet")
    o = {"synthetic_scenario": "sequential", "synthetic_signal": 1.0,
         **{f"effect_{nm}_beta": float(b) for nm, b in zip(names, beta, strict=True)}}
    (root / "params.yaml").write_text(yaml.safe_dump({"report": {"bootstrap": 50, "seed": 0}}))
    test = split == "test"
    keep = [j for j, nm in enumerate(names) if nm != best_drops]
    best = weighted_sum(Z[:, keep], beta[keep])
    times = np.array([10.0, 50.0, 100.0])
    surv = np.exp(-np.exp(best[test])[:, None] * times[None] / 100)
    (root / "data/predictions/baselines").mkdir(parents=True)
    np.savez(root / "data/predictions/baselines/gbm.npz", surv=surv, times=times,
             index=index[test], landmark_visits=np.tile([3, 6], n // 2)[test])
    return {"best_count.model": "gbm", "headroom": 0.05, "test.risk_horizon": 50.0}, o


def test_the_headroom_is_split_by_planted_mechanism(tmp_path):
    tool = script("docs/tools/benchmark_page.py")
    m, o = _sequential_run(tmp_path / "a", best_drops="short_gap")
    lines = tool.mechanisms_section(tmp_path / "a", m, o)
    rows = {x.split(" | ")[0][2:]: x for x in lines if x.startswith("| ")}
    # the best count model is the oracle without short_gap: that row is level with it
    assert "| +0.000 [+0.000, +0.000] | 0% |" in rows["every mechanism but `short_gap`"]
    # the other mechanisms, each left out, lose something the count model has
    assert "| +0.000 [+0.000, +0.000] |" not in rows["every mechanism but `sbp_trend`"]
    # a mechanism with beta 0 gets no row; the oracle row is first
    assert not any("high_bmi_first" in r for r in rows)
    assert next(iter(rows)) == "risk"
    assert list(rows)[1] == "every mechanism (the oracle)"
    # a scenario that is not sequential, or features that do not rebuild the risk: no section
    assert tool.mechanisms_section(tmp_path / "a", m, {**o, "synthetic_scenario": "additive"}) == []
    assert tool.mechanisms_section(tmp_path / "a", m, {**o, "effect_sbp_trend_beta": 0.3}) == []
