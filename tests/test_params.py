from pathlib import Path

import pytest

from ehrseq.params import SIZES, ParamsError, load_params, parse_params

ROOT_PARAMS = __import__("pathlib").Path(__file__).resolve().parents[1] / "params.yaml"


def test_repo_params_yaml_is_valid():
    p = load_params(ROOT_PARAMS)
    assert p.model.size in SIZES


@pytest.mark.parametrize(
    "raw, key, accepted",
    [
        ({"model": {"size": "huge"}}, "model.size", "'tiny', 'small', 'medium' or 'large'"),
        ({"data": {"patients": 0}}, "data.patients", "greater than or equal to 1"),
        ({"data": {"patients": "many"}}, "data.patients", "valid integer"),
        ({"data": {"sourc": "generate"}}, "data.sourc", "accepted here"),
        ({"dataa": {}}, "dataa", "accepted here"),
        ({"data": {"on_bad_rows": "ignore"}}, "data.on_bad_rows", "'drop' or 'error'"),
        ({"outcome": {"name": "death"}}, "outcome.name", "onset:<SNOMED code>"),
        ({"sequences": {"event_kinds": ["labs"]}}, "sequences.event_kinds", "accepted"),
        ({"sequences": {"split": {"train": 0.5, "val": 0.1, "test": 0.1}}},
         "sequences.split", "sum to 1"),
    ],
)
def test_bad_params_name_key_and_accepted(raw, key, accepted):
    with pytest.raises(ParamsError) as err:
        parse_params(raw, "params.yaml")
    msg = str(err.value)
    assert f"  {key}:" in msg, msg
    assert accepted in msg, msg


def test_unknown_key_lists_accepted_keys():
    with pytest.raises(ParamsError, match=r"accepted here: \[.*'patients'.*\]"):
        parse_params({"data": {"patient": 3}})


def test_onset_outcome_accepted():
    assert parse_params({"outcome": {"name": "onset:44054006"}}).outcome.name == "onset:44054006"


def test_bad_yaml_file(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("data: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(f)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_params_yaml_holds_the_schema_defaults():
    """One source of defaults: the committed params.yaml sets no key to another value than
    the schema's own default, so a stage never behaves differently with a key left out; it
    holds the knobs and the keys dvc.yaml names (the rest: docs/params.md)."""
    assert load_params(ROOT_PARAMS).model_dump() == parse_params({}).model_dump()


def test_the_parameter_reference_is_generated_from_the_schema(tmp_path, monkeypatch):
    """docs/params.md is `python -m ehrseq.ops.params_doc --write`'s output (issue 28): a key,
    default or description changed in src/ehrseq/params.py without regenerating it fails."""
    from ehrseq.ops import params_doc

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    assert params_doc.main(["--check"]) == 0
    text = params_doc.reference()
    assert "| `model.behrt.time` | `Literal['years', 'days']` | `days` |" in text
    assert "| `tune.finetune_lrs` |" in text and "`data.city` | `str \\| None`" in text
    monkeypatch.chdir(tmp_path)   # no docs/params.md here: stale
    assert params_doc.main(["--check"]) == 1
