"""Med2Vec (Choi et al., KDD 2016): code and visit representations from co-occurrence.

A visit is the set of its codes x_t (duplicates within a visit count once). Two layers::

    u_t = ReLU(W_c x_t + b_c)                   code layer; W_c [vocab, code_dim]
    v_t = ReLU(W_v [u_t, d_t] + b_v)            visit layer; d_t = (age / 100, male)
    y_t = softmax(W_s v_t + b_s)                visit-level output over the vocabulary

trained on the sum of two objectives, as in the authors' reference code (mp2893/med2vec):

- **Visit level**: y_t predicts the codes of every visit t+j of the same patient with
  1 <= |j| <= ``window``, multi-label: ``-sum_c [x log y + (1-x) log(1-y)]`` per pair of visits,
  summed over both directions, averaged over the pairs of each offset, summed over offsets.
- **Code level** (skip-gram): every ordered pair (i, j) of distinct codes in one visit,
  ``p(j | i) = softmax_k(w_i . w_k)`` with ``w = ReLU(W_c)`` as both input and output vector,
  a **full softmax over the vocabulary** (no negative sampling), averaged over all pairs.
  The pairs are never enumerated: ``sum_pairs w_i.w_j = sum_v |sum_i w_i|^2 - sum_i |w_i|^2``
  and the log-partition of each distinct code in the batch is computed once, so the loss is
  exact and costs O(tokens * dim + distinct codes * vocab * dim).

The code embeddings are ``ReLU(W_c)`` (:meth:`Med2Vec.code_vectors`); the visit embedding of a
visit is v_t, which depends only on that visit's codes and demographics.
Batches are patients (:class:`Med2VecDataset`), flattened to their visits in order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.tensors import SequenceDataset, Sequences, ranges
from ..params import ModelParams
from .losses import hazard_to_survival, nll_logistic_hazard

SIZE_PRESETS = {  # size: (code_dim, visit_dim)
    "tiny": (32, 32),
    "small": (64, 64),
    "medium": (128, 128),
    "large": (256, 256),
}
LOG_EPS = 1e-8


@dataclass(frozen=True)
class Med2VecConfig:
    vocab_size: int
    code_dim: int = 64
    visit_dim: int = 64
    window: int = 1
    demographics: bool = True
    size: str = "small"
    model_class: str = "ehrseq.models.med2vec.Med2Vec"
    n_bins: int = 0           # > 0: Med2VecSurvival with this many time bins
    dropout: float = 0.1      # before the survival head
    time: bool = True         # the survival head reads day-level time (model.med2vec.time)

    @property
    def n_demographics(self) -> int:
        return 2 if self.demographics else 0


def med2vec_config(params: ModelParams, vocab_size: int) -> Med2VecConfig:
    """The size preset of ``params.size`` with any ``params.med2vec`` field that is set on top."""
    code, visit = SIZE_PRESETS[params.size]
    o = params.med2vec
    return Med2VecConfig(vocab_size=vocab_size, code_dim=o.code_dim or code,
                         visit_dim=o.visit_dim or visit, window=o.window,
                         demographics=o.demographics, size=params.size,
                         dropout=params.dropout, time=o.time)


# --------------------------------------------------------------------------- batches

def visit_bags(seqs: Sequences, visits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct codes of each visit in ``visits``, flat: (tokens int64 [T], counts [N]).

    Visit i holds ``tokens[offsets[i]:offsets[i] + counts[i]]`` with ``offsets`` the exclusive
    cumulative sum of ``counts``; codes are sorted within a visit. No loop per visit.
    """
    visits = np.asarray(visits, dtype=np.int64)
    vo = seqs.visit_offsets
    start = np.asarray(vo[visits])
    tok, owner, _ = ranges(start, np.asarray(vo[visits + 1]) - start)
    key = np.unique(owner * np.int64(seqs.vocab_size) + np.asarray(seqs.codes[tok], np.int64))
    owner, codes = np.divmod(key, np.int64(seqs.vocab_size))
    return codes, np.bincount(owner, minlength=len(visits)).astype(np.int64)


def patient_male(seqs: Sequences) -> np.ndarray:
    """1.0 for male patients, else 0.0 (0.0 for all when ``patients.parquet`` has no gender)."""
    if "gender" not in seqs.patients:
        return np.zeros(seqs.n_patients, np.float32)
    return (seqs.patients["gender"].astype(str).str.upper() == "M").to_numpy(np.float32)


