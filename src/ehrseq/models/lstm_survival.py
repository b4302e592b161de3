"""Discrete-time survival LSTM: visits in, a logistic hazard per time bin out.

Each visit becomes one vector of its code embeddings (``pool``, ``model.lstm.pool``: their
``mean``, their ``sum``, or ``attention``: a weighted sum whose weights a learnt score of each
code gives, softmax within the visit, so one blood-pressure code among 17 vitals can carry the
visit), concatenated with its time features: log1p of the gap in days since the previous visit,
age / 100 and, with ``time: days`` (``model.lstm.time``), log1p of the days before the landmark
(BEHRT's day-level inputs). With ``values`` (``model.lstm.values``) a numeric token's vector is its
code's embedding plus its normalised value times a learnt vector of the code (zero at the
start), pooled like the rest; with ``value_deltas`` (``model.lstm.value_deltas``) also its change
since the patient's previous value of that code in the window times another learnt vector (a
lab trend as a number, as a count model's last-value and mean features give it). An LSTM reads
the visits in order; its state at the last visit (the landmark) gives one hazard logit per time
bin, trained with :func:`ehrseq.models.losses.nll_logistic_hazard`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from ..data.tensors import Batch
from ..params import ModelParams, Params, TrainParams
from .losses import hazard_to_survival, nll_logistic_hazard

SIZE_PRESETS = {  # size: (embed_dim, hidden_dim, layers)
    "tiny": (32, 64, 1),
    "small": (64, 128, 1),
    "medium": (128, 256, 2),
    "large": (256, 512, 3),
}


@dataclass(frozen=True)
class LSTMConfig:
    vocab_size: int
    n_bins: int
    embed_dim: int = 64
    hidden_dim: int = 128
    layers: int = 1
    dropout: float = 0.1
    size: str = "small"
    pool: str = "sum"         # "mean" | "sum" | "attention" (model.lstm.pool)
    time: str = "days"        # "gap" | "days" (model.lstm.time)
    values: bool = False      # add value x a learnt vector per code (model.<lstm|behrt>.values)
    value_deltas: bool = False   # add value change x a learnt vector (model.lstm.value_deltas)
    model_class: str = "ehrseq.models.lstm_survival.DiscreteTimeSurvivalLSTM"


def lstm_config(params: ModelParams, vocab_size: int, n_bins: int,
                values: bool = False, value_deltas: bool = False) -> LSTMConfig:
    """The size preset of ``params.size`` with any ``params.lstm`` field that is set on top;
    ``values``, ``value_deltas``: the model's params checked against the data
    (:func:`ehrseq.data.tensors.uses_values`)."""
    embed, hidden, layers = SIZE_PRESETS[params.size]
    o = params.lstm
    return LSTMConfig(
        vocab_size=vocab_size, n_bins=n_bins,
        embed_dim=o.embed_dim or embed, hidden_dim=o.hidden_dim or hidden,
        layers=o.layers or layers, size=params.size, pool=o.pool,
        dropout=params.dropout if o.dropout is None else o.dropout,
        time=o.time, values=values, value_deltas=value_deltas,
    )


def lstm_train(params: Params) -> TrainParams:
    """``train`` with the LSTM's own weight decay (``model.lstm.weight_decay``) when it is set."""
    wd = params.model.lstm.weight_decay
    return params.train if wd is None else params.train.model_copy(update={"weight_decay": wd})


