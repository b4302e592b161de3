"""BEHRT: a pre-LN transformer encoder over ``[CLS] visit [SEP] visit [SEP] ...`` tokens.

Every token's embedding is the sum of the code's, the patient's age in whole years at the
visit, a visit segment (visits alternate 0/1) and a position: the visit's number (all codes of
a visit share it: codes within a visit have no order). ``time`` (``model.behrt.time``) sets how
the model reads time:

- ``years`` (the original BEHRT's design): positions count forward from the oldest visit in
  the window, so the landmark visit sits at a different position in every patient, and the
  only clock is age in whole years;
- ``days`` (default; after CEHR-BERT, CLMBR and CORE-BEHRT): positions count back from the
  landmark visit (position 1 is always the landmark's visit), and a continuous time
  embedding is added to every token: Time2Vec (a linear and K-1 periodic features, learnt
  frequencies) of log(1 + days before the landmark), log(1 + days since the previous visit)
  and age in decades, projected to the hidden size (:class:`TimeEmbedding`).
With ``rotary`` (``model.behrt.rotary``, CLMBR's design in femr) every attention head also
rotates its queries and keys by the token's days before the landmark, so two tokens' attention
depends on the days between them (:func:`rotary_angles`).
With ``values`` (``model.behrt.values``) a numeric token also adds its normalised value times a
learnt vector of its code (zero at the start): lab values as values, not only as bin tokens;
with ``value_deltas`` (``model.behrt.value_deltas``) also its change since the patient's
previous value of the same code in the input (0 for a first one) times another such vector: a
lab trend as a number, as the LSTM reads it. The model computes the changes itself from the
tokens and values it is given (a ``value_code`` buffer,
:func:`ehrseq.data.tensors.set_value_codes`), so a code masked to ``[MASK]`` in pre-training has
no change and the next value's change skips it.
Attention is our own module calling PyTorch's fused ``scaled_dot_product_attention`` through
plain ``nn.Linear`` projections (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``; FFN ``fc1``,
``fc2``), so LoRA adapters that peft puts on those layers really sit in the forward path.

:func:`behrt_inputs` turns a :class:`ehrseq.data.tensors.Batch` (flat codes per visit) into the
``[B, L]`` layout with index arithmetic; sequences longer than ``max_len`` keep their most
recent tokens. :class:`BEHRTSurvival` puts the discrete-time logistic-hazard head on ``[CLS]``
(``readout`` ``cls``) or on ``[CLS]`` beside the mean state of the landmark visit's tokens
(``cls_landmark``, ``finetune.readout``);
:func:`finetune_model` builds it for the modes full / lora / probe / scratch (probe:
:class:`BEHRTProbe`, whose frozen encoder stays in eval mode, dropout off).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.tensors import Batch, SequenceDataset, uses_values, value_changes
from ..io import InputError
from ..params import FINETUNE_MODES, FinetuneParams, ModelParams, behrt_dims
from .losses import hazard_to_survival, init_hazard_head, nll_logistic_hazard

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
N_SPECIAL = 5
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


@dataclass(frozen=True)
class BEHRTConfig:
    vocab_size: int
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    intermediate: int = 512
    max_len: int = 256
    dropout: float = 0.1
    max_age: int = 120        # age embedding rows: whole years 0..max_age-1 (clipped)
    time: str = "days"        # "years" | "days" (module docstring; model.behrt.time)
    values: bool = False      # add value x a learnt vector per code (model.<lstm|behrt>.values)
    value_deltas: bool = False   # add value change x a learnt vector (model.behrt.value_deltas)
    rotary: bool = False      # rotate queries and keys by days before the landmark
    n_bins: int = 0           # > 0: survival head with this many time bins
    readout: str = "cls"      # what the survival head reads (READOUTS; finetune.readout)
    tte_tasks: int = 0        # pre-training: MOTOR time-to-event tasks (codes); 0 = none
    tte_pieces: int = 0       # ... and the pieces of their piecewise-exponential hazards
    lab_codes: int = 0        # pre-training: numeric codes whose lab state [CLS] predicts
    size: str = "small"
    model_class: str = "ehrseq.models.behrt.BEHRTSurvival"


def behrt_config(params: ModelParams, vocab_size: int, n_bins: int = 0,
                 model_class: str = "ehrseq.models.behrt.BEHRTSurvival",
                 values: bool = False, value_deltas: bool = False) -> BEHRTConfig:
    """The preset of ``params.size`` with every ``params.behrt`` field that is set on top;
    ``values``, ``value_deltas``: the model's params checked against the data
    (:func:`ehrseq.data.tensors.uses_values`)."""
    dims = behrt_dims(params)   # validated by the params schema
    if dims["hidden"] % dims["heads"]:
        raise ValueError(f"model.behrt.heads: {dims['heads']} does not divide hidden "
                         f"{dims['hidden']}; accepted: a divisor of the hidden size")
    dropout = params.dropout if params.behrt.dropout is None else params.behrt.dropout
    if params.behrt.rotary and (dims["hidden"] // dims["heads"]) % 2:
        raise ValueError(f"model.behrt.rotary needs an even head size; hidden {dims['hidden']} "
                         f"/ heads {dims['heads']} is odd")
    return BEHRTConfig(vocab_size=vocab_size, n_bins=n_bins, dropout=dropout,
                       size=params.size, model_class=model_class, time=params.behrt.time,
                       rotary=params.behrt.rotary, values=values, value_deltas=value_deltas,
                       **dims)


def value_inputs(params: ModelParams, seqs) -> dict[str, bool]:
    """``values`` and ``value_deltas`` of ``params.behrt`` resolved on ``seqs``
    (:func:`ehrseq.data.tensors.uses_values`), as :func:`behrt_config` takes them."""
    return {f: uses_values(getattr(params.behrt, f), seqs, f"model.behrt.{f}")
            for f in ("values", "value_deltas")}


def check_pretrained(config: BEHRTConfig | dict, params: ModelParams, seqs, path) -> None:
    """A pre-trained BEHRT (``config``, from ``path``) against the stage that starts from it:
    its time and value inputs must be ``params.behrt``'s resolved on ``seqs`` and its vocabulary
    the sequences'; otherwise an :class:`InputError` naming the keys, before any training."""
    c = BEHRTConfig(**config) if isinstance(config, dict) else config
    for field, want in {"time": params.behrt.time, "rotary": params.behrt.rotary,
                        **value_inputs(params, seqs)}.items():
        key, given = f"model.behrt.{field}", getattr(params.behrt, field)
        if getattr(c, field) != want:
            here = f" ({want!r} on these sequences)" if given != want else ""
            raise InputError(f"{path}/config.json: {field} {getattr(c, field)!r}, but "
                             f"params.yaml {key} is {given!r}{here}; re-run pretrain_behrt "
                             f"(dvc repro) or set {key} to match")
    if c.vocab_size != seqs.vocab_size:
        raise InputError(f"{path}/config.json: vocab_size {c.vocab_size} differs from the "
                         f"sequences' {seqs.vocab_size}; re-run pretrain_behrt")