@dataclass
class Med2VecBatch:
    """The visits of some patients, flat and in order: visit i holds
    ``tokens[offsets[i]:offsets[i]+counts[i]]``; ``patient[i]`` is its patient in the batch,
    so visits i and i+j are neighbours when ``patient[i] == patient[i+j]``."""

    tokens: torch.Tensor   # int64 [T] distinct codes per visit
    offsets: torch.Tensor  # int64 [N]
    counts: torch.Tensor   # int64 [N]
    patient: torch.Tensor  # int64 [N] 0..B-1, non-decreasing
    age: torch.Tensor      # float32 [N] years at the visit
    male: torch.Tensor     # float32 [N]
    visit: torch.Tensor    # int64 [N] visit row in the sequences arrays
    n_patients: int = 0
    time: torch.Tensor | None = None          # float32 [N, 2] survival batches: log1p(days
    # since the previous visit) / 5, log1p(days before the landmark visit) / 10
    rows: torch.Tensor | None = None          # int64 [B] dataset rows (survival batches)
    target_bin: torch.Tensor | None = None
    target_event: torch.Tensor | None = None

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    def _map(self, fn) -> Med2VecBatch:
        return Med2VecBatch(**{f.name: (v if not isinstance(v := getattr(self, f.name),
                                                           torch.Tensor) else fn(v))
                               for f in fields(self)})

    def to(self, device, non_blocking: bool = False) -> Med2VecBatch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Med2VecBatch:
        return self._map(lambda t: t.pin_memory())


def build_visit_batch(seqs: Sequences, visits: np.ndarray, patient: np.ndarray,
                      male: np.ndarray) -> Med2VecBatch:
    """A :class:`Med2VecBatch` of the given visit rows (``patient``: batch-local ids)."""
    visits = np.asarray(visits, np.int64)
    tokens, counts = visit_bags(seqs, visits)
    t = torch.from_numpy
    return Med2VecBatch(
        tokens=t(tokens), offsets=t(np.cumsum(counts) - counts), counts=t(counts),
        patient=t(np.asarray(patient, np.int64)),
        age=t(np.nan_to_num(np.asarray(seqs.visit_age[visits], np.float32))),
        male=t(np.asarray(male, np.float32)), visit=t(visits),
        n_patients=int(len(np.unique(patient))),
    )


class Med2VecDataset(torch.utils.data.Dataset):
    """Patients (rows of the sequences arrays) with all their visits; ``dataset[rows]`` gives a
    whole :class:`Med2VecBatch`, for :func:`ehrseq.data.tensors.make_loader`."""

    def __init__(self, seqs: Sequences, index):
        self.seqs = seqs
        index = np.asarray(index, np.int64)
        self.index = index[seqs.n_visits[index] > 0]
        self.male = patient_male(seqs)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def lengths(self) -> np.ndarray:
        return self.seqs.n_visits[self.index]

    def __getitem__(self, rows) -> Med2VecBatch:
        p = self.index[np.atleast_1d(np.asarray(rows, np.int64))]
        po = self.seqs.patient_offsets
        visits, owner, _ = ranges(np.asarray(po[p]), np.asarray(po[p + 1]) - np.asarray(po[p]))
        return build_visit_batch(self.seqs, visits, owner, self.male[p][owner])


# --------------------------------------------------------------------------- model

class Med2Vec(nn.Module):
    """Med2Vec; ``forward(batch)`` returns (code-level loss, visit-level loss)."""

    def __init__(self, config: Med2VecConfig):
        super().__init__()
        self.config = c = config
        # uniform init as the reference code, scaled to the dimension (their +-0.01 is for
        # Adadelta and dims in the hundreds; AdamW's weight decay plays their L2 on W_c)
        bound = 1.0 / c.code_dim ** 0.5
        self.code_weight = nn.Parameter(torch.empty(c.vocab_size, c.code_dim).uniform_(-bound, bound))
        self.code_bias = nn.Parameter(torch.zeros(c.code_dim))
        self.visit_layer = nn.Linear(c.code_dim + c.n_demographics, c.visit_dim)
        self.output = nn.Linear(c.visit_dim, c.vocab_size)

    @classmethod
    def from_config(cls, config: dict | Med2VecConfig) -> Med2Vec:
        return cls(config if isinstance(config, Med2VecConfig) else Med2VecConfig(**config))

    def config_dict(self) -> dict:
        return asdict(self.config)

    def code_vectors(self) -> torch.Tensor:
        """The code embeddings ``ReLU(W_c)`` [vocab, code_dim] (what the code level trains)."""
        return F.relu(self.code_weight)

    def encode(self, b: Med2VecBatch) -> torch.Tensor:
        """Visit representations v_t [N, visit_dim]."""
        u = F.embedding_bag(b.tokens, self.code_weight, b.offsets, mode="sum")
        u = F.relu(u + self.code_bias)
        if self.config.demographics:
            demo = torch.stack([b.age / 100, b.male], -1).to(u.dtype)
            u = torch.cat([u, demo], -1)
        return F.relu(self.visit_layer(u))

    def visit_logits(self, v: torch.Tensor) -> torch.Tensor:
        """Scores of every code in a neighbouring visit [N, vocab] (softmax = y_t)."""
        return self.output(v)

    def forward(self, b: Med2VecBatch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.visit_logits(self.encode(b)).float()
        return code_level_loss(self.code_vectors().float(), b), \
            visit_level_loss(logits, b, self.config.window)


def _bag_owner(b: Med2VecBatch) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(b.counts), device=b.counts.device), b.counts)


