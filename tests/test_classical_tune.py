"""Equal tuning of the classical baselines (ehrseq.models.classical.fit_best and the
`baselines` stage): each family but Kaplan–Meier tries as many values of its regularisation
hyperparameter as the neural models have learning rates, keeps the highest validation
Harrell's C (ties: the more regularised value), never reads the test split, and writes the
choice into metrics/baselines.json; the evaluate stage scores its predictions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import script
from lifelines.exceptions import ConvergenceError

from ehrseq.models.classical import (
    COUNT_MODELS,
    MODELS,
    TUNED,
    classical_grid,
    classical_tune_metrics,
    fit_best,
    make_model,
)
from ehrseq.params import ParamsError, TuneParams, parse_params

ROOT = Path(__file__).resolve().parents[1]
H = 90.0


def simulate(n, seed, beta=1.5):
    """Exponential times, log-hazard ``beta * x0`` (x1, x2 noise), uniform censoring."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    t = rng.exponential(1 / (np.exp(beta * X[:, 0]) / 200))
    c = rng.uniform(1.0, 400.0, n)
    return X, np.minimum(t, c), (t <= c).astype(int)


class Stub:
    """A model whose quality is set by its value: ``good`` ranks by the true risk covariate,
    anything else by its negative (``flat``: the same risk for everyone; ``same``: every
    value ranks by the covariate; ``None``: value 20 is flat, the others rank backwards)."""

    def __init__(self, value, good=None, fail=()):
        self.value, self.good, self.fail = value, good, fail

    def fit(self, X, d, e):
        if self.value in self.fail:
            raise ConvergenceError("did not converge")
        self.n_fit = len(d)
        return self

    def predict_survival(self, X, times):
        if self.good == "flat" or (self.good is None and self.value == 20):
            r = np.zeros(len(X))
        elif self.good == "same":
            r = X[:, 0]
        else:
            r = X[:, 0] if self.value == self.good else -X[:, 0]
        s = 1 / (1 + np.exp(r))   # higher risk, lower S
        return np.tile(s[:, None], (1, len(times)))


@pytest.fixture(scope="module")
def data():
    X, d, e = simulate(300, seed=1)
    Xv, dv, ev = simulate(150, seed=2)
    return X, d, e, Xv, dv, ev


@pytest.mark.parametrize("good", [0.01, 0.1, 1.0])
@pytest.mark.parametrize("larger_regularises", [True, False])
def test_picks_the_higher_validation_c(data, good, larger_regularises):
    grid = [1.0, 0.01, 0.1]
    res = fit_best(lambda v: Stub(v, good), grid, *data, H,
                   larger_regularises=larger_regularises)
    assert res.value == good and res.model.value == good
    assert res.model.n_fit == 300   # fitted on the training arrays
    assert set(res.val_c) == set(grid)
    assert res.val_c[good] > 0.7 and all(res.val_c[v] < 0.3 for v in grid if v != good)
    assert max(res.val_c, key=res.val_c.get) == good


def test_ties_go_to_the_more_regularised_value(data):
    grid = [5, 20]
    for larger, want in ((True, 20), (False, 5)):
        res = fit_best(lambda v: Stub(v, "flat"), grid, *data, H, larger_regularises=larger)
        assert all(math.isnan(c) for c in res.val_c.values()) and res.value == want
    # two models that rank equally well: the more regularised one
    res = fit_best(lambda v: Stub(v, "same"), grid, *data, H, larger_regularises=True)
    assert res.val_c[5] == res.val_c[20] and res.value == 20


def test_a_constant_risk_never_beats_one_that_ranks(data):
    """A model that gives every validation landmark the same risk ranks nobody: no C (NaN),
    so it loses even to a value whose C is below 0.5 (as on 7 validation patients)."""
    res = fit_best(lambda v: Stub(v, "flat" if v == 20 else None), [5, 20], *data, H)
    assert math.isnan(res.val_c[20]) and res.val_c[5] < 0.3 and res.value == 5


def test_a_failed_fit_is_skipped(data):
    res = fit_best(lambda v: Stub(v, 0.1, fail=(0.01,)), [0.01, 0.1], *data, H)
    assert res.value == 0.1 and math.isnan(res.val_c[0.01])
    assert classical_tune_metrics("cox", res)["cox.tune.penalizer_0.01.val_c"] is None
    with pytest.raises(ConvergenceError):
        fit_best(lambda v: Stub(v, 0.1, fail=(0.01, 0.1)), [0.01, 0.1], *data, H)


def test_no_validation_event_keeps_the_most_regularised(data):
    X, d, e, Xv, dv, ev = data
    res = fit_best(lambda v: Stub(v, 0.01), [0.01, 0.1], X, d, e, Xv, dv, 0 * ev, H)
    assert res.value == 0.1 and all(math.isnan(c) for c in res.val_c.values())