# --------------------------------------------------------------------------- inputs

@dataclass
class BEHRTBatch:
    """Model inputs ``[B, L]`` (``mask`` True at real tokens) plus optional targets."""

    tokens: torch.Tensor      # int64 token ids, [CLS] first, [SEP] closing every visit
    age: torch.Tensor         # float32 years at the token's visit
    segment: torch.Tensor     # int64 visit parity (0/1)
    position: torch.Tensor    # int64 visit number (0 = [CLS])
    mask: torch.Tensor        # bool
    rows: torch.Tensor        # int64 [B] dataset rows (to put predictions back)
    visit_back: torch.Tensor | None = None   # int64 visits before the landmark's (0 = it)
    time: torch.Tensor | None = None         # float32 [B, L, 3] log1p(days before the
    # landmark) / 10, log1p(days since the previous visit) / 10, age / 100 ([CLS]: 0, 0,
    # the landmark's age)
    values: torch.Tensor | None = None       # float32 [B, L] normalised value (0: none)
    mlm_labels: torch.Tensor | None = None   # int64 [B, L], -100 where not masked
    next_visit: torch.Tensor | None = None   # float32 [B, vocab] multi-hot of the next visit
    has_next: torch.Tensor | None = None     # bool [B]
    last_visit: torch.Tensor | None = None   # float32 [B, vocab] multi-hot of the last input visit
    tte_time: torch.Tensor | None = None     # float32 [B, tasks] years to each task code's next
    # occurrence after the input, or to the end of the record (censored)
    tte_event: torch.Tensor | None = None    # bool [B, tasks] the code occurred
    target_bin: torch.Tensor | None = None
    target_event: torch.Tensor | None = None

    @property
    def n_patients(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_tokens(self) -> int:
        """Real (non-padding) tokens: what throughput counts."""
        return int(self.mask.sum())

    def _map(self, fn) -> BEHRTBatch:
        return BEHRTBatch(**{f.name: None if (v := getattr(self, f.name)) is None else fn(v)
                             for f in fields(self)})

    def to(self, device, non_blocking: bool = False) -> BEHRTBatch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> BEHRTBatch:
        return self._map(lambda t: t.pin_memory())


def behrt_inputs(batch: Batch, max_len: int) -> BEHRTBatch:
    """``[CLS] codes [SEP] codes [SEP] ...`` as ``[B, L]`` tensors, ``L <= max_len``, keeping
    each patient's most recent ``max_len - 1`` tokens after ``[CLS]``; no loop per token."""
    b, v = batch.visit_counts.shape
    dev = batch.visit_counts.device
    per_visit = (batch.visit_counts + 1) * batch.visit_mask       # codes + [SEP]
    flat = per_visit.reshape(-1)
    n = int(flat.sum())
    bag = torch.repeat_interleave(torch.arange(b * v, device=dev), flat)
    within = torch.arange(n, device=dev) - (flat.cumsum(0) - flat)[bag]
    is_sep = within == batch.visit_counts.reshape(-1)[bag]
    codes = F.pad(batch.tokens, (0, 1))                           # index len(tokens) is valid
    at = batch.bag_offsets[bag] + within
    tok = torch.where(is_sep, SEP, codes[at])
    val = torch.where(is_sep, 0.0, F.pad(batch.values.float(), (0, 1))[at])
    row, vis = bag // v, bag % v
    length = per_visit.sum(1)
    keep = length.clamp(max=max_len - 1)
    col = 1 + torch.arange(n, device=dev) - (length.cumsum(0) - length)[row] - (length - keep)[row]
    sel = col >= 1
    row, vis, col, tok, val = row[sel], vis[sel], col[sel], tok[sel], val[sel]
    width = 1 + int(keep.max()) if b else 1
    tokens = torch.zeros(b, width, dtype=torch.long, device=dev)
    visit = torch.zeros(b, width, dtype=torch.long, device=dev)
    age = torch.zeros(b, width, dtype=torch.float32, device=dev)
    values = torch.zeros(b, width, dtype=torch.float32, device=dev)
    tokens[row, col], visit[row, col], values[row, col] = tok, vis, val
    age[row, col] = batch.age[row, vis].float()
    # day-level time: days from each visit to the landmark visit (the batch's last) and since
    # the visit before it, from the visits' gaps
    gaps = batch.gap_days.float().clamp(min=0) * batch.visit_mask
    last = (batch.lengths - 1).clamp(min=0)
    cum = gaps.cumsum(1)
    before = (cum.gather(1, last[:, None]) - cum).clamp(min=0)        # [B, V]
    time = torch.zeros(b, width, 3, dtype=torch.float32, device=dev)
    time[row, col, 0] = torch.log1p(before[row, vis]) / 10    # ~[0, 1]: up to 60 years
    time[row, col, 1] = torch.log1p(gaps[row, vis]) / 10
    time[row, col, 2] = batch.age[row, vis].float() / 100
    time[:, 0, 2] = batch.age.gather(1, last[:, None])[:, 0].float() / 100
    back = torch.zeros(b, width, dtype=torch.long, device=dev)
    back[row, col] = last[row] - vis
    tokens[:, 0], age[:, 0] = CLS, age[:, 1]
    mask = tokens != PAD
    position = torch.where(mask, visit - visit[:, 1:2] + 1, 0)
    position[:, 0] = 0
    segment = torch.where(position > 0, (position - 1) % 2, 0)
    return BEHRTBatch(tokens=tokens, age=age, segment=segment, position=position, mask=mask,
                      rows=batch.rows, visit_back=back, time=time, values=values)


def token_lengths(seqs, index, landmark_visits, max_len: int, input_visits=None) -> np.ndarray:
    """Tokens each patient's input takes (for length bucketing), capped at ``max_len``;
    ``input_visits``: the visit window (int or per row) read before the ``max_len`` cut."""
    po, vo = seqs.patient_offsets, seqs.visit_offsets
    last = np.asarray(po[index]) + np.asarray(landmark_visits)
    window = max_len - 1 if input_visits is None else np.minimum(input_visits, max_len - 1)
    first = np.maximum(np.asarray(po[index]), last - window)
    n = np.asarray(vo[last]) - np.asarray(vo[first]) + (last - first) + 1
    return np.minimum(n, max_len)


class BEHRTDataset:
    """A :class:`SequenceDataset` (inputs up to the landmark, survival targets) served as
    :class:`BEHRTBatch`; works with :func:`ehrseq.data.tensors.make_loader`."""

    def __init__(self, base: SequenceDataset, max_len: int):
        self.base, self.max_len = base, max_len
        self.lengths = token_lengths(base.seqs, base.index, base.landmark_visits, max_len,
                                     base.max_visits)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, rows) -> BEHRTBatch:
        batch = self.base[rows]
        out = behrt_inputs(batch, self.max_len)
        out.target_bin, out.target_event = batch.target_bin, batch.target_event
        return out