def code_level_loss(w: torch.Tensor, b: Med2VecBatch) -> torch.Tensor:
    """Mean over all ordered pairs (i, j), i != j, of codes in one visit of ``-log p(j | i)``,
    ``p(j | i) = softmax_k(w_i . w_k)`` over the whole vocabulary; 0 without any pair."""
    n = b.counts
    n_pairs = (n * (n - 1)).sum()
    if int(n_pairs) == 0:
        return w.sum() * 0.0
    owner = _bag_owner(b)
    e = w[b.tokens]                                                     # [T, d]
    sums = torch.zeros(len(n), w.shape[1], dtype=w.dtype, device=w.device).index_add_(0, owner, e)
    pair_dot = (sums * sums).sum() - (e * e).sum()                      # sum of w_i.w_j, i != j
    uniq, inv = torch.unique(b.tokens, return_inverse=True)
    log_z = torch.logsumexp(w[uniq] @ w.T, dim=1)[inv]                  # [T]
    return ((log_z * (n[owner] - 1)).sum() - pair_dot) / n_pairs


def neighbour_pairs(patient: torch.Tensor, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(earlier, later) visit indices ``offset`` visits apart within the same patient."""
    if offset >= len(patient):
        empty = patient.new_zeros(0)
        return empty, empty
    src = torch.nonzero(patient[:-offset] == patient[offset:]).squeeze(1)
    return src, src + offset


def _pair_cost(log_p: torch.Tensor, log_1mp_sum: torch.Tensor, log_1mp: torch.Tensor,
               b: Med2VecBatch, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Summed ``-[x log y + (1-x) log(1-y)]`` of y = softmax(row ``src``) against the codes x
    of visits ``tgt``, over all pairs."""
    cnt = b.counts[tgt]
    pos, owner, _ = _ranges_t(b.offsets[tgt], cnt)
    rows, cols = src[owner], b.tokens[pos]
    return -log_1mp_sum[src].sum() - (log_p[rows, cols] - log_1mp[rows, cols]).sum()


def _ranges_t(starts: torch.Tensor, lengths: torch.Tensor):
    owner = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)
    first = torch.cumsum(lengths, 0) - lengths
    within = torch.arange(int(lengths.sum()), device=lengths.device) - first[owner]
    return starts[owner] + within, owner, within


def visit_level_loss(logits: torch.Tensor, b: Med2VecBatch, window: int) -> torch.Tensor:
    """Sum over offsets j = 1..window of the multi-label cross-entropy of each visit's output
    against the codes of the visits j before and j after it (same patient), both directions
    summed and divided by the number of visit pairs at offset j."""
    log_p = torch.log_softmax(logits, -1)
    log_1mp = torch.log1p(-log_p.exp() + LOG_EPS)
    log_1mp_sum = log_1mp.sum(-1)
    total = logits.sum() * 0.0
    for j in range(1, window + 1):   # at most `window` (<= 10) iterations
        early, late = neighbour_pairs(b.patient, j)
        if len(early) == 0:
            continue
        cost = _pair_cost(log_p, log_1mp_sum, log_1mp, b, early, late) \
            + _pair_cost(log_p, log_1mp_sum, log_1mp, b, late, early)
        total = total + cost / len(early)
    return total


def med2vec_loss(model: nn.Module, batch: Med2VecBatch) -> torch.Tensor:
    """Loss function for :func:`ehrseq.train.loop.fit`: code level + visit level."""
    code, visit = model(batch)
    return code + visit


# --------------------------------------------------------------------------- survival head

