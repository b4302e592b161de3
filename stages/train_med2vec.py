"""Stage `train_med2vec`: Med2Vec code and visit embeddings, trained by the one recipe on the
training split, then judged against ground truth no model saw (Synthea's modules), next to a
random embedding, a PPMI+SVD co-occurrence embedding and next-visit baselines
(:func:`ehrseq.evaluate.embeddings.med2vec_quality`)."""

import json
import logging
from pathlib import Path

import numpy as np
import torch

from ehrseq.data.folds import fold_arg, fold_stage, fold_stats, refold
from ehrseq.data.task import SEQUENCES
from ehrseq.data.tensors import Sequences
from ehrseq.evaluate.embeddings import med2vec_quality
from ehrseq.io import run_stage
from ehrseq.models.med2vec import (
    Med2Vec,
    Med2VecDataset,
    encode_all_visits,
    med2vec_config,
    med2vec_loss,
)
from ehrseq.params import load_params
from ehrseq.train.recipe import train_stage

EMB_DIR = Path("data/processed/med2vec")


def main() -> None:
    params = load_params()
    fold = fold_arg()   # --fold k: a cross-fitting fold's encoder, none of its patients read
    seqs = Sequences.load(SEQUENCES)
    split = refold(seqs.patients, fold, params)["split"].to_numpy()
    cfg = med2vec_config(params.model, seqs.vocab_size)
    val = Med2VecDataset(seqs, np.flatnonzero(split == "val"))

    def finish(model, out) -> dict:
        if fold is not None:   # a fold's encoder: its fine-tuning reads the model alone
            return {}
        model.cpu().eval()
        with torch.no_grad():
            code_emb = model.code_vectors().numpy().astype(np.float32)
        visit_emb = encode_all_visits(model, seqs)
        emb_dir = out.extra[0]
        emb_dir.mkdir()
        np.save(emb_dir / "code_embeddings.npy", code_emb)
        np.save(emb_dir / "visit_embeddings.npy", visit_emb)
        (emb_dir / "tokens.json").write_text(json.dumps(seqs.vocab["tokens"]))
        return {"med2vec.code_dim": cfg.code_dim, "med2vec.visit_dim": cfg.visit_dim,
                "med2vec.window": cfg.window,
                **med2vec_quality(model, seqs, code_emb, visit_emb, cfg, params.train.seed,
                                  out.plots)}

    train_stage(
        fold_stage("train_med2vec", fold), "med2vec", params=params, build=lambda: Med2Vec(cfg),
        loss_fn=med2vec_loss, train_data=Med2VecDataset(seqs, np.flatnonzero(split == "train")),
        val_data=val if len(val) else None, lrs=[params.train.lr], inputs=(SEQUENCES,),
        key=(cfg,), config=cfg, vocab=seqs.vocab, finish=finish,
        extra_outputs=(EMB_DIR,) if fold is None else (), extra_stats=fold_stats(fold, params))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_stage(main)
