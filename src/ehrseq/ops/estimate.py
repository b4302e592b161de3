"""Know before renting: parameter count, memory per batch and estimated epoch time of every
model family and size on the cohort at hand, measured on this machine with a few real training
steps; and the projected time and cost of a planned grid on a named GPU.

    python -m ehrseq.ops.estimate --size large                 # the LSTM
    python -m ehrseq.ops.estimate --model behrt --size medium --batch-size 128 --device cuda
    python -m ehrseq.ops.estimate --model all --size small --gpu h100 --runs 40 --epochs 20
    python -m ehrseq.ops.estimate --corpus 100000 1000000 --gpu h100   # a pre-training corpus

Families: ``lstm``, ``behrt`` (fine-tuning, the survival head), ``behrt_pretrain`` (MLM + next
visit), ``med2vec`` (+ head). It reads data/processed/sequences when present (else a toy
cohort of --patients patients), times ``--steps`` optimizer steps after two warm-up steps and
extrapolates to one epoch of the training split. Times on a CPU say little about a GPU: run it
on the machine you rent. ``--gpu`` projects the time of ``--runs`` trainings of ``--epochs``
epochs on a GPU that is not at hand by a stated FLOP model (:data:`GPUS`, :func:`project`),
and its cost at ``report.gpu_hourly_usd`` (or ``--usd-per-hour``); the output says which.
``--corpus N ...`` projects a pre-training corpus of N patients (``pretrain.corpus``): its
generation on the CPU pods of :data:`PODS` from the generator's rate measured here per core
(``--generate`` patients, default 3), and its BEHRT pre-training per epoch from the step time
measured here (and on ``--gpu`` by the FLOP model), with the costs.
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
from ..params import SIZES, load_params
from ..train.runtime import count_parameters

CUTS = [0, 30, 90, 180, 365, 730]   # time bins of the timed batches


def _lstm(params, seqs, ds):
    from ..models.lstm_survival import DiscreteTimeSurvivalLSTM, lstm_config, survival_loss

    cfg = lstm_config(params.model, seqs.vocab_size, len(CUTS) - 1)
    return DiscreteTimeSurvivalLSTM(cfg), survival_loss, ds


def _behrt(params, seqs, ds):
    from ..models.behrt import BEHRTDataset, BEHRTSurvival, behrt_config, survival_loss

    cfg = behrt_config(params.model, seqs.vocab_size, len(CUTS) - 1)
    return BEHRTSurvival(cfg), survival_loss, BEHRTDataset(ds, cfg.max_len)


def _behrt_pretrain(params, seqs, ds):
    from ..models.behrt import behrt_config
    from ..models.pretraining import BEHRTPretrain, PretrainDataset, pretrain_loss

    cfg = behrt_config(params.model, seqs.vocab_size)
    data = PretrainDataset(seqs, ds.index, cfg.max_len, params.pretrain.mask_prob)
    return BEHRTPretrain(cfg), pretrain_loss, _Epoch0(data)


def _med2vec(params, seqs, ds):
    import dataclasses

    from ..models.med2vec import (
        Med2VecSurvival,
        Med2VecSurvivalDataset,
        med2vec_config,
        survival_loss,
    )

    cfg = dataclasses.replace(med2vec_config(params.model, seqs.vocab_size),
                              n_bins=len(CUTS) - 1)
    return Med2VecSurvival(cfg), survival_loss, Med2VecSurvivalDataset(ds)


class _Epoch0:
    """Pre-training batches are keyed by (epoch, rows)."""

    def __init__(self, data):
        self.data = data

    def __getitem__(self, rows):
        return self.data[(0, rows)]


MODELS = {"lstm": _lstm, "behrt": _behrt, "behrt_pretrain": _behrt_pretrain,
          "med2vec": _med2vec}

GPUS = {  # dense bf16 tensor-core peak TFLOP/s (vendor data sheets), for the FLOP model
    "a10g": 125.0, "l4": 121.0, "a100": 312.0, "h100": 989.0, "h200": 989.0,
}
UTILISATION = 0.30
"""Assumed share of the peak a small-batch EHR model reaches (sequence lengths of a few hundred
tokens, small hidden sizes): an assumption, stated in the output, not a measurement."""


def project(n_params: int, tokens_per_epoch: float, epochs: int, runs: int, gpu: str,
            usd_per_hour: float) -> dict:
    """Training FLOPs ~ 6 x parameters x tokens (forward + backward, Kaplan et al. 2020) per
    epoch; time = FLOPs / (peak x :data:`UTILISATION`)."""
    flops = 6.0 * n_params * tokens_per_epoch * epochs * runs
    seconds = flops / (GPUS[gpu] * 1e12 * UTILISATION)
    return {"gpu": gpu, "basis": f"FLOP model: 6 x params x tokens, {GPUS[gpu]:g} TFLOP/s "
            f"peak x {UTILISATION:.0%} assumed utilisation (not measured; a lower bound for small "
            "models, which data loading and kernel launches bound, not FLOPs)",
            "projected_seconds": float(f"{seconds:.3g}"),
            "projected_usd": float(f"{seconds / 3600 * usd_per_hour:.3g}")}


PODS = {"1x16": 16, "4x16": 64, "16x16": 256}
"""Named CPU pod sizes for generation (machines x cores; a Dask cluster past one machine,
``runtime.cluster``): the generator is one process per core, shards independent."""
CORE_HOUR_USD = 0.04
"""Assumed price of one CPU core for an hour (a stated assumption, not a quote)."""


def generation_rate(patients: int = 3) -> float:
    """Patients per second per core, measured: ``patients`` generated by one process."""
    import tempfile

    from ..data.synthesize import generate_cohort

    d = load_params().data
    with tempfile.TemporaryDirectory(prefix="ehrseq-estimate-") as tmp:
        t0 = time.perf_counter()
        generate_cohort(tmp, patients, d.seed, d.reference_date, d.state, d.city, workers=1,
                        progress=False)
        return patients / (time.perf_counter() - t0)


def project_corpus(n: int, rate: float, pretrain: dict, epochs: int, gpu: str | None,
                   usd_per_hour: float, usd_per_core_hour: float = CORE_HOUR_USD) -> dict:
    """A corpus of ``n`` patients: generation hours and cost on every pod of :data:`PODS` at
    ``rate`` patients/s/core, and pre-training per epoch from ``pretrain`` (an
    :func:`estimate` of ``behrt_pretrain``: its step time and patients per step), on this
    device and, with ``gpu``, by the FLOP model."""
    out = {"corpus_patients": n, "generation_rate_per_core": round(rate, 3)}
    for pod, cores in PODS.items():
        hours = n / (rate * cores) / 3600
        out[f"generation_hours_{pod}"] = float(f"{hours:.3g}")
        out[f"generation_usd_{pod}"] = float(f"{hours * cores * usd_per_core_hour:.3g}")
    steps = n / pretrain["batch_size"]
    here = pretrain["seconds_per_step"] * steps * epochs
    out["pretrain_seconds_here"] = float(f"{here:.3g}")
    if gpu:
        tokens = pretrain["tokens_per_batch"] / pretrain["batch_size"] * n
        p = project(pretrain["params"], tokens, epochs, 1, gpu, usd_per_hour)
        out.update({f"pretrain_{k}": v for k, v in p.items()})
    out["basis"] = (f"generation: measured per core, x cores, ${usd_per_core_hour}/core-hour "
                    f"assumed; pre-training: {epochs} epochs, measured step time x steps")
    return out


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
    dev = resolve_device(device)
    has_visits = np.flatnonzero(seqs.n_visits > 0)
    rng = np.random.default_rng(0)
    idx = rng.choice(has_visits, size=min(bs, has_visits.size), replace=False)
    if params.runtime.threads:
        torch.set_num_threads(params.runtime.threads)
    ds = SequenceDataset(seqs, idx, seqs.n_visits[idx], np.full(idx.size, 100.0),
                         np.ones(idx.size, int), cuts=CUTS,
                         max_visits=params.outcome.history.max_visits)
    model, loss_fn, data = MODELS[model_name](params, seqs, ds)
    model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = data[np.arange(idx.size)].to(dev)
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
        "cores": os.cpu_count(), "basis": f"measured: {steps} steps on {dev}",
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m ehrseq.ops.estimate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=[*sorted(MODELS), "all"], default="lstm")
    ap.add_argument("--size", choices=list(SIZES), default="small")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--sequences", default="data/processed/sequences")
    ap.add_argument("--patients", type=int, default=1000, help="toy cohort size without data")
    ap.add_argument("--gpu", choices=sorted(GPUS), help="project a grid onto this GPU")
    ap.add_argument("--runs", type=int, default=1, help="trainings in the planned grid")
    ap.add_argument("--epochs", type=int, help="epochs per training (default train.epochs)")
    ap.add_argument("--usd-per-hour", type=float, help="default report.gpu_hourly_usd")
    ap.add_argument("--corpus", type=int, nargs="+", metavar="N",
                    help="project generating and pre-training on a corpus of N patients")
    ap.add_argument("--generate", type=int, default=3, help="patients timed for the rate")
    a = ap.parse_args(argv)
    params = load_params()
    if a.corpus:
        if min(a.corpus) < 1:
            raise SystemExit(f"--corpus: {a.corpus}: patient counts must be >= 1")
        pre = estimate("behrt_pretrain", a.size, a.batch_size, a.device, a.steps, a.sequences,
                       a.patients)
        rate = generation_rate(a.generate)
        epochs = a.epochs or params.pretrain.epochs or params.train.epochs
        for n in a.corpus:
            r = project_corpus(n, rate, pre, epochs, a.gpu,
                               a.usd_per_hour or params.report.gpu_hourly_usd)
            width = max(map(len, r))
            for k, v in r.items():
                print(f"{k:<{width}}  {v:,}" if isinstance(v, int) else f"{k:<{width}}  {v}")
            print()
        return
    for name in sorted(MODELS) if a.model == "all" else [a.model]:
        r = estimate(name, a.size, a.batch_size, a.device, a.steps, a.sequences, a.patients)
        r["planned_cpu_or_device_seconds"] = round(
            r["epoch_seconds"] * (a.epochs or params.train.epochs) * a.runs, 1)
        if a.gpu:
            tokens = r["tokens_per_batch"] / r["batch_size"] * r["train_patients"]
            r.update(project(r["params"], tokens, a.epochs or params.train.epochs, a.runs,
                             a.gpu, a.usd_per_hour or params.report.gpu_hourly_usd))
        width = max(map(len, r))
        for k, v in r.items():
            print(f"{k:<{width}}  {v:,}" if isinstance(v, int) else f"{k:<{width}}  {v}")
        print()


if __name__ == "__main__":
    main()
