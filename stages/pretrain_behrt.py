"""Stage `pretrain_behrt`: BEHRT pre-trained with masked codes and next-visit codes on the
training patients' whole records, validated on the validation patients beside baselines that
need no training (docs/behrt.md). Test patients are never read."""

import logging
from pathlib import Path

import torch

from ehrseq.data.tensors import Sequences
from ehrseq.evaluate.task import SEQUENCES
from ehrseq.io import atomic_outputs, run_stage, write_json
from ehrseq.models.behrt import behrt_config
from ehrseq.models.pretraining import (
    BEHRTPretrain,
    PretrainDataset,
    code_log_freq,
    evaluate_pretraining,
    pretrain_loader,
    pretrain_loss,
)
from ehrseq.params import ParamsError, load_params
from ehrseq.plots import training_curves
from ehrseq.train.loop import fingerprint, fit, make_run_key, save_model, seed_everything

MODEL_DIR = Path("models/pretrain_behrt")
PLOTS = Path("plots/pretrain_behrt")
METRICS = "metrics/pretrain_behrt.json"
log = logging.getLogger("pretrain_behrt")


def main() -> None:
    params = load_params()
    pp = params.pretrain
    if pp.contrastive_weight > 0:
        raise ParamsError("params.yaml: pretrain.contrastive_weight: the contrastive objective "
                          "is not implemented; accepted: 0")
    tp = params.train.model_copy(update={"epochs": pp.epochs or params.train.epochs})
    seqs = Sequences.load(SEQUENCES)
    split = seqs.patients["split"].to_numpy()
    train_idx, val_idx = (split == "train").nonzero()[0], (split == "val").nonzero()[0]
    cfg = behrt_config(params.model, seqs.vocab_size,
                       model_class="ehrseq.models.pretraining.BEHRTPretrain")
    seed_everything(tp.seed, tp.deterministic)
    model = BEHRTPretrain(cfg)
    log_freq = code_log_freq(seqs, train_idx)
    train = PretrainDataset(seqs, train_idx, cfg.max_len, pp.mask_prob, seed=tp.seed)
    val = PretrainDataset(seqs, val_idx, cfg.max_len, pp.mask_prob, seed=tp.seed + 1,
                          last_visit=True)
    val_loader = pretrain_loader(val, tp.batch_size, num_workers=tp.num_workers)
    weights = {"mlm_weight": pp.mlm_weight, "next_visit_weight": pp.next_visit_weight}

    def loss_fn(m, batch):
        return pretrain_loss(m, batch, **weights)

    def val_fn(m, device):
        res = evaluate_pretraining(m, val_loader, log_freq, device, **weights)
        return {"val_loss": res["loss"], "val_mlm_accuracy": res["mlm_accuracy"],
                "val_next_visit_recall_at_10": res["next_visit_recall_at_10"]}

    key = make_run_key("pretrain_behrt", cfg, pp, tp, fingerprint(SEQUENCES))
    with atomic_outputs(MODEL_DIR, PLOTS) as (model_dir, plots_dir):
        stats = fit(model, pretrain_loader(train, tp.batch_size, shuffle=True, seed=tp.seed,
                                           num_workers=tp.num_workers),
                    loss_fn, tp, val_fn=val_fn, monitor="val_loss",
                    run_key=key, checkpoint_root=tp.checkpoint_dir, live_dir=plots_dir / "live")
        res = evaluate_pretraining(model, val_loader, log_freq, torch.device(stats["device"]),
                                   **weights)
        save_model(model_dir, model, cfg, seqs.vocab)
        training_curves(stats["history"], plots_dir / "training_curves")
    metrics = {f"val.{k}": v for k, v in res.items()}
    metrics["val.mlm_accuracy_margin"] = res["mlm_accuracy"] - res["mlm_accuracy_freq"]
    metrics["val.mlm_perplexity_ratio"] = res["mlm_perplexity"] / res["mlm_perplexity_freq"]
    for m in ("next_visit_recall_at_10", "next_visit_auprc"):
        metrics[f"val.{m}_margin"] = res[m] - max(res[f"{m}_freq"], res[f"{m}_prev"])
    hours = stats["wall_time_s"] / 3600
    metrics.update({
        "behrt.size": cfg.size, "behrt.n_params": stats["n_params"],
        "behrt.train_patients": len(train_idx), "behrt.val_patients": len(val_idx),
        "behrt.epochs": stats["epochs"], "behrt.best_epoch": stats["best_epoch"],
        "behrt.train_seconds": stats["wall_time_s"],
        "behrt.patients_per_s": stats["patients_per_s"],
        "behrt.tokens_per_s": stats["tokens_per_s"],
        "behrt.peak_memory_mb": stats["peak_memory_mb"], "behrt.device": stats["device_name"],
        "behrt.gpu_cost_usd": hours * params.evaluate.gpu_hourly_usd
        if stats["device"].startswith("cuda") else 0.0,
    })
    write_json(METRICS, metrics)
    log.info("BEHRT-%s (%d params): val MLM accuracy %.3f (frequency baseline %.3f), next-visit "
             "recall@10 %.3f (best baseline %.3f) in %.0f s on %s", cfg.size, stats["n_params"],
             res["mlm_accuracy"], res["mlm_accuracy_freq"], res["next_visit_recall_at_10"],
             res["next_visit_recall_at_10"] - metrics["val.next_visit_recall_at_10_margin"],
             stats["wall_time_s"], stats["device_name"])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_stage(main)
