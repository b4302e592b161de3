"""Running a model on batches: the device, moving batches, autocast, batched prediction in
dataset row order and the mean loss over a loader. Training, evaluation and embedding all use
these; none of them needs the training loop to predict."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; an explicit device must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device: 'cuda' requested but CUDA is not available "
                           "(accepted here: auto, cpu)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("runtime.device: 'mps' requested but MPS is not available "
                           "(accepted here: auto, cpu)")
    return torch.device(name)


def move_to(obj: Any, device: torch.device) -> Any:
    """Move a batch (an object with ``.to``, or dicts/lists/tuples of tensors) to ``device``."""
    nb = device.type == "cuda"
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=nb)
    if hasattr(obj, "to"):
        return obj.to(device, non_blocking=nb)
    if isinstance(obj, dict):
        return {k: move_to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to(v, device) for v in obj)
    return obj


def batch_counts(batch: Any) -> tuple[int, int]:
    """(patients, tokens) in a batch: ``n_patients``/``n_tokens`` attributes, else the first
    dimension of the first tensor."""
    n = getattr(batch, "n_patients", None)
    if n is None:
        first = next((t for t in (batch.values() if isinstance(batch, dict) else batch)
                      if isinstance(t, torch.Tensor)), None)
        n = int(first.shape[0]) if first is not None else 0
    return int(n), int(getattr(batch, "n_tokens", 0))


def autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()



@torch.no_grad()
def evaluate_loss(model: nn.Module, loader: Iterable, loss_fn: LossFn,
                  device: torch.device | None = None, amp: bool = True) -> float:
    """Mean of ``loss_fn`` over a loader, weighted by batch size, in eval mode."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float32, device=device)
    n = 0
    for batch in loader:
        batch = move_to(batch, device)
        size, _ = batch_counts(batch)
        with autocast(device, amp):
            total += loss_fn(model, batch).float() * size
        n += size
    model.train(was_training)
    return float(total.item()) / max(n, 1)


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, fn: Callable[[nn.Module, Any], torch.Tensor],
            n_rows: int | None = None, device: torch.device | None = None,
            amp: bool = True) -> np.ndarray:
    """``fn(model, batch)`` for every batch, put back in dataset row order (``batch.rows``)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows, outs = [], []
    for batch in loader:
        batch = move_to(batch, device)
        with autocast(device, amp):
            outs.append(fn(model, batch).float().cpu())
        rows.append(batch.rows.cpu())
    model.train(was_training)
    rows_t, out_t = torch.cat(rows), torch.cat(outs)
    n_rows = n_rows or int(rows_t.max()) + 1
    result = np.full((n_rows, *out_t.shape[1:]), np.nan, dtype=np.float32)
    result[rows_t.numpy()] = out_t.numpy()
    return result
