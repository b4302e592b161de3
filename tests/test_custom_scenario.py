"""outcome.synthetic.scenario: custom (issue 27 part 2): a hazard written by the user through
the history/landmarks interface; one built-in effect re-implemented there gives the built-in's
true risk; every kind of bad function stops the outcomes stage with a named error."""

import json
import re
import runpy
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, ingested

from ehrseq.data.tensors import Sequences
from ehrseq.io import InputError
from ehrseq.outcomes.build import build_outcomes
from ehrseq.outcomes.custom import custom_risk, scenario_frames
from ehrseq.outcomes.landmarks import Landmarks
from ehrseq.params import OutcomeParams, SyntheticParams


@pytest.fixture(scope="module")
def labs(tmp_path_factory):
    """dbt-synthea-v3.0 (real Synthea patients with vitals) through ingest and sequences."""
    return ingested("dbt-synthea-v3.0", tmp_path_factory.mktemp("labs"))


def synthetic(root, out, **kw):
    return build_outcomes(root / "interim", root / "seq", out, OutcomeParams(synthetic=kw))


def test_a_built_in_effect_through_the_interface_gives_its_true_risk(labs, tmp_path,
                                                                     monkeypatch):
    monkeypatch.chdir(ROOT)   # scenarios/ lies in the project root
    built_in = synthetic(labs, tmp_path / "a", scenario="sequential", effects=["short_gap"])
    custom = synthetic(labs, tmp_path / "b", scenario="custom",
                       function="scenarios/examples.py:short_gap")
    a, b = built_in.table, custom.table
    assert (a["patient"] == b["patient"]).all() and a["true_risk"].std() > 0.5
    np.testing.assert_allclose(b["true_risk"], a["true_risk"], rtol=0, atol=1.5e-9)  # 9 decimals
    assert (b["subtype"] == a["subtype"]).all()
    assert custom.metrics["synthetic_effects"] == "scenarios/examples.py:short_gap"
    sbp = synthetic(labs, tmp_path / "c", scenario="custom",
                    function="scenarios/examples.py:high_last_sbp")   # the other example runs
    assert sbp.metrics["oracle_cindex_all"] > 0.55


def test_history_holds_the_model_inputs_in_their_own_units(labs, tmp_path):
    seqs = Sequences.load(labs / "seq")
    t = synthetic(labs, tmp_path / "o").table
    lm = Landmarks(t["index"].to_numpy(), t["landmark_time"].to_numpy(),
                   t["landmark_visits"].to_numpy(), input_visits=t["input_visits"].to_numpy())
    history, landmarks = scenario_frames(seqs, lm)
    assert list(landmarks["row"]) == list(range(len(t))) and (landmarks["age_days"] > 0).all()
    assert set(landmarks["sex"]) <= {"M", "F"}
    assert (history["days_before"] >= 0).all() and history["visit"].min() == 0
    per_row = history.groupby("row")["visit"].nunique().to_numpy()
    np.testing.assert_array_equal(per_row, t["input_visits"].to_numpy())   # the same window
    sbp = history[history["code"] == "LOINC/8480-6"]
    assert sbp["token"].str.startswith("LOINC/8480-6:q").all()      # the bin token, code apart
    assert 80 < sbp["value"].median() < 160                          # mmHg, not z-scores
    assert history.loc[~history["code"].str.startswith("LOINC/"), "value"].isna().all()
    ev = pd.read_parquet(labs / "interim/events.parquet")
    raw = ev.loc[ev["code"] == "8480-6", "value"]
    assert sbp["value"].between(raw.min() - 1e-3, raw.max() + 1e-3).all()


BAD = {
    "raises": ("def f(h, l):\n    raise KeyError('no column')\n", "raised KeyError"),
    "short": ("def f(h, l):\n    return [1.0, 2.0]\n", "returned shape (2,)"),
    "text": ("def f(h, l):\n    return ['a'] * len(l)\n", "accepted: real numbers"),
    "nan": ("import numpy as np\ndef f(h, l):\n    r = np.arange(len(l), dtype=float)\n"
            "    r[1] = np.nan\n    return r\n", "non-finite risk (nan) at row 1"),
    "constant": ("def f(h, l):\n    return [3.0] * len(l)\n", "the same risk (3.0)"),
    "import": ("import not_a_module\ndef f(h, l):\n    return 0\n", "importing it raised"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_function_is_a_named_error(case, tmp_path, monkeypatch):
    from ehrseq.data.tensors import toy_sequences

    seqs = toy_sequences(20, seed=1)
    lm = Landmarks(np.arange(20), np.full(20, 20_000.0), np.ones(20, np.int64))
    (tmp_path / "scenarios").mkdir()
    body, message = BAD[case]
    (tmp_path / "scenarios/bad.py").write_text(body)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"scenarios/bad.py(:f)?.*" + re.escape(message)):
        custom_risk(seqs, lm, "scenarios/bad.py:f")


def test_missing_file_name_or_place_and_parameters(tmp_path, monkeypatch):
    from ehrseq.data.tensors import toy_sequences

    seqs = toy_sequences(5)
    lm = Landmarks(np.arange(5), np.full(5, 20_000.0), np.ones(5, np.int64))
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios/ok.py").write_text("def g(h, l):\n    return range(len(l))\n")
    (tmp_path / "elsewhere.py").write_text("def g(h, l):\n    return range(len(l))\n")
    monkeypatch.chdir(tmp_path)
    assert list(custom_risk(seqs, lm, "scenarios/ok.py:g")[0]) == [0, 1, 2, 3, 4]
    for spec, message in (("scenarios/none.py:g", "scenarios/none.py: missing"),
                          ("scenarios/ok.py:h", r"no function 'h'.*functions there: \['g'\]"),
                          ("elsewhere.py:g", "a file under scenarios/"),
                          ("scenarios/ok.py", "accepted: 'scenarios/<file>.py:<function")):
        with pytest.raises(InputError, match=message):
            custom_risk(seqs, lm, spec)
    with pytest.raises(ValueError, match="accepted: scenario custom with function"):
        SyntheticParams(scenario="custom")
    with pytest.raises(ValueError, match="accepted: scenario custom with function"):
        SyntheticParams(function="scenarios/ok.py:g")
    with pytest.raises(ValueError, match="a custom scenario's function is its one effect"):
        SyntheticParams(scenario="custom", function="scenarios/ok.py:g", effects=["x"])


def test_stage_stops_and_writes_nothing_on_a_bad_function(labs, tmp_path, monkeypatch, capsys):
    (tmp_path / "data/processed").mkdir(parents=True)
    shutil.copytree(labs / "interim", tmp_path / "data/interim")
    shutil.copytree(labs / "seq", tmp_path / "data/processed/sequences")
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios/mine.py").write_text(
        "def risk(history, landmarks):\n    return landmarks['age_days'] / 0.0\n")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(json.dumps({"outcome": {"synthetic": {
        "scenario": "custom", "function": "scenarios/mine.py:risk"}}}))
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(ROOT / "stages/outcomes.py"), run_name="__main__")
    assert exit_.value.code == 2
    assert "scenarios/mine.py:risk returned a non-finite risk (inf)" in capsys.readouterr().err
    assert not (tmp_path / "data/processed/outcomes").exists()