@pytest.mark.parametrize("name", ["rf", "rsf"])
def test_real_forest_prefers_a_leaf_that_can_split(data, name):
    """A min_samples_leaf as large as the training split leaves one leaf: every patient gets
    the same curve (validation C 0.5); a small one ranks, and is chosen although the large one
    is the more regularised."""
    res = fit_best(lambda v: make_model(name, [30, 90, 180], 0, v), [5, 300], *data, H,
                   larger_regularises=TUNED[name].larger_regularises)
    assert math.isnan(res.val_c[300])          # one leaf: the same curve for everyone
    assert res.value == 5 and res.val_c[5] > 0.7


def test_metrics_names(data):
    res = fit_best(lambda v: Stub(v, 1.0), [0.1, 1.0], *data, H, larger_regularises=False)
    m = classical_tune_metrics("lr", res)
    assert m["lr.tuned.C"] == 1.0 and m["lr.tune.n_values"] == 2
    assert m["lr.tune.C_1.val_c"] == res.val_c[1.0] and m["lr.tune.C_0.1.val_c"] == res.val_c[0.1]


# --------------------------------------------------------------------------- params


def test_params_and_grids():
    t = TuneParams()
    assert (t.cox_penalizer, t.lr_c, t.forest_min_leaf, t.coxnet_alpha) == \
        ([0.01, 0.1], [0.1, 1.0], [5, 20], [0.05, 0.2])
    assert {n: classical_grid(n, t) for n in MODELS} == {
        "km": [None], "cox": [0.01, 0.1], "coxnet": [0.05, 0.2], "lr": [0.1, 1.0],
        "rf": [5, 20], "rsf": [5, 20], "gbm": [5, 20]}
    # every family gets len(tune.lrs) candidates
    assert all(len(classical_grid(n, t)) == len(t.lrs) for n in TUNED)
    # tuning off: today's defaults, one candidate each (the grids are not used)
    off = parse_params({"tune": {"lrs": None}}).tune
    assert {n: classical_grid(n, off) for n in TUNED} == {
        "cox": [0.1], "coxnet": [0.1], "lr": [1.0], "rf": [5], "rsf": [10], "gbm": [20]}
    p = parse_params({"tune": {"lrs": [0.01, 0.001, 0.003], "cox_penalizer": [1, 0.1, 0.01],
                               "lr_c": [0.1, 1, 10], "forest_min_leaf": [20, 5, 10],
                               "coxnet_alpha": [0.3, 0.1, 0.03],
                               "finetune_lrs": [3e-4, 1e-4, 3e-5]}}).tune
    assert p.cox_penalizer == [0.01, 0.1, 1] and p.forest_min_leaf == [5, 10, 20]
    assert p.finetune_lrs == [3e-5, 1e-4, 3e-4]
    # the fine-tuning grid follows tune.lrs when null, and counts in the same budget
    assert parse_params({"tune": {"finetune_lrs": None}}).tune.finetune_lrs is None
    with pytest.raises(ParamsError, match="tune.finetune_lrs: 1"):
        parse_params({"tune": {"finetune_lrs": [1e-4]}})
    for bad, key in (({"lrs": [0.001, 0.003, 0.01]}, "same tuning budget"),
                     ({"lr_c": [0.0, 1.0]}, "tune.lr_c"),
                     ({"cox_penalizer": [-1.0, 0.1]}, "tune.cox_penalizer"),
                     ({"forest_min_leaf": [0, 5]}, "tune.forest_min_leaf"),
                     ({"forest_min_leaf": [5, 5]}, "tune.forest_min_leaf"),
                     ({"coxnet_alpha": [0.1, 1.5]}, "tune.coxnet_alpha"),
                     ({"coxnet_alpha": [0.0, 0.1]}, "tune.coxnet_alpha"),
                     ({"lrs": [0.001], "lr_c": [1.0]}, "tune: .*cox_penalizer: 2")):
        with pytest.raises(ParamsError, match=key):
            parse_params({"tune": bad})


def test_params_yaml_and_dvc_yaml():
    from ehrseq.params import resolved_params

    p = resolved_params(ROOT / "params.yaml")     # the file's keys over the schema's defaults
    assert parse_params(p).tune == TuneParams.model_validate(p["tune"])
    assert {"cox_penalizer", "lr_c", "forest_min_leaf", "coxnet_alpha"} <= set(p["tune"])
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["baselines"]
    assert "tune" in spec["params"]


# --------------------------------------------------------------------------- the stage


def toy_workspace(root: Path, n: int = 120) -> None:
    from ehrseq.data.tensors import toy_sequences

    s = toy_sequences(n, vocab_size=30, max_visits=6, max_codes=4, seed=1)
    rng = np.random.default_rng(1)
    s.patients["birth_date"] = pd.Timestamp("1960-01-01") + pd.to_timedelta(
        rng.integers(0, 15_000, n), unit="D")
    s.patients["gender"] = rng.choice(["M", "F"], n)
    s.save(root / "data/processed/sequences")
    out = root / "data/processed/outcomes"
    out.mkdir(parents=True)
    pd.DataFrame({"patient": s.patients["patient"], "index": np.arange(n),
                  "split": np.array(["train", "val", "test"])[np.arange(n) % 3],
                  "landmark_visits": s.n_visits, "input_visits": s.n_visits,
                  "landmark_time": 18_000.0, "duration": rng.exponential(200, n) + 1,
                  "event": rng.integers(0, 2, n), "true_risk": rng.normal(size=n),
                  }).to_parquet(out / "outcomes.parquet", index=False)
    (out / "time_bins.json").write_text(json.dumps({"cuts": [0, 30, 90, 180, 365, 730],
                                                       "horizons": [30, 90, 365]}))
    (root / "params.yaml").write_text(yaml.safe_dump({"report": {"bootstrap": 0}}))


