"""Model files: ``model.safetensors`` + ``config.json`` (with the class to rebuild it) +
``vocab.json``, written and read the same way by every stage. No pickle."""

from __future__ import annotations

import importlib
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model as _st_load_model
from safetensors.torch import save_model as _st_save_model
from torch import nn

from ..io import InputError


def plain(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    return obj


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def save_model(directory: str | Path, model: nn.Module, config: Any,
               vocab: dict | str | Path | None = None) -> None:
    """Write ``model.safetensors``, ``config.json`` (with ``model_class``) and ``vocab.json``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = dict(plain(config))
    config.setdefault("model_class", f"{type(model).__module__}.{type(model).__qualname__}")
    _st_save_model(model, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if isinstance(vocab, (str, Path)):
        shutil.copyfile(vocab, directory / "vocab.json")
    elif vocab is not None:
        (directory / "vocab.json").write_text(json.dumps(vocab))


def load_model(directory: str | Path, factory: Callable[[dict], nn.Module] | None = None,
               device: str | torch.device = "cpu") -> tuple[nn.Module, dict, dict | None]:
    """Rebuild a model saved by :func:`save_model`: (model, config, vocab or None).

    ``factory(config)`` builds the module; by default ``config["model_class"]`` is imported
    and its ``from_config(config)`` called."""
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    if factory is None:
        module, _, name = config["model_class"].rpartition(".")
        factory = getattr(importlib.import_module(module), name).from_config
    model = factory(config)
    _st_load_model(model, str(directory / "model.safetensors"), device=str(device))
    vocab_path = directory / "vocab.json"
    vocab = json.loads(vocab_path.read_text()) if vocab_path.exists() else None
    return model.to(device), config, vocab


def load_pretrained(directory: str | Path, stage: str, vocab: dict | None = None,
                    ) -> tuple[nn.Module, dict]:
    """:func:`load_model` of the model stage ``stage`` wrote, for a stage that starts from it:
    a missing model, or a vocabulary other than ``vocab`` (when given), is an ``InputError``
    naming the stage to (re-)run."""
    directory = Path(directory)
    if not (directory / "model.safetensors").exists():
        raise InputError(f"{directory}/model.safetensors: missing; run stage {stage}")
    model, config, saved = load_model(directory)
    if vocab is not None and saved is not None and saved.get("tokens") != vocab["tokens"]:
        raise InputError(f"{directory}/vocab.json: differs from the sequences vocabulary; "
                         f"re-run {stage}")
    return model, config