# --------------------------------------------------------------------------- modules

class SelfAttention(nn.Module):
    """Multi-head self-attention: our own projections, PyTorch's fused SDPA kernel. No dropout
    on the attention weights: it would force the unfused path that materialises ``[B, heads,
    L, L]`` (on CPU it took a quarter of a training step); dropout acts on the residuals."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.v_proj, self.out_proj = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, keep: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        b, length, h = x.shape

        def split(t):
            return t.view(b, length, self.heads, h // self.heads).transpose(1, 2)

        q, k = split(self.q_proj(x)), split(self.k_proj(x))
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        out = F.scaled_dot_product_attention(q, k, split(self.v_proj(x)),
                                             attn_mask=keep[:, None, None, :])
        return self.out_proj(out.transpose(1, 2).reshape(b, length, h))


def rotary_angles(days: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines and sines ``[B, 1, L, dim]`` of rotary embeddings driven by ``days`` ``[B, L]``
    (femr's CLMBR: frequencies ``10000 ** -linspace(0, 2, dim / 2)`` per day, from one
    radian a day to 1e-8; each frequency fills a pair of neighbouring dimensions)."""
    inv = 10000.0 ** -torch.linspace(0, 2, dim // 2, device=days.device)
    t = (days.float().unsqueeze(-1) * inv).repeat_interleave(2, -1)
    return t.cos().unsqueeze(1), t.sin().unsqueeze(1)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Each pair of neighbouring dimensions of ``x`` ``[B, heads, L, dim]`` rotated by its
    angle: ``q . k`` of two rotated vectors then depends on the difference of their days."""
    pair = torch.stack((-x[..., 1::2], x[..., ::2]), -1).flatten(-2)
    return x * cos + pair * sin


class EncoderLayer(nn.Module):
    """Pre-LN block: ``x + attn(ln(x))``, then ``x + fc2(gelu(fc1(ln(x))))``."""

    def __init__(self, c: BEHRTConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(c.hidden), nn.LayerNorm(c.hidden)
        self.attn = SelfAttention(c.hidden, c.heads)
        self.fc1, self.fc2 = nn.Linear(c.hidden, c.intermediate), nn.Linear(c.intermediate, c.hidden)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor, rope=None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), keep, rope))
        return x + self.drop(self.fc2(self.drop(F.gelu(self.fc1(self.ln2(x))))))


def init_weights(module: nn.Module) -> None:
    """Embeddings N(0, 0.02) as in BERT; linear layers keep PyTorch's fan-in scaled default,
    which trains small models much sooner than BERT's N(0, 0.02) everywhere (tested on toys)."""
    if isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)


