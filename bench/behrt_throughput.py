"""Training throughput of our BEHRT against Hugging Face BertForMaskedLM of the same size.

One training step = forward + backward + AdamW step of masked-code prediction on a batch,
timed after warm-up (CUDA synchronised, bf16 autocast on CUDA). Rows:

- ``hf-bert``: ``BertForMaskedLM`` from a ``BertConfig`` of the same dimensions (no download,
  ``attn_implementation="sdpa"``), the batch padded to ``--length`` as HF pipelines do;
- ``behrt-padded``: our model on that same padded layout (the kernels alone);
- ``behrt-bucketed``: our model on the same patients grouped as our loaders group them
  (``BucketBatchSampler``: a pool of ``--pool`` batches sorted by length, then cut), each
  batch only as wide as its longest patient: what length bucketing saves;
- ``behrt-rotary``: that bucketed run with ``model.behrt.rotary`` (queries and keys rotated by
  days before the landmark in every layer): what rotary attention costs (``vs_bucketed``).

A round is one optimizer step per batch of the pool (the same patients for every row); step
times are the fastest of ``--rounds`` rounds in which the four run in turn (on a shared
machine load only ever slows a round down, so the fastest is the least disturbed estimate).

Throughput counts real (non-padding) tokens. ``data ms`` is the time to build the batch from
the sequences arrays (gather, layout, masking) in this process; ``data share`` is its share of
data + step time when loading is not overlapped (``runtime.num_workers: 0``). Attention dropout
is 0 in both models (ours never uses it; it forces the unfused attention path).

    python bench/behrt_throughput.py            # BEHRT-large, length 512, batch 64
    python bench/behrt_throughput.py --quick    # tiny dimensions: finishes on a CPU
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

from ehrseq.data.tensors import Sequences
from ehrseq.models.behrt import BEHRTBatch, BEHRTConfig
from ehrseq.models.pretraining import BEHRTPretrain, PretrainDataset, pretrain_loss
from ehrseq.params import BEHRT_SIZES

CODES_PER_VISIT = (2, 6)  # uniform, so about 5 tokens a visit with its [SEP]


def cohort(n: int, vocab: int, length: int, pad_frac: float, seed: int = 0) -> Sequences:
    """Patients whose token counts are uniform on ``[length * (1 - 2 pad_frac), length]``:
    padded to ``length`` a batch is about ``pad_frac`` padding."""
    rng = np.random.default_rng(seed)
    want = rng.uniform(length * (1 - 2 * pad_frac), length, n)
    n_vis = np.maximum(1, np.round((want - 1) / (sum(CODES_PER_VISIT) / 2 + 1))).astype(int)
    owner = np.repeat(np.arange(n), n_vis)
    n_codes = rng.integers(CODES_PER_VISIT[0], CODES_PER_VISIT[1] + 1, len(owner))
    po = np.concatenate([[0], np.cumsum(n_vis)])
    t = 15_000 + 30.0 * (np.arange(len(owner)) - po[owner])
    specials = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    return Sequences(
        codes=rng.integers(5, vocab, int(n_codes.sum())).astype(np.int32),
        visit_offsets=np.concatenate([[0], np.cumsum(n_codes)]), patient_offsets=po,
        visit_time=t, visit_age=(20 + (t - 15_000) / 365.25).astype(np.float32),
        patients=pd.DataFrame({"patient": np.arange(n).astype(str), "split": "train",
                               "n_visits": n_vis}),
        vocab={"tokens": list(specials) + [f"C{i}" for i in range(5, vocab)],
               "counts": [0] * vocab, "specials": specials})


def padded(x: BEHRTBatch, length: int) -> BEHRTBatch:
    """The batch padded on the right to ``length`` (what HF's padding='max_length' gives)."""
    def pad(t, value=0):
        return torch.nn.functional.pad(t, (0, length - t.shape[1]), value=value)

    return BEHRTBatch(tokens=pad(x.tokens), age=pad(x.age), segment=pad(x.segment),
                      position=pad(x.position), mask=pad(x.mask), rows=x.rows,
                      visit_back=pad(x.visit_back), values=pad(x.values),
                      time=torch.nn.functional.pad(x.time, (0, 0, 0, length - x.time.shape[1])),
                      mlm_labels=pad(x.mlm_labels, -100), has_next=x.has_next,
                      next_visit=x.next_visit)


def timed(steps: dict, device, warmup: int, n: int) -> dict[str, float]:
    """Fastest seconds per call of each function over ``n`` rounds run round-robin (load
    from other processes only ever slows a call down, so the minimum is the least disturbed
    estimate, as in ``timeit``; the round-robin order shares any drift alike)."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        for fn in steps.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(n):
        for name, fn in steps.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: min(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    h, layers, heads, inter, _ = BEHRT_SIZES["large"]
    ap.add_argument("--hidden", type=int, default=h)
    ap.add_argument("--layers", type=int, default=layers)
    ap.add_argument("--heads", type=int, default=heads)
    ap.add_argument("--intermediate", type=int, default=inter)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--pad-frac", type=float, default=0.37)
    ap.add_argument("--pool", type=int, default=4, help="batches per round (a bucketing pool)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1, help="rounds before timing")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="tiny dimensions (CPU, < 1 minute)")
    a = ap.parse_args()
    if a.quick:
        a.hidden, a.layers, a.heads, a.intermediate = 128, 2, 4, 512
        a.length, a.batch, a.vocab, a.rounds, a.warmup = 256, 16, 1000, 8, 1
    from transformers import BertConfig, BertForMaskedLM

    device = torch.device(a.device if a.device != "auto" else
                          "cuda" if torch.cuda.is_available() else "cpu")
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    torch.manual_seed(0)
    seqs = cohort(a.batch * a.pool, a.vocab, a.length, a.pad_frac)
    ds = PretrainDataset(seqs, np.arange(seqs.n_patients), a.length, cut=False)
    shuffled = np.array_split(np.random.default_rng(0).permutation(seqs.n_patients), a.pool)
    bucketed = np.array_split(np.argsort(ds.lengths, kind="stable"), a.pool)

    def load(groups, repeats: int = 3):
        """The pool's batches and the seconds to build one (gather, layout, masking):
        the fastest of ``repeats`` builds, like the steps."""
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            batches = [ds[(0, rows)] for rows in groups]
            best = min(best, time.perf_counter() - t0)
        return batches, best / len(groups)

    (plain, data_s), (sorted_, data_sorted_s) = load(shuffled), load(bucketed)
    wide = [padded(b, a.length).to(device) for b in plain]
    narrow = [b.to(device) for b in sorted_]
    real = sum(b.n_tokens for b in plain)

    ours, rotary = (BEHRTPretrain(BEHRTConfig(
        vocab_size=a.vocab, hidden=a.hidden, layers=a.layers, heads=a.heads,
        intermediate=a.intermediate, max_len=a.length, rotary=r)).to(device) for r in (False, True))
    hf = BertForMaskedLM(BertConfig(
        vocab_size=a.vocab, hidden_size=a.hidden, num_hidden_layers=a.layers,
        num_attention_heads=a.heads, intermediate_size=a.intermediate,
        max_position_embeddings=a.length, type_vocab_size=2, attention_probs_dropout_prob=0.0,
        attn_implementation="sdpa")).to(device)
    fused = device.type == "cuda"
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4, fused=fused)
    opt_rotary = torch.optim.AdamW(rotary.parameters(), lr=1e-4, fused=fused)
    opt_hf = torch.optim.AdamW(hf.parameters(), lr=1e-4, fused=fused)

    def steps_hf():
        for b in wide:
            with amp:
                loss = hf(input_ids=b.tokens, attention_mask=b.mask.long(),
                          token_type_ids=b.segment, labels=b.mlm_labels).loss
            loss.backward()
            opt_hf.step()
            opt_hf.zero_grad(set_to_none=True)

    def steps_ours(batches, model=ours, opt=opt_ours):
        for b in batches:
            with amp:
                loss = pretrain_loss(model, b, 1.0, 0.0)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    runs = {  # name: (one round = the pool's steps, token slots computed, data s/step, model)
        "hf-bert": (steps_hf, len(wide) * a.batch * a.length, data_s, hf),
        "behrt-padded": (lambda: steps_ours(wide), len(wide) * a.batch * a.length, data_s, ours),
        "behrt-bucketed": (lambda: steps_ours(narrow), sum(b.tokens.numel() for b in narrow),
                           data_sorted_s, ours),
        "behrt-rotary": (lambda: steps_ours(narrow, rotary, opt_rotary),
                         sum(b.tokens.numel() for b in narrow), data_sorted_s, rotary),
    }
    peak = {}
    for name, (fn, *_) in runs.items():   # peak memory of each alone (CUDA)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        fn()
        peak[name] = torch.cuda.max_memory_allocated(device) / 2**30 \
            if device.type == "cuda" else float("nan")
    best = timed({name: r[0] for name, r in runs.items()}, device, a.warmup, a.rounds)
    rows_out = []
    for name, (_, slots, data, model) in runs.items():
        step = best[name] / a.pool
        rows_out.append({
            "model": name, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "step_ms": 1e3 * step, "real_tokens_per_s": real / best[name],
            "padding_%": 100 * (1 - real / slots), "data_ms": 1e3 * data,
            "data_share_%": 100 * data / (data + step), "peak_mem_GB": peak[name]})
    df = pd.DataFrame(rows_out)
    df["vs_hf"] = df["real_tokens_per_s"] / df.loc[0, "real_tokens_per_s"]
    df["vs_bucketed"] = df["real_tokens_per_s"] / df.loc[2, "real_tokens_per_s"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name} ({torch.get_num_threads()} threads), torch {torch.__version__}; "
          f"hidden {a.hidden}, layers {a.layers}, heads {a.heads}, intermediate "
          f"{a.intermediate}, vocab {a.vocab}; {a.pool} batches of {a.batch} x length "
          f"{a.length}, {real} real tokens; fastest of {a.rounds} round-robin rounds after "
          f"{a.warmup}")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
