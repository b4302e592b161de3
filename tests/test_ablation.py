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