class TimeEmbedding(nn.Module):
    """Time2Vec (Kazemi et al., 2019) of each of ``n_inputs`` continuous times: per input
    ``[w_0 t + b_0, sin(w_1 t + b_1), ..., sin(w_{k-1} t + b_{k-1})]`` with learnt ``w``, ``b``;
    all inputs' features together projected to ``hidden``, at the scale of the other
    embeddings (``SCALE``, their init std 0.02). The projection starts at zero, so time adds
    nothing at initialisation and grows as training finds it useful. At unit scale, Adam's
    steps grew its output past the code embeddings (N(0, 0.02)) within an epoch: every token
    of a visit then looked alike after LayerNorm, and pre-training on the typed toy cohort of
    tests/test_behrt.py stalled at validation loss 6.8 (3.9 at this scale, 3.8 without time
    inputs; 0.1 gave 4.1). Inputs are scaled to about [0, 1]."""

    SCALE = 0.02

    def __init__(self, n_inputs: int, hidden: int, k: int = 16):
        super().__init__()
        self.freq = nn.Parameter(torch.randn(n_inputs, k) * 5)   # inputs lie in ~[0, 1]
        self.phase = nn.Parameter(torch.randn(n_inputs, k))
        self.proj = nn.Linear(n_inputs * k, hidden)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        z = t.unsqueeze(-1) * self.freq + self.phase             # [..., n_inputs, k]
        z = torch.cat([z[..., :1], torch.sin(z[..., 1:])], -1)
        return self.SCALE * self.proj(z.flatten(-2))


