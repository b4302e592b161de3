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
