"""DDP on CPU (gloo) through torchrun: 2 ranks with global batch B follow the validation-loss
curve of 1 process with batch B (tolerance 3% per epoch), and both ranks end with identical
weights (gradients were all-reduced)."""

import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).parent / "workers" / "ddp_train.py"


def run(cmd, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]


def test_two_ranks_follow_single_process(tmp_path):
    single, multi = tmp_path / "single.json", tmp_path / "ddp.json"
    run([sys.executable, str(WORKER), str(single), "32"], tmp_path)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(WORKER), str(multi), "32"], tmp_path)
    a, b = json.loads(single.read_text()), json.loads(multi.read_text())
    assert a["world_size"] == 1 and b["world_size"] == 2
    assert len(a["val_loss"]) == len(b["val_loss"]) == 4
    print("val loss, 1 process:", a["val_loss"], "2 ranks:", b["val_loss"])
    assert a["val_loss"][-1] < a["val_loss"][0]  # it learned something
    for x, y in zip(a["val_loss"], b["val_loss"], strict=True):
        assert abs(x - y) / x < 0.03, (a["val_loss"], b["val_loss"])
    assert (tmp_path / "ddp.rank0.sha").read_text() == (tmp_path / "ddp.rank1.sha").read_text()


def test_every_training_stage_runs_under_torchrun(tmp_path):
    """The recipe sets DDP up for every training stage: BEHRT pre-training (which had no DDP
    before the recipe) on 2 CPU ranks writes its model once, with world_size 2 in its run
    statistics."""
    import yaml
    from test_tune import toy_workspace

    toy_workspace(tmp_path)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["model"]["behrt"] = {"hidden": 16, "layers": 1, "heads": 2, "intermediate": 32,
                                "max_len": 64}
    params["train"] = {"epochs": 2, "batch_size": 8}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    root = Path(__file__).resolve().parents[1]
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(root / "stages/pretrain_behrt.py")], tmp_path)
    m = json.loads((tmp_path / "metrics/pretrain_behrt.json").read_text())
    assert m["behrt.world_size"] == 2 and m["behrt.epochs"] == 2
    assert (tmp_path / "models/pretrain_behrt/model.safetensors").is_file()


def test_a_tuning_race_under_torchrun(tmp_path):
    """tune.race_epochs under DDP: every rank resumes the winning lr from rank 0's checkpoint
    (a barrier between the rounds), so the two ranks stay in step and the loser stops at the
    cut."""
    import yaml
    from test_tune import BAD, GOOD, toy_workspace

    toy_workspace(tmp_path)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["train"] = {"epochs": 3, "batch_size": 8}
    params["tune"]["race_epochs"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    root = Path(__file__).resolve().parents[1]
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(root / "stages/train_survival.py")], tmp_path)
    m = json.loads((tmp_path / "metrics/train_survival.json").read_text())
    assert m["lstm.world_size"] == 2 and m["lstm.tuned_lr"] == GOOD
    assert m[f"lstm.tune.lr_{BAD:g}.epochs"] == 1 and m[f"lstm.tune.lr_{GOOD:g}.epochs"] >= 2