class DiscreteTimeSurvivalLSTM(nn.Module):
    """LSTM over visits with a logistic-hazard head; ``forward(batch)`` gives logits [B, K]."""

    POOLS = ("mean", "sum", "attention")
    TIMES = {"gap": 2, "days": 3}   # time features per visit

    def __init__(self, config: LSTMConfig):
        super().__init__()
        self.config = config
        c = config
        if c.pool not in self.POOLS or c.time not in self.TIMES:
            raise ValueError(f"LSTM pool {c.pool!r}, time {c.time!r}; accepted: pool in "
                             f"{list(self.POOLS)}, time in {list(self.TIMES)}")
        if c.pool == "attention":
            self.embed = nn.Embedding(c.vocab_size, c.embed_dim, padding_idx=0)
            self.score = nn.Linear(c.embed_dim, 1, bias=False)   # softmax ignores a bias
        else:
            self.embed = nn.EmbeddingBag(c.vocab_size, c.embed_dim, mode=c.pool, padding_idx=0)
        if c.values:
            self.value = nn.Embedding(c.vocab_size, c.embed_dim)
            nn.init.zeros_(self.value.weight)
        if c.value_deltas:
            self.delta = nn.Embedding(c.vocab_size, c.embed_dim)
            nn.init.zeros_(self.delta.weight)
            # token id -> numeric code (-1: none), saved with the weights: set_value_codes
            self.register_buffer("value_code", torch.full((c.vocab_size,), -1, dtype=torch.long))
        self.drop = nn.Dropout(c.dropout)
        self.lstm = nn.LSTM(c.embed_dim + self.TIMES[c.time], c.hidden_dim, c.layers,
                            batch_first=True, dropout=c.dropout if c.layers > 1 else 0.0)
        self.head = nn.Linear(c.hidden_dim, c.n_bins)

    @classmethod
    def from_config(cls, config: dict | LSTMConfig) -> DiscreteTimeSurvivalLSTM:
        return cls(config if isinstance(config, LSTMConfig) else LSTMConfig(**config))

    def config_dict(self) -> dict:
        return asdict(self.config)

    def numbers(self, batch: Batch) -> list[tuple[nn.Embedding, torch.Tensor]]:
        """(learnt vectors per code, one number per token) whose products each code's
        embedding adds: its value (``values``), its change since the previous value
        (``value_deltas``)."""
        c, out = self.config, []
        if c.values:
            out.append((self.value, batch.values))
        if c.value_deltas:
            out.append((self.delta, batch.value_deltas(self.value_code)))
        return out

    def pool_codes(self, batch: Batch) -> torch.Tensor:
        """One vector per visit ``[B, V, embed_dim]`` (``config.pool``)."""
        b, v = batch.visit_mask.shape
        c = self.config
        if c.pool != "attention":
            x = self.embed(batch.tokens, batch.bag_offsets)
            for vectors, w in self.numbers(batch):   # sum of w x vector over the visit's codes
                vx = F.embedding_bag(batch.tokens, vectors.weight, batch.bag_offsets,
                                     mode="sum", per_sample_weights=w.to(x.dtype))
                if c.pool == "mean":
                    vx = vx / batch.visit_counts.reshape(-1, 1).clamp(min=1).to(vx.dtype)
                x = x + vx
            return x.view(b, v, -1)
        codes = batch.padded_codes()                           # [B, V, C], 0 = padding
        e = self.embed(codes)
        for vectors, w in self.numbers(batch):
            e = e + batch.padded_codes(w).unsqueeze(-1) * vectors(codes)
        score = self.score(e).squeeze(-1).masked_fill(codes == 0, float("-inf"))
        w = torch.softmax(score, -1).nan_to_num(0.0)           # an empty visit: all zero
        return (w.unsqueeze(-1) * e).sum(-2)

    def encode_visits(self, batch: Batch) -> torch.Tensor:
        """Visit vectors ``[B, V, embed_dim + time features]``: pooled codes, then time."""
        codes = self.drop(self.pool_codes(batch))
        gaps = batch.gap_days.clamp(min=0) * batch.visit_mask
        feats = [torch.log1p(gaps) / 5, batch.age / 100]     # ~[0, 2] for gaps up to decades
        if self.config.time == "days":
            cum = gaps.cumsum(1)
            last = (batch.lengths - 1).clamp(min=0)[:, None].to(cum.device)
            feats.append(torch.log1p((cum.gather(1, last) - cum).clamp(min=0)) / 10)
        feats = torch.stack(feats, -1).to(codes.dtype)
        return torch.cat([codes, feats], -1) * batch.visit_mask.unsqueeze(-1)

    def forward(self, batch: Batch) -> torch.Tensor:
        x = self.encode_visits(batch)
        packed = pack_padded_sequence(x, batch.lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        return self.head(self.drop(h[-1]))  # the top layer's state at each landmark visit

    @torch.no_grad()
    def predict_survival(self, batch: Batch) -> torch.Tensor:
        """Survival probabilities at the bin edges ``[B, K+1]``, starting with S(0) = 1."""
        return hazard_to_survival(self(batch))

    @torch.no_grad()
    def predict_risk(self, batch: Batch) -> torch.Tensor:
        """Cumulative hazard ``-log S`` at the last edge (higher = earlier event)."""
        return F.softplus(self(batch).float()).sum(1)  # -log(1 - h) = softplus(logit)


def survival_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Loss function for :func:`ehrseq.train.loop.fit` (calls ``model`` so DDP wrappers work)."""
    return nll_logistic_hazard(model(batch).float(), batch.target_bin, batch.target_event)
