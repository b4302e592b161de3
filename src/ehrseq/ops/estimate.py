"""Know before renting: parameter count, memory per batch and estimated epoch time of a model
size on the cohort at hand, measured on this machine with a few real training steps.

    python -m ehrseq.ops.estimate --size large                 # the LSTM, every batch setting from params.yaml
    python -m ehrseq.ops.estimate --model lstm --size medium --batch-size 128 --device cuda

It reads data/processed/sequences when present (else a toy cohort of --patients patients),
times ``--steps`` optimizer steps after two warm-up steps and extrapolates to one epoch of
the training split. Times on a CPU say little about a GPU: run it on the machine you rent.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch

from ..data.tensors import SequenceDataset, Sequences, toy_sequences
from ..models.inference import resolve_device
from ..params import load_params
from ..train.runtime import count_parameters


def _lstm(params, vocab_size: int, n_bins: int):
    from ..models.lstm_survival import DiscreteTimeSurvivalLSTM, lstm_config, survival_loss

    return DiscreteTimeSurvivalLSTM(lstm_config(params.model, vocab_size, n_bins)), survival_loss


MODELS = {"lstm": _lstm}


def estimate(model_name: str, size: str, batch_size: int | None = None, device: str = "auto",
             steps: int = 5, sequences: str | Path = "data/processed/sequences",
             patients: int = 1000) -> dict:
    params = load_params()
    params.model.size = size
    bs = batch_size or params.train.batch_size
    seqs = Sequences.load(sequences) if Path(sequences, "codes.npy").exists() else \
        toy_sequences(n_patients=patients, vocab_size=500, max_visits=60, max_codes=12)
    n_train = int((seqs.patients["split"] == "train").sum()) if "split" in seqs.patients \
        else seqs.n_patients
    cuts = [0, 30, 90, 180, 365, 730]
    model, loss_fn = MODELS[model_name](params, seqs.vocab_size, len(cuts) - 1)
    dev = resolve_device(device)
    model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    has_visits = np.flatnonzero(seqs.n_visits > 0)
    rng = np.random.default_rng(0)
    idx = rng.choice(has_visits, size=min(bs, has_visits.size), replace=False)
    if params.runtime.threads:
        torch.set_num_threads(params.runtime.threads)
    ds = SequenceDataset(seqs, idx, seqs.n_visits[idx], np.full(idx.size, 100.0),
                         np.ones(idx.size, int), cuts=cuts,
                         max_visits=params.outcome.history.max_visits)
    batch = ds[np.arange(idx.size)].to(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i in range(steps + 2):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        with torch.autocast(dev.type, torch.bfloat16, enabled=dev.type == "cuda"):
            loss = loss_fn(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    step = float(np.median(times))
    mem = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else \
        max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    n_params, n_trainable = count_parameters(model)
    steps_per_epoch = int(np.ceil(n_train / bs))
    return {
        "model": model_name, "size": size, "device": str(dev), "params": n_params,
        "trainable": n_trainable, "batch_size": bs, "tokens_per_batch": batch.n_tokens,
        "memory_per_batch_mb": round(mem, 1), "seconds_per_step": round(step, 4),
        "train_patients": n_train, "steps_per_epoch": steps_per_epoch,
        "epoch_seconds": round(step * steps_per_epoch, 1), "cpu_threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m ehrseq.ops.estimate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="lstm")
    ap.add_argument("--size", choices=["small", "medium", "large"], default="small")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--sequences", default="data/processed/sequences")
    ap.add_argument("--patients", type=int, default=1000, help="toy cohort size without data")
    a = ap.parse_args(argv)
    r = estimate(a.model, a.size, a.batch_size, a.device, a.steps, a.sequences, a.patients)
    width = max(map(len, r))
    for k, v in r.items():
        print(f"{k:<{width}}  {v:,}" if isinstance(v, int) else f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
