"""Stage `pretrain_behrt`: BEHRT pre-trained with masked codes and next-visit codes on the
training patients' whole records, by the one recipe (checkpoints mirrored to the DVC remote:
a lost pod resumes on a new one), validated on the validation patients beside baselines that
need no training (docs/behrt.md). Test patients are never read."""

import logging

from ehrseq.data.task import SEQUENCES
from ehrseq.data.tensors import Sequences, uses_values
from ehrseq.io import run_stage
from ehrseq.models.behrt import behrt_config
from ehrseq.models.pretraining import (
    BEHRTPretrain,
    PretrainDataset,
    code_log_freq,
    evaluate_pretraining,
    pretrain_loader,
    pretrain_loss,
)
from ehrseq.params import load_params
from ehrseq.train.recipe import train_stage


def main() -> None:
    params = load_params()
    pp = params.pretrain
    tp = params.train.model_copy(update={"epochs": pp.epochs or params.train.epochs})
    seqs = Sequences.load(SEQUENCES)
    split = seqs.patients["split"].to_numpy()
    train_idx, val_idx = (split == "train").nonzero()[0], (split == "val").nonzero()[0]
    cfg = behrt_config(params.model, seqs.vocab_size,
                       model_class="ehrseq.models.pretraining.BEHRTPretrain",
                       values=uses_values(params.model.values, seqs))
    log_freq = code_log_freq(seqs, train_idx)
    train = PretrainDataset(seqs, train_idx, cfg.max_len, pp.mask_prob, seed=tp.seed)
    val = PretrainDataset(seqs, val_idx, cfg.max_len, pp.mask_prob, seed=tp.seed + 1,
                          last_visit=True)
    val_loader = pretrain_loader(val, tp.batch_size, num_workers=params.runtime.num_workers)
    weights = {"mlm_weight": pp.mlm_weight, "next_visit_weight": pp.next_visit_weight}

    def val_fn(m, device):
        res = evaluate_pretraining(m, val_loader, log_freq, device, **weights)
        return {"val_loss": res["loss"], "val_mlm_accuracy": res["mlm_accuracy"],
                "val_next_visit_recall_at_10": res["next_visit_recall_at_10"]}

    def finish(model, out) -> dict:
        res = evaluate_pretraining(model, val_loader, log_freq, next(model.parameters()).device,
                                   **weights)
        m = {f"val.{k}": v for k, v in res.items()}
        m["val.mlm_accuracy_margin"] = res["mlm_accuracy"] - res["mlm_accuracy_freq"]
        m["val.mlm_perplexity_ratio"] = res["mlm_perplexity"] / res["mlm_perplexity_freq"]
        for k in ("next_visit_recall_at_10", "next_visit_auprc"):
            m[f"val.{k}_margin"] = res[k] - max(res[f"{k}_freq"], res[f"{k}_prev"])
        return m

    train_stage(
        "pretrain_behrt", "behrt", params=params, train=tp, build=lambda: BEHRTPretrain(cfg),
        loss_fn=lambda m, b: pretrain_loss(m, b, **weights), train_data=train,
        loader=pretrain_loader, val_fn=val_fn, monitor="val_loss", lrs=[tp.lr],
        inputs=(SEQUENCES,), key=(cfg, pp), config=cfg, vocab=seqs.vocab, finish=finish,
        extra_stats={"train_patients": len(train_idx), "val_patients": len(val_idx)})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_stage(main)
