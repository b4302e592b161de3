"""Data-parallel training under torchrun (PyTorch DDP), and nothing when launched plainly.

``torchrun --nproc_per_node=N stages/train_survival.py`` sets RANK, WORLD_SIZE and LOCAL_RANK;
:func:`setup` then joins the process group (NCCL on CUDA, gloo on CPU), pins each rank to its
GPU, and every training stage passes ``rank``/``world_size`` to the loader (sharded batches)
and :func:`wrap` to ``fit`` (all-reduced gradients). Only rank 0 writes outputs and metrics.
``train.batch_size`` is per process: the global batch is batch_size x grad_accum x world_size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup() -> Dist:
    """Join the process group when launched by torchrun; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Dist(rank, world, local)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP around a model already on ``device`` (the ``wrap_model`` hook of ``fit``)."""
    if not (dist.is_available() and dist.is_initialized()):
        return model
    ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def single_node() -> bool:
    """Every rank on this machine (torchrun's LOCAL_WORLD_SIZE is WORLD_SIZE), so files rank 0
    writes (checkpoints) are there for the others to read."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world <= int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
