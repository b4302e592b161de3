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