TIME_MODES = ("years", "days")


class BEHRT(nn.Module):
    """The encoder: ``forward(batch)`` gives hidden states ``[B, L, hidden]``."""

    def __init__(self, c: BEHRTConfig):
        super().__init__()
        if c.time not in TIME_MODES:
            raise ValueError(f"BEHRT time {c.time!r}; accepted: {list(TIME_MODES)}")
        self.config = c
        self.tokens = nn.Embedding(c.vocab_size, c.hidden, padding_idx=PAD)
        self.age = nn.Embedding(c.max_age, c.hidden)
        self.segment = nn.Embedding(2, c.hidden)
        self.position = nn.Embedding(c.max_len, c.hidden)
        if c.time == "days":
            self.time = TimeEmbedding(3, c.hidden)
        if c.values:
            self.value = nn.Embedding(c.vocab_size, c.hidden)
        if c.value_deltas:
            self.delta = nn.Embedding(c.vocab_size, c.hidden)
            # token id -> numeric code (-1: none), saved with the weights: set_value_codes
            self.register_buffer("value_code", torch.full((c.vocab_size,), -1, dtype=torch.long))
        self.drop = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(EncoderLayer(c) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.hidden)
        self.apply(init_weights)
        for name in ("value", "delta"):   # after init_weights: they start adding nothing
            if hasattr(self, name):
                nn.init.zeros_(getattr(self, name).weight)

    def forward(self, x: BEHRTBatch) -> torch.Tensor:
        age = x.age.long().clamp(0, self.config.max_age - 1)
        if self.config.time == "days":   # positions counted back from the landmark's visit
            position = torch.where(x.mask, x.visit_back + 1, 0)
            position[:, 0] = 0
            position = position.clamp(max=self.config.max_len - 1)
            segment = torch.where(position > 0, (position - 1) % 2, 0)
            extra = self.time(x.time) * x.mask.unsqueeze(-1)
        else:
            position, segment, extra = x.position, x.segment, 0
        if self.config.values:
            extra = extra + x.values.unsqueeze(-1) * self.value(x.tokens)
        if self.config.value_deltas:
            extra = extra + self.value_deltas(x).unsqueeze(-1) * self.delta(x.tokens)
        h = self.drop(self.tokens(x.tokens) + self.age(age) + self.segment(segment)
                      + self.position(position) + extra)
        rope = None
        if self.config.rotary:   # days before the landmark, back from behrt_inputs' log1p
            days = torch.expm1(10 * x.time[..., 0]) * x.mask
            rope = rotary_angles(days, self.config.hidden // self.config.heads)
        for layer in self.layers:
            h = layer(h, x.mask, rope)
        return self.norm(h)

    def value_deltas(self, x: BEHRTBatch) -> torch.Tensor:
        """``[B, L]``: each valued token's change since the row's previous token of the same
        numeric code (tokens are in time order along a row), 0 for a first value and for every
        other token (masked ones included: their token is ``[MASK]``)."""
        b, length = x.tokens.shape
        row = torch.arange(b, device=x.tokens.device).repeat_interleave(length)
        code = torch.where(x.mask, self.value_code[x.tokens], -1).reshape(-1)
        return value_changes(row, code, x.values.reshape(-1),
                             self.value_code.numel()).view(b, length)


READOUTS = ("cls", "cls_landmark")


def readout(h: torch.Tensor, x: BEHRTBatch, how: str) -> torch.Tensor:
    """What the survival head reads from the encoder's states ``h`` ``[B, L, hidden]``:
    ``cls`` the ``[CLS]`` state; ``cls_landmark`` it beside the mean state of the landmark
    visit's tokens (its codes and its ``[SEP]``: ``visit_back`` 0), ``[B, 2 * hidden]``."""
    if how == "cls":
        return h[:, 0]
    at = x.mask & (x.visit_back == 0)
    at[:, 0] = False                                  # [CLS] is no visit's token
    w = at.unsqueeze(-1).to(h.dtype)
    return torch.cat([h[:, 0], (h * w).sum(1) / w.sum(1).clamp(min=1)], -1)


class BEHRTSurvival(nn.Module):
    """BEHRT with a logistic-hazard head on its :func:`readout`: ``forward(batch)`` gives
    logits [B, K]."""

    def __init__(self, config: BEHRTConfig):
        super().__init__()
        if config.n_bins < 1:
            raise ValueError("BEHRTSurvival needs config.n_bins >= 1 (the time bins)")
        if config.readout not in READOUTS:
            raise ValueError(f"BEHRT readout {config.readout!r}; accepted: {list(READOUTS)}")
        self.config = config
        self.encoder = BEHRT(config)
        self.drop = nn.Dropout(config.dropout)
        width = config.hidden * (2 if config.readout == "cls_landmark" else 1)
        self.head = nn.Linear(width, config.n_bins)

    @classmethod
    def from_config(cls, config: dict | BEHRTConfig) -> BEHRTSurvival:
        return cls(config if isinstance(config, BEHRTConfig) else BEHRTConfig(**config))

    def config_dict(self) -> dict:
        return asdict(self.config)

    def forward(self, batch: BEHRTBatch) -> torch.Tensor:
        return self.head(self.drop(readout(self.encoder(batch), batch, self.config.readout)))

    @torch.no_grad()
    def predict_survival(self, batch: BEHRTBatch) -> torch.Tensor:
        """Survival probabilities at the bin edges ``[B, K+1]``, starting with S(0) = 1."""
        return hazard_to_survival(self(batch))


class BEHRTProbe(BEHRTSurvival):
    """:class:`BEHRTSurvival` for a linear probe: the encoder is frozen and always in eval
    mode (``train()`` leaves it there), so its dropout never perturbs the features the head
    trains on, and the head sees during training the very features it is scored with. The
    head's own dropout still acts in training. Same weights as :class:`BEHRTSurvival` (saved
    and loaded as one)."""

    CACHE_BYTES = 1 << 30   # features kept per model; past this they are recomputed

    def __init__(self, config: BEHRTConfig):
        super().__init__(config)
        self.encoder.requires_grad_(False)
        self.encoder.eval()
        self._cache: dict[bytes, torch.Tensor] = {}

    def train(self, mode: bool = True) -> BEHRTProbe:
        super().train(mode)
        self.encoder.eval()
        return self

    def load_state_dict(self, *args, **kwargs):
        self._cache.clear()
        return super().load_state_dict(*args, **kwargs)

    def features(self, batch: BEHRTBatch) -> torch.Tensor:
        """The frozen encoder's :func:`readout` ``[B, width]``, computed once per distinct input
        (keyed by the row's real tokens, ages and positions) and then read from memory: the
        encoder is frozen and in eval mode, so every later epoch would compute the same numbers
        again (the probe trained 32 epochs per learning rate on the default cohort)."""
        n = batch.mask.sum(1).tolist()
        parts = [t.detach().cpu().numpy() for t in (batch.tokens, batch.age, batch.position,
                                                    batch.visit_back, batch.time, batch.values)
                 if t is not None]
        keys = [b"".join(a[i, :k].tobytes() for a in parts) for i, k in enumerate(n)]
        todo = [i for i, k in enumerate(keys) if k not in self._cache]
        if todo:
            sub = batch._map(lambda t: t[todo]) if len(todo) < len(keys) else batch
            with torch.no_grad():
                cls = readout(self.encoder(sub), sub, self.config.readout)
            if len(self._cache) * cls[0].numel() * cls.element_size() > self.CACHE_BYTES:
                self._cache.clear()
            self._cache.update(zip((keys[i] for i in todo), cls, strict=True))
        return torch.stack([self._cache[k] for k in keys])

    def forward(self, batch: BEHRTBatch) -> torch.Tensor:
        return self.head(self.drop(self.features(batch)))


def survival_loss(model: nn.Module, batch: BEHRTBatch) -> torch.Tensor:
    """Loss function for :func:`ehrseq.train.loop.fit`."""
    return nll_logistic_hazard(model(batch).float(), batch.target_bin, batch.target_event)


# --------------------------------------------------------------------------- fine-tuning

def finetune_model(mode: str, config: BEHRTConfig, encoder_state: dict | None,
                   fp: FinetuneParams, train_data=None) -> nn.Module:
    """The module to train for ``mode``: ``full`` (pre-trained, all trainable; the new head at
    ``fp.head_lr_scale`` times the encoder's rate), ``lora`` (pre-trained, frozen; peft LoRA on
    :data:`LORA_TARGETS` plus the head train), ``probe`` (pre-trained, frozen and always in
    eval mode, :class:`BEHRTProbe`; the head trains), ``scratch`` (random init, all
    trainable). With ``train_data`` (targets of the training split) the head starts at the
    baseline model: bias at its baseline hazards, weights at zero
    (:func:`ehrseq.models.losses.init_hazard_head`)."""
    if mode not in FINETUNE_MODES:
        raise ValueError(f"fine-tuning mode {mode!r}; accepted: {list(FINETUNE_MODES)}")
    model = (BEHRTProbe if mode == "probe" else BEHRTSurvival)(config)
    if train_data is not None:
        init_hazard_head(model.head, train_data)
    if mode == "full":
        model.lr_scales = {"head.": fp.head_lr_scale}
    if mode != "scratch":
        if encoder_state is None:
            raise ValueError(f"mode {mode!r} needs the pre-trained encoder weights")
        model.encoder.load_state_dict(encoder_state)
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=fp.lora_r, lora_alpha=fp.lora_alpha, lora_dropout=fp.lora_dropout,
            target_modules=list(LORA_TARGETS), modules_to_save=["head"]))
    return model


def save_adapter(model: nn.Module, path) -> None:
    """The LoRA adapters and the trained head alone, as safetensors."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    state = get_peft_model_state_dict(model)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path))


def load_adapter(model: nn.Module, path) -> None:
    """Load adapters written by :func:`save_adapter` into a model from :func:`finetune_model`."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(path)))
