"""Stage `train_med2vec`: Med2Vec code and visit embeddings, trained by the one training loop
on the training split and judged against ground truth no model saw (Synthea's modules), next
to a random embedding, a PPMI+SVD co-occurrence embedding and next-visit baselines."""

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from ehrseq.data.modules import code_modules, label_tokens, membership
from ehrseq.data.tensors import Sequences, make_loader
from ehrseq.evaluate import embeddings as E
from ehrseq.io import atomic_outputs, run_stage, write_json
from ehrseq.models.med2vec import (
    Med2Vec,
    Med2VecDataset,
    encode_all_visits,
    med2vec_config,
    med2vec_loss,
)
from ehrseq.params import load_params
from ehrseq.plots import training_curves
from ehrseq.train.loop import fingerprint, fit, make_run_key, save_model, seed_everything

SEQUENCES = Path("data/processed/sequences")
MODEL_DIR = Path("models/train_med2vec")
EMB_DIR = Path("data/processed/med2vec")
PLOTS = Path("plots/train_med2vec")
KS_CODE, KS_VISIT = (5, 10), (10, 20)
log = logging.getLogger("train_med2vec")


def main() -> None:
    params = load_params()
    tp, seed = params.train, params.train.seed
    seqs = Sequences.load(SEQUENCES)
    split = seqs.patients["split"].to_numpy()
    cfg = med2vec_config(params.model, seqs.vocab_size)
    seed_everything(seed, tp.deterministic)
    model = Med2Vec(cfg)
    train = Med2VecDataset(seqs, np.flatnonzero(split == "train"))
    val = Med2VecDataset(seqs, np.flatnonzero(split == "val"))
    loader = make_loader(train, tp.batch_size, shuffle=True, seed=seed,
                         num_workers=tp.num_workers)
    key = make_run_key("train_med2vec", cfg, tp, fingerprint(SEQUENCES))
    tokens = seqs.vocab["tokens"]
    n_special = len(seqs.vocab.get("specials", {}))

    with atomic_outputs(MODEL_DIR, EMB_DIR, PLOTS) as (model_dir, emb_dir, plots_dir):
        stats = fit(model, loader, med2vec_loss, tp,
                    val_loader=make_loader(val, tp.batch_size) if len(val) else None,
                    run_key=key, checkpoint_root=tp.checkpoint_dir,
                    live_dir=plots_dir / "live")
        model.cpu().eval()
        save_model(model_dir, model, cfg, seqs.vocab)
        t0 = time.monotonic()
        with torch.no_grad():
            code_emb = model.code_vectors().numpy().astype(np.float32)
        visit_emb = encode_all_visits(model, seqs)
        emb_dir.mkdir()
        np.save(emb_dir / "code_embeddings.npy", code_emb)
        np.save(emb_dir / "visit_embeddings.npy", visit_emb)
        (emb_dir / "tokens.json").write_text(json.dumps(tokens))
        training_curves(stats["history"], plots_dir / "training_curves")

        # ground truth: Synthea modules; baselines of the same dimension
        labels = label_tokens(tokens, code_modules())
        member, modules = membership(labels)
        train_visits = E.split_visits(seqs, "train")
        candidates = {
            "med2vec": code_emb,
            "random": E.random_embedding(len(tokens), cfg.code_dim, seed),
            "ppmi_svd": E.ppmi_svd(seqs, train_visits, cfg.code_dim, seed),
        }
        metrics: dict = {"codes.labelled": int(member.any(1).sum()),
                         "codes.vocab": len(tokens), "codes.modules": len(modules),
                         "med2vec.dead_codes": int((code_emb[n_special:].sum(1) == 0).sum())}
        chance = E.chance_precision(member)
        for name, emb in candidates.items():
            for k, p in E.precision_at_k(emb, member, KS_CODE).items():
                metrics[f"code_precision_at_{k}.{name}"] = p
        for k in KS_CODE:
            m = metrics
            m[f"code_precision_at_{k}.chance"] = chance
            m[f"code_precision_at_{k}.margin_vs_random"] = \
                m[f"code_precision_at_{k}.med2vec"] - m[f"code_precision_at_{k}.random"]
            m[f"code_precision_at_{k}.margin_vs_ppmi_svd"] = \
                m[f"code_precision_at_{k}.med2vec"] - m[f"code_precision_at_{k}.ppmi_svd"]

        # next-visit recall on the test patients
        src, tgt = E.next_visit_pairs(seqs, "test")
        freq = E.frequency_scores(seqs, train_visits)
        weight, bias = model.output.weight.detach(), model.output.bias.detach()
        scorers = {
            "med2vec": lambda v: torch.from_numpy(visit_emb[v]) @ weight.T + bias,
            "frequency": lambda v: torch.from_numpy(freq).expand(len(v), -1),
            "last_visit": E.last_visit_scores(seqs, freq),
        }
        metrics["next_visit.pairs"] = len(src)
        for name, fn in scorers.items():
            for k, r in E.next_visit_recall(fn, seqs, src, tgt, KS_VISIT, n_special).items():
                metrics[f"next_visit_recall_at_{k}.{name}"] = r
        for k in KS_VISIT:
            m = metrics
            for base in ("frequency", "last_visit"):
                m[f"next_visit_recall_at_{k}.margin_vs_{base}"] = \
                    m[f"next_visit_recall_at_{k}.med2vec"] - m[f"next_visit_recall_at_{k}.{base}"]
        E.umap_plot(code_emb, tokens, labels, plots_dir / "code_umap", seed=seed,
                    title=f"Med2Vec code embeddings ({cfg.size}, UMAP), by Synthea module")
        eval_seconds = time.monotonic() - t0

    hours = stats["wall_time_s"] / 3600
    metrics.update({
        "med2vec.size": cfg.size,
        "med2vec.code_dim": cfg.code_dim,
        "med2vec.visit_dim": cfg.visit_dim,
        "med2vec.window": cfg.window,
        "med2vec.n_params": stats["n_params"],
        "med2vec.epochs": stats["epochs"],
        "med2vec.best_epoch": stats["best_epoch"],
        "med2vec.best_val_loss": stats["best_value"],
        "med2vec.train_seconds": stats["wall_time_s"],
        "med2vec.eval_seconds": eval_seconds,
        "med2vec.patients_per_s": stats["patients_per_s"],
        "med2vec.tokens_per_s": stats["tokens_per_s"],
        "med2vec.peak_memory_mb": stats["peak_memory_mb"],
        "med2vec.device": stats["device_name"],
        "med2vec.gpu_cost_usd": hours * params.evaluate.gpu_hourly_usd
        if stats["device"].startswith("cuda") else 0.0,
    })
    write_json("metrics/train_med2vec.json", metrics)
    log.info("med2vec %s (%d params): precision@10 %.3f (random %.3f, PPMI %.3f, chance %.3f); "
             "next-visit recall@20 %.3f (frequency %.3f, last visit %.3f); %.0f s on %s",
             cfg.size, stats["n_params"], metrics["code_precision_at_10.med2vec"],
             metrics["code_precision_at_10.random"], metrics["code_precision_at_10.ppmi_svd"],
             chance, metrics["next_visit_recall_at_20.med2vec"],
             metrics["next_visit_recall_at_20.frequency"],
             metrics["next_visit_recall_at_20.last_visit"], stats["wall_time_s"],
             stats["device_name"])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_stage(main)