def run_stage(root: Path, monkeypatch, calls: list | None = None) -> dict:
    monkeypatch.chdir(root)
    stage = script("stages/baselines.py")
    if calls is not None:   # what reaches the tuner: training and validation arrays only
        real = stage.fit_best

        def spy(make, grid, X_tr, d_tr, e_tr, X_va, d_va, e_va, h, **kw):
            calls.append((len(grid), X_tr.shape[0], np.asarray(d_tr), X_va.shape[0],
                          np.asarray(d_va), h))
            return real(make, grid, X_tr, d_tr, e_tr, X_va, d_va, e_va, h, **kw)

        monkeypatch.setattr(stage, "fit_best", spy)
    stage.main()
    return json.loads((root / "metrics/baselines.json").read_text())


def scores(root: Path) -> dict:
    """What the evaluate stage computes from the stage's predictions."""
    from ehrseq.evaluate.scoring import score_all
    from ehrseq.params import ReportParams

    return score_all(root / "data/predictions", root / "data/processed/outcomes", [30, 90, 365],
                     ReportParams(bootstrap=0))[0]


def test_stage_tunes_on_validation_only(tmp_path, monkeypatch):
    """The stage tunes every family on validation and records the choice; replacing the
    test split's outcomes changes the test scores but not a single tuning number."""
    toy_workspace(tmp_path)
    table = pd.read_parquet(tmp_path / "data/processed/outcomes/outcomes.parquet")
    calls: list = []
    m = run_stage(tmp_path, monkeypatch, calls)
    train, val = (table[table["split"] == s] for s in ("train", "val"))
    assert len(calls) == len(MODELS)
    for _, n_tr, d_tr, n_va, d_va, h in calls:
        assert n_tr == len(train) and n_va == len(val) and h == m["tune.risk_horizon"]
        np.testing.assert_array_equal(d_tr, train["duration"])
        np.testing.assert_array_equal(d_va, val["duration"])
    assert [c[0] for c in calls] == [1] + [2] * (len(MODELS) - 1)   # KM has nothing to tune
    for name, t in TUNED.items():
        grid = classical_grid(name, TuneParams())
        cs = {v: m[f"{name}.tune.{t.hyperparam}_{v:g}.val_c"] for v in grid}
        chosen = m[f"{name}.tuned.{t.hyperparam}"]
        assert chosen in grid and m[f"{name}.tune.n_values"] == 2
        # the highest validation C (None: no C, e.g. the same risk for everyone); on a tie
        # the more regularised value
        best = max((c for c in cs.values() if c is not None), default=None)
        want = [v for v in grid if cs[v] == best]
        assert chosen == (max(want) if t.larger_regularises else min(want)), (name, cs)
        assert f"{name}.c_harrell" not in m   # the stage only predicts; evaluate scores
    assert "km.tuned" not in " ".join(m)
    s1 = scores(tmp_path)
    assert all(0.0 <= s1[f"{name}.c_harrell"] <= 1.0 for name in MODELS)

    # new test outcomes (and a new oracle): the tuning is bit for bit the same
    rng = np.random.default_rng(7)
    test = table["split"] == "test"
    table.loc[test, "duration"] = rng.exponential(50, test.sum()) + 1
    table.loc[test, "event"] = rng.integers(0, 2, test.sum())
    table.loc[test, "true_risk"] = rng.normal(size=test.sum())
    table.to_parquet(tmp_path / "data/processed/outcomes/outcomes.parquet", index=False)
    m2 = run_stage(tmp_path, monkeypatch)
    tuning = [k for k in m if "tune" in k.split(".")[:2] or ".tuned." in k]
    tuning = [k for k in tuning if not k.endswith("wall_time_s")]
    assert len(tuning) == len(TUNED) * 4 + 1
    assert {k: m2[k] for k in tuning} == {k: m[k] for k in tuning}
    assert scores(tmp_path)["cox.c_harrell"] != s1["cox.c_harrell"]
    # the best count model is chosen on validation: the same with other test outcomes
    assert m2["best_count.model"] == m["best_count.model"]
    val = {n: m[f"{n}.tune.{TUNED[n].hyperparam}_{m[f'{n}.tuned.{TUNED[n].hyperparam}']:g}.val_c"]
           for n in COUNT_MODELS}
    assert m["best_count.val_c"] == max(val.values())
    sides = [json.loads(f.read_text()) for f in
             (tmp_path / "data/predictions/baselines").glob("*.json")]
    assert [x["model"] for x in sides if x["best_count"]] == [m["best_count.model"]]
    assert scores(tmp_path)["best_count.model"] == m["best_count.model"]
