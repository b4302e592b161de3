"""docs/tools/ablation.py: where each stage of an ablation writes its metrics."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs" / "tools"))
from ablation import stage_metrics  # noqa: E402


def test_stage_metrics_files_and_curve_prefixes():
    assert stage_metrics("train_survival") == ("train_survival", "train_survival.json", "")
    assert stage_metrics("finetune_behrt:full") == ("finetune_behrt", "finetune_behrt/full.json",
                                                    "")
    assert stage_metrics("finetune_behrt:full --labelled 25 --replicate 1") == (
        "finetune_behrt", "curve/finetune_behrt/full/n25_r1.json", "n25.")
    assert stage_metrics("train_survival:--labelled 50") == (
        "train_survival", "curve/train_survival/n50_r0.json", "n50.")


def test_rows_of_an_earlier_run_render_again_without_training(tmp_path, monkeypatch):
    import json

    import ablation

    rows = [{"point": {"model.lstm.values": v}, "seed": s, "lstm.best_val_loss": 1.0 + v + s / 10}
            for v in (False, True) for s in (0, 1)]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    monkeypatch.setattr(ablation, "run", lambda a: (_ for _ in ()).throw(AssertionError("ran")))
    monkeypatch.setattr(sys, "argv", [
        "ablation.py", "--from", str(tmp_path / "absent"), "--stage", "train_survival",
        "--metric", "lstm.best_val_loss", "--rows", str(tmp_path / "a.json"),
        "--note", "A note written later.", "--out", str(tmp_path / "a.md")])
    ablation.main()
    page = (tmp_path / "a.md").read_text()
    assert "A note written later." in page and "--rows" in page
    assert "| True | 2.0500 (2.0000-2.1000) | 2 |" in page
    assert json.loads((tmp_path / "a.json").read_text()) == rows


def test_the_workspace_holds_the_runs_pretrained_encoders_but_those_it_trains(tmp_path):
    from ablation import workspace

    src = tmp_path / "run"
    for d in ("data/processed/sequences", "data/processed/outcomes", "models/pretrain_behrt",
              "models/train_med2vec"):
        (src / d).mkdir(parents=True)
        (src / d / "model.safetensors").write_text(d)
    workspace(src, tmp_path / "w", ["finetune_behrt:scratch", "finetune_med2vec"])
    assert (tmp_path / "w/models/pretrain_behrt/model.safetensors").read_text() == \
        "models/pretrain_behrt"
    assert (tmp_path / "w/models/train_med2vec/model.safetensors").exists()
    assert (tmp_path / "w/data/processed/outcomes/model.safetensors").exists()
    workspace(src, tmp_path / "w", ["pretrain_behrt", "finetune_behrt:full"])
    assert not (tmp_path / "w/models/pretrain_behrt").exists()
    assert (tmp_path / "w/models/train_med2vec").exists()
