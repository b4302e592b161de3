"""The run's environment: seeding, run keys for checkpoints, parameter counts, peak memory
and the device's name for run statistics."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models.store import plain


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; with ``deterministic`` use deterministic kernels where
    PyTorch has them (a warning, not an error, where it has none)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)


def make_run_key(*parts: Any) -> str:
    """A short stable key from anything JSON-able (params, data hashes): the checkpoint
    folder of one run, so a changed configuration never resumes a stale checkpoint."""
    blob = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def fingerprint(*paths: str | Path, extra: bytes = b"") -> str:
    """SHA-256 of the files under ``paths`` (folders: their files, sorted by path) and
    ``extra``: part of a run key, so a changed input never resumes a stale checkpoint."""
    h = hashlib.sha256()
    files = sorted(f for p in map(Path, paths)
                   for f in ([p] if p.is_file() else p.iterdir()) if f.is_file())
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    h.update(extra)
    return h.hexdigest()


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all, trainable) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / (2**20 if platform.system() == "Darwin" else 2**10), "process_peak_rss"
    except ImportError:  # Windows
        return float("nan"), "unavailable"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()})"
