"""Disease-trajectory model: for every target and horizon, P(onset within h days of the landmark).

An encoder turns the visits up to the landmark into one vector; a linear head gives, per
target ``t`` and horizon interval ``k`` (``(0, h_1], (h_1, h_2], ...``), a logistic hazard
``q_tk = sigmoid(logit_tk)``, the probability of onset in interval ``k`` given none before.
Then ``P(onset within h_k) = 1 - prod_{j<=k} (1 - q_tj)``, so ``P(30) <= P(90) <= P(365)``
holds by construction for any weights. Training minimises the binary cross-entropy of these
probabilities against the multi-horizon labels, ignoring masked (NaN) labels
(:func:`masked_bce`), computed in log space so that it stays finite for extreme logits.

Encoders (``trajectory.encoder``) are registered in :data:`ENCODERS`:

- ``lstm``: the survival LSTM's encoder, reused as is: a
  :class:`~ehrseq.models.lstm_survival.DiscreteTimeSurvivalLSTM` whose head is replaced by the
  identity (same visit encoding, same LSTM, same dropout), so its weights load from
  ``models/train_survival`` (:meth:`LSTMEncoder.load_survival`).
- ``behrt``: the BEHRT encoder (:class:`~ehrseq.models.behrt.BEHRT`) on
  ``behrt_inputs(batch, max_len)`` (the fine-tuning input layout), its final ``[CLS]`` state;
  dimensions in ``TrajectoryConfig.behrt``; the stage loads the pre-trained encoder
  (``models/pretrain_behrt``) into it (:meth:`BEHRTEncoder.load_pretrained`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from ..data.tensors import Batch, SequenceDataset
from ..io import InputError
from ..params import ModelParams
from .behrt import BEHRT, BEHRTConfig, behrt_config, behrt_inputs
from .lstm_survival import DiscreteTimeSurvivalLSTM, LSTMConfig, lstm_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrajectoryConfig:
    vocab_size: int
    targets: tuple[str, ...]
    horizons: tuple[int, ...]
    encoder: str = "lstm"
    embed_dim: int = 64
    hidden_dim: int = 128
    layers: int = 1
    dropout: float = 0.1
    size: str = "small"
    pool: str = "sum"           # the LSTM encoder's visit pooling and time (model.lstm.*)
    time: str = "days"
    values: bool = False        # model.<encoder>.values
    value_deltas: bool = False  # model.lstm.value_deltas (the LSTM encoder)
    model_class: str = "ehrseq.models.trajectory.DiseaseTrajectoryModel"
    behrt: dict | None = None   # BEHRTConfig fields (encoder ``behrt``)

    @property
    def n_targets(self) -> int:
        return len(self.targets)

    @property
    def n_horizons(self) -> int:
        return len(self.horizons)


def trajectory_config(params: ModelParams, vocab_size: int, targets, horizons,
                      encoder: str = "lstm", behrt: BEHRTConfig | dict | None = None,
                      values: bool = False, value_deltas: bool = False) -> TrajectoryConfig:
    """Encoder dimensions from the ``model.size`` preset and ``model.lstm`` overrides (dropout:
    ``model.dropout``; ``model.lstm.dropout`` and ``weight_decay`` are the survival LSTM's);
    for the ``behrt`` encoder ``behrt`` (e.g. the pre-trained model's config) or the
    ``model.behrt`` preset; ``values``, ``value_deltas`` (the LSTM encoder's): the model's
    params checked against the data."""
    c = lstm_config(params, vocab_size, n_bins=1, values=values,
                    value_deltas=value_deltas and encoder == "lstm")
    if encoder == "behrt":
        behrt = behrt or behrt_config(params, vocab_size, values=values)
        behrt = {**(asdict(behrt) if isinstance(behrt, BEHRTConfig) else behrt),
                 "n_bins": 0, "model_class": "ehrseq.models.behrt.BEHRT"}
    else:
        behrt = None
    return TrajectoryConfig(vocab_size=vocab_size, targets=tuple(str(t) for t in targets),
                            horizons=tuple(sorted(int(h) for h in horizons)), encoder=encoder,
                            embed_dim=c.embed_dim, hidden_dim=c.hidden_dim, layers=c.layers,
                            dropout=params.dropout, size=c.size, pool=c.pool, time=c.time,
                            values=values, value_deltas=c.value_deltas, behrt=behrt)


class LSTMEncoder(nn.Module):
    """The survival LSTM without its head: ``forward(batch)`` gives the top layer's state at
    the landmark visit (after dropout), ``[B, hidden_dim]``."""

    def __init__(self, c: TrajectoryConfig):
        super().__init__()
        self.net = DiscreteTimeSurvivalLSTM(LSTMConfig(
            vocab_size=c.vocab_size, n_bins=1, embed_dim=c.embed_dim, hidden_dim=c.hidden_dim,
            layers=c.layers, dropout=c.dropout, size=c.size, pool=c.pool, time=c.time,
            values=c.values, value_deltas=c.value_deltas))
        self.net.head = nn.Identity()
        self.out_dim = c.hidden_dim

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.net(batch)

    def load_survival(self, state: dict[str, torch.Tensor]) -> None:
        """Load a ``DiscreteTimeSurvivalLSTM`` state dict (its head is dropped); raises
        ``ValueError`` naming the tensor whose shape differs."""
        own = self.net.state_dict()
        enc = {k: v for k, v in state.items() if not k.startswith("head.")}
        missing = sorted(set(own) - set(enc))
        if missing:
            raise ValueError(f"survival weights lack {missing}")
        for k, v in enc.items():
            if k in own and own[k].shape != v.shape:
                raise ValueError(f"survival weight {k} has shape {tuple(v.shape)}, the "
                                 f"trajectory encoder needs {tuple(own[k].shape)}")
        self.net.load_state_dict(enc, strict=False)


class BEHRTEncoder(nn.Module):
    """BEHRT on the landmark input: ``forward(batch)`` gives the final ``[CLS]`` state (after
    dropout), ``[B, hidden]`` — what the BEHRT survival head reads."""

    def __init__(self, c: TrajectoryConfig):
        super().__init__()
        if not c.behrt:
            raise ValueError("trajectory encoder 'behrt' needs TrajectoryConfig.behrt")
        self.net = BEHRT(BEHRTConfig(**c.behrt))
        self.drop = nn.Dropout(c.dropout)
        self.out_dim = self.net.config.hidden

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.drop(self.net(behrt_inputs(batch, self.net.config.max_len))[:, 0])

    def load_pretrained(self, state: dict[str, torch.Tensor]) -> None:
        """Load a BEHRT encoder state dict (``BEHRTPretrain.encoder``); raises ``ValueError``
        naming a tensor whose shape differs."""
        own = self.net.state_dict()
        for k, v in state.items():
            if k in own and own[k].shape != v.shape:
                raise ValueError(f"pre-trained weight {k} has shape {tuple(v.shape)}, the "
                                 f"trajectory encoder needs {tuple(own[k].shape)}")
        self.net.load_state_dict(state)


ENCODERS: dict[str, Callable[[TrajectoryConfig], nn.Module]] = {"lstm": LSTMEncoder,
                                                                 "behrt": BEHRTEncoder}
"""name → factory(config) of a module with ``out_dim`` mapping a Batch to ``[B, out_dim]``."""


def build_encoder(c: TrajectoryConfig) -> nn.Module:
    if c.encoder not in ENCODERS:
        raise ValueError(
            f"trajectory.encoder {c.encoder!r} has no implementation; available: "
            f"{sorted(ENCODERS)}")
    return ENCODERS[c.encoder](c)


def cumulative_log_survival(logits: torch.Tensor) -> torch.Tensor:
    """``log S_k = sum_{j<=k} log(1 - sigmoid(logit_j))`` along the last axis (<= 0,
    non-increasing in k)."""
    return -torch.cumsum(F.softplus(logits.float()), dim=-1)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, stable at both ends (Mächler 2012)."""
    x = x.clamp(max=-1e-7)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


class DiseaseTrajectoryModel(nn.Module):
    """Encoder + multi-horizon hazard head; ``forward(batch)`` gives interval hazard logits
    ``[B, T, H]``, :meth:`predict_proba` the cumulative probabilities ``[B, T, H]``."""

    def __init__(self, config: TrajectoryConfig):
        super().__init__()
        self.config = config
        self.encoder = build_encoder(config)
        self.head = nn.Linear(self.encoder.out_dim, config.n_targets * config.n_horizons)

    @classmethod
    def from_config(cls, config: dict | TrajectoryConfig) -> DiseaseTrajectoryModel:
        if isinstance(config, dict):
            names = {f.name for f in fields(TrajectoryConfig)}
            config = {k: v for k, v in config.items() if k in names}
            config = TrajectoryConfig(**{**config, "targets": tuple(config["targets"]),
                                         "horizons": tuple(config["horizons"])})
        return cls(config)

    def config_dict(self) -> dict:
        return asdict(self.config)

    def forward(self, batch: Batch) -> torch.Tensor:
        z = self.encoder(batch)
        return self.head(z).view(-1, self.config.n_targets, self.config.n_horizons)

    @torch.no_grad()
    def predict_proba(self, batch: Batch) -> torch.Tensor:
        """P(onset within each horizon) ``[B, T, H]``, non-decreasing along H."""
        return -torch.expm1(cumulative_log_survival(self(batch)))


def masked_bce(logits: torch.Tensor, labels: torch.Tensor,
               pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean BCE of ``P(within h) = 1 - S_h`` over the known labels (NaN = masked: no loss, no
    gradient). ``pos_weight`` ``[T, H]`` multiplies the positive terms. Returns 0 (with a
    graph) when a batch has no known label."""
    log_s = cumulative_log_survival(logits)
    log_p = _log1mexp(log_s)
    known = ~torch.isnan(labels)
    y = torch.nan_to_num(labels.float(), nan=0.0)
    pos_term = y * log_p
    if pos_weight is not None:
        pos_term = pos_term * pos_weight.to(pos_term.device, pos_term.dtype)
    nll = -(pos_term + (1.0 - y) * log_s)
    nll = torch.where(known, nll, torch.zeros_like(nll))
    return nll.sum() / known.sum().clamp(min=1)


def make_loss(pos_weight: torch.Tensor | None = None):
    """Loss function for :func:`ehrseq.train.loop.fit` (calls ``model`` so DDP wrappers work)."""

    def trajectory_loss(model: nn.Module, batch: TrajectoryBatch) -> torch.Tensor:
        return masked_bce(model(batch), batch.labels, pos_weight)

    return trajectory_loss


# --------------------------------------------------------------------------- data

@dataclass
class TrajectoryBatch(Batch):
    """A :class:`Batch` with multi-horizon labels ``labels`` float32 ``[B, T, H]`` (NaN =
    masked)."""

    labels: torch.Tensor | None = None

    def _map(self, fn) -> TrajectoryBatch:
        return TrajectoryBatch(**{f.name: None if (v := getattr(self, f.name)) is None else fn(v)
                                  for f in fields(self)})


class TrajectoryDataset(SequenceDataset):
    """Patients at their landmark (inputs: the last ``max_visits`` of the first
    ``landmark_visits`` visits) with labels
    ``[n, T, H]``; serves :class:`TrajectoryBatch` through ``make_loader``."""

    def __init__(self, seqs, index, landmark_visits, labels=None, max_visits: int | None = None):
        super().__init__(seqs, index, landmark_visits, max_visits=max_visits)
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.float32)
        if self.labels is not None and len(self.labels) != len(self.index):
            raise ValueError("labels and index differ in length")

    def __getitem__(self, rows) -> TrajectoryBatch:
        batch = super().__getitem__(rows)
        out = TrajectoryBatch(**{f.name: getattr(batch, f.name) for f in fields(Batch)})
        if self.labels is not None:
            out.labels = self.labels[batch.rows]
        return out


def init_from_survival(model: DiseaseTrajectoryModel, vocab: dict,
                       survival_model: Path = Path("models/train_survival")) -> bool:
    """Load the survival LSTM's encoder weights when ``survival_model`` exists."""
    SURVIVAL_MODEL = survival_model
    weights = SURVIVAL_MODEL / "model.safetensors"
    if not weights.exists():
        log.warning("trajectory.init_from_survival: %s missing; training from random weights",
                    weights)
        return False
    saved = json.loads((SURVIVAL_MODEL / "vocab.json").read_text())
    if saved.get("tokens") != vocab["tokens"]:
        raise InputError(f"{SURVIVAL_MODEL}/vocab.json differs from the current sequences "
                         "vocabulary; re-run train_survival or set init_from_survival: false")
    try:
        model.encoder.load_survival(load_file(str(weights)))
    except ValueError as err:
        raise InputError(f"{weights}: {err}; train_survival and train_trajectory must use the "
                         "same model.size and model.lstm") from None
    return True


def pos_weights(labels: np.ndarray, mode) -> torch.Tensor | None:
    if mode is None:
        return None
    if mode != "auto":
        return torch.full(labels.shape[1:], float(mode))
    known = ~np.isnan(labels)
    pos = (np.nan_to_num(labels) > 0).sum(0)
    ratio = np.where(pos > 0, (known.sum(0) - pos) / np.maximum(pos, 1), 1.0)
    return torch.as_tensor(np.clip(ratio, 1.0, 100.0), dtype=torch.float32)