class Med2VecSurvivalDataset:
    """A :class:`SequenceDataset` (landmark inputs, survival targets) served as
    :class:`Med2VecBatch` of each row's input visits (the shared window ``base.max_visits``);
    works with :func:`ehrseq.data.tensors.make_loader`."""

    def __init__(self, base: SequenceDataset):
        self.base = base
        self.male = patient_male(base.seqs)
        self.lengths = base.lengths

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, rows) -> Med2VecBatch:
        rows = np.atleast_1d(np.asarray(rows, np.int64))
        p, lm = self.base.index[rows], self.base.landmark_visits[rows]
        n = self.lengths[rows]
        start = np.asarray(self.base.seqs.patient_offsets[p]) + lm - n
        visits, owner, _ = ranges(start, n)
        seqs = self.base.seqs
        b = build_visit_batch(seqs, visits, owner, self.male[p][owner])
        b.n_patients, b.rows = len(rows), torch.from_numpy(rows)
        vt = np.asarray(seqs.visit_time, np.float64)
        first = np.asarray(seqs.patient_offsets[p])[owner]
        gap = np.where(visits > first, vt[visits] - vt[np.maximum(visits - 1, 0)], 0.0)
        before = vt[(start + n - 1)[owner]] - vt[visits]
        b.time = torch.from_numpy(np.stack([np.log1p(np.maximum(gap, 0)) / 5,
                                            np.log1p(np.maximum(before, 0)) / 10],
                                           1).astype(np.float32))
        if self.base.target_bin is not None:
            b.target_bin = torch.from_numpy(self.base.target_bin[rows])
            b.target_event = torch.from_numpy(self.base.target_event[rows])
        return b


class Med2VecSurvival(nn.Module):
    """Med2Vec's code and visit layers, the mean of the visit vectors v_t over a patient's
    input visits, and a logistic-hazard head: ``forward(batch)`` gives logits [B, K]. With
    ``config.time`` the head also reads day-level time: the mean over the input visits, and
    the landmark visit's value, of log(1 + days since the previous visit) and log(1 + days
    before the landmark) (a mean of visit vectors cannot see when the visits were).
    The visit-level output layer is not used (kept frozen, so checkpoints load both ways)."""

    N_TIME = 4

    def __init__(self, config: Med2VecConfig):
        super().__init__()
        if config.n_bins < 1:
            raise ValueError("Med2VecSurvival needs config.n_bins >= 1 (the time bins)")
        self.config = config
        self.encoder = Med2Vec(config)
        self.encoder.output.requires_grad_(False)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.visit_dim + (self.N_TIME if config.time else 0),
                              config.n_bins)

    @classmethod
    def from_config(cls, config: dict | Med2VecConfig) -> Med2VecSurvival:
        return cls(config if isinstance(config, Med2VecConfig) else Med2VecConfig(**config))

    def config_dict(self) -> dict:
        return asdict(self.config)

    def patient_vectors(self, b: Med2VecBatch) -> torch.Tensor:
        """Mean visit vector per patient of the batch [B, visit_dim]."""
        v = self.encoder.encode(b)
        if self.config.time:
            if b.time is None:
                raise ValueError("Med2VecSurvival with config.time needs batch.time "
                                 "(Med2VecSurvivalDataset writes it)")
            v = torch.cat([v, b.time.to(v.dtype)], 1)
        out = v.new_zeros(b.n_patients, v.shape[1]).index_add_(0, b.patient, v)
        n = torch.bincount(b.patient, minlength=b.n_patients).clamp(min=1)
        mean = out / n.unsqueeze(1).to(v.dtype)
        if not self.config.time:
            return mean
        last = torch.cumsum(n, 0) - 1      # visits come in order, patient by patient
        return torch.cat([mean, v[last, -2:]], 1)

    def forward(self, b: Med2VecBatch) -> torch.Tensor:
        return self.head(self.drop(self.patient_vectors(b)))

    @torch.no_grad()
    def predict_survival(self, b: Med2VecBatch) -> torch.Tensor:
        """Survival probabilities at the bin edges ``[B, K+1]``, starting with S(0) = 1."""
        return hazard_to_survival(self(b))


def survival_loss(model: nn.Module, batch: Med2VecBatch) -> torch.Tensor:
    """Loss function for :func:`ehrseq.train.loop.fit`."""
    return nll_logistic_hazard(model(batch).float(), batch.target_bin, batch.target_event)


# --------------------------------------------------------------------------- inference

@torch.no_grad()
def encode_all_visits(model: Med2Vec, seqs: Sequences, chunk: int = 8192,
                      device: torch.device | str = "cpu") -> np.ndarray:
    """Visit embeddings v_t of every visit in the sequences arrays, float32 [n_visits, d]."""
    model.eval()
    n = len(seqs.visit_offsets) - 1
    owner = np.repeat(np.arange(seqs.n_patients), seqs.n_visits)
    male = patient_male(seqs)[owner]
    out = np.zeros((n, model.config.visit_dim), np.float32)
    for s in range(0, n, chunk):       # one iteration per chunk of visits
        v = np.arange(s, min(n, s + chunk))
        b = build_visit_batch(seqs, v, owner[v], male[v]).to(device)
        out[v] = model.encode(b).float().cpu().numpy()
    return out
