"""BEHRT pre-training: masked codes (MLM) and next-visit codes, beside no-training baselines.

Each batch cuts every patient's history after visit ``k`` (one cut fraction ``u`` per batch,
``k = ceil(u * n_visits)``, so a length bucket stays one); the input is visits ``1..k``:

- MLM: code tokens are picked with probability ``mask_prob``; of those 80% become ``[MASK]``,
  10% a random code, 10% stay; the model predicts the original code (cross-entropy). A picked
  code's value (``model.behrt.values``) is hidden too.
- Next visit: from the ``[CLS]`` state (what the survival head reads later) the model predicts
  the set of codes of visit ``k + 1``: a softmax over codes against the visit's codes spread
  evenly (multi-label cross-entropy, as in Doctor AI / Med2Vec). Per-code binary cross-entropy
  was tried first: its loss starts near ``0.69 * vocab / codes in the visit`` (about 200
  against MLM's 7 with ~900 codes) and spiked during training; the softmax form is on MLM's
  scale, so the two weights mean what they say. The input stops before that visit, so nothing
  leaks; when ``k`` is the last visit there is no target.
- Time to event (``pretrain.objective: tte`` or ``mlm+tte``; MOTOR, Steinberg et al. 2023, as
  in femr's MOTOR task head): from the ``[CLS]`` state, for each of the most frequent training
  codes (the tasks), a piecewise-exponential hazard of its next occurrence after visit ``k``
  (days to it, or to the end of the record: censored). The head maps ``[CLS]`` to one vector
  per time piece and scores it against a learnt vector per task (low rank), plus a bias per
  (piece, task) that starts at the training split's log event rate; the loss is the negative
  log-likelihood per (patient, task), time in years.
- Lab state (``pretrain.lab_state_weight`` > 0, added to any objective): from the ``[CLS]``
  state, for every numeric code, its last value in the input and that value's change since the
  one before (normalised values, as the models read them), squared error over the entries the
  input has (a code with one value has no change; masked values are not in the input). It asks
  ``[CLS]`` for what a count model is handed (the last value) and for the lookup a lab trend
  needs (the previous value of the same code), before any label is seen.

Masks and cuts come from ``(seed, epoch, rows)``: new every epoch, reproducible, and resumable
without touching the global RNG. The validation loader never changes epoch, so its masks and
cuts stay fixed and epochs are comparable. Baselines that need no training run on the same
masks and cuts: MLM predicts the most frequent training code (perplexity from the training
code frequencies); next visit ranks codes by training frequency (``freq``) or puts the last
input visit's codes first (``prev``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.tensors import (
    BucketBatchSampler,
    Sequences,
    build_batch,
    ranges,
    uses_values,
    value_changes,
)
from ..params import LAB_STATE_WEIGHT, PretrainParams
from .behrt import (
    BEHRT,
    MASK,
    N_SPECIAL,
    BEHRTBatch,
    BEHRTConfig,
    behrt_inputs,
    token_lengths,
)

IGNORE = -100
TTE_RANK = 32          # the time-to-event head's task vectors (MOTOR's low-rank task layer)
MIN_TTE_DAYS = 1.0     # an event on the cut's own day counts as one day later (no zero times)


class TTEHead(nn.Module):
    """Log hazards per year ``[B, pieces, tasks]`` from ``[CLS]`` ``[B, hidden]``: one vector per
    piece (a linear map), dotted with each task's vector (zero at the start), plus a bias per
    (piece, task).
    ``log_rate`` (a buffer) keeps the biases' starting point: the marginal-rate baseline."""

    def __init__(self, hidden: int, tasks: int, pieces: int, rank: int = TTE_RANK):
        super().__init__()
        self.pieces, self.rank = pieces, rank
        self.time = nn.Linear(hidden, pieces * rank)
        self.task = nn.Linear(rank, tasks, bias=False)
        nn.init.zeros_(self.task.weight)   # at the start: the marginal rates exactly
        self.bias = nn.Parameter(torch.zeros(pieces, tasks))
        self.register_buffer("log_rate", torch.zeros(pieces, tasks))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.time(h).view(h.shape[0], self.pieces, self.rank)
        return self.task(z) + self.bias

    @torch.no_grad()
    def init_rates(self, events: torch.Tensor, exposure: torch.Tensor) -> None:
        """Biases (and ``log_rate``) at the log event rate per (piece, task), shrunk towards
        the task's rate over all pieces (a gamma prior of half an event): ``(events + 0.5) /
        (exposure + 0.5 / overall)``, so a piece nobody reaches gets the overall rate."""
        overall = (events.sum(0) + 0.5) / exposure.sum(0).clamp(min=1e-3)
        rate = torch.log((events + 0.5) / (exposure + 0.5 / overall))
        self.bias.copy_(rate)
        self.log_rate.copy_(rate)


class BEHRTPretrain(nn.Module):
    """The encoder with an MLM head (decoder tied to the code embeddings), a next-visit head
    on ``[CLS]`` and, where configured, the time-to-event and lab-state heads on ``[CLS]``
    (:meth:`forward`). The lab-state head's targets come from the input through the
    ``value_code`` buffer (token id -> numeric code, :func:`ehrseq.data.tensors.set_value_codes`)."""

    def __init__(self, config: BEHRTConfig):
        super().__init__()
        self.config = config
        h = config.hidden
        self.encoder = BEHRT(config)
        self.mlm_transform = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.LayerNorm(h))
        self.mlm_decoder = nn.Linear(h, config.vocab_size)
        self.mlm_decoder.weight = self.encoder.tokens.weight
        self.next_visit = nn.Linear(h, config.vocab_size)
        if config.tte_tasks:
            self.tte = TTEHead(h, config.tte_tasks, config.tte_pieces)
        if config.lab_codes:
            self.lab_state = nn.Linear(h, 2 * config.lab_codes)
            self.register_buffer("value_code", torch.full((config.vocab_size,), -1,
                                                          dtype=torch.long))

    @classmethod
    def from_config(cls, config: dict | BEHRTConfig) -> BEHRTPretrain:
        return cls(config if isinstance(config, BEHRTConfig) else BEHRTConfig(**config))

    def forward(self, batch: BEHRTBatch) -> tuple[torch.Tensor, torch.Tensor,
                                                  torch.Tensor | None, torch.Tensor | None]:
        """(MLM logits [M, vocab], next-visit logits [B, vocab], time-to-event log hazards
        [B, pieces, tasks] or None without tasks, the lab state or None without lab codes:
        (prediction, target, known), each [B, 2 * lab_codes], last values then their changes,
        :func:`lab_state_targets`; computed here, so a DDP wrapper needs no attribute)."""
        h = self.encoder(batch)
        masked = h[batch.mlm_labels != IGNORE] if batch.mlm_labels is not None else h[:, :0]
        tte = self.tte(h[:, 0]) if self.config.tte_tasks else None
        lab = (self.lab_state(h[:, 0]), *lab_state_targets(self.value_code, batch,
                                                            self.config.lab_codes)) \
            if self.config.lab_codes else None
        return self.mlm_decoder(self.mlm_transform(masked)), self.next_visit(h[:, 0]), tte, lab


def mask_tokens(tokens: torch.Tensor, vocab_size: int, prob: float,
                rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels): code tokens picked with ``prob``, then 80/10/10 [MASK]/random/kept;
    labels hold the original code where picked, else -100. Specials are never picked."""
    shape = tuple(tokens.shape)
    pick = (tokens >= N_SPECIAL) & torch.from_numpy(rng.random(shape) < prob)
    how = torch.from_numpy(rng.random(shape))
    rand = torch.from_numpy(rng.integers(N_SPECIAL, vocab_size, shape))
    inputs = torch.where(pick & (how < 0.8), MASK,
                         torch.where(pick & (how >= 0.9), rand, tokens))
    return inputs, torch.where(pick, tokens, IGNORE)


def multi_hot(seqs: Sequences, visits: np.ndarray, valid: np.ndarray) -> torch.Tensor:
    """``[len(visits), vocab]`` 0/1 of the codes (no specials) of each valid visit."""
    out = torch.zeros(len(visits), seqs.vocab_size)
    v = visits[valid]
    start = np.asarray(seqs.visit_offsets[v])
    tok, owner, _ = ranges(start, np.asarray(seqs.visit_offsets[v + 1]) - start)
    out[np.flatnonzero(valid)[owner], np.asarray(seqs.codes[tok], np.int64)] = 1.0
    out[:, :N_SPECIAL] = 0.0
    return out


def code_counts(seqs: Sequences, index) -> np.ndarray:
    """Occurrences of every token id in patients ``index`` (their whole records)."""
    po, vo = seqs.patient_offsets, seqs.visit_offsets
    index = np.asarray(index, dtype=np.int64)
    start = np.asarray(vo[po[index]])
    tok, _, _ = ranges(start, np.asarray(vo[po[index + 1]]) - start)
    return np.bincount(np.asarray(seqs.codes[tok], np.int64), minlength=seqs.vocab_size)


def tte_task_codes(seqs: Sequences, index, n: int) -> np.ndarray:
    """The time-to-event tasks: the ``n`` most frequent codes of patients ``index`` (no
    specials; ties: the lower id), most frequent first."""
    counts = code_counts(seqs, index)
    counts[:N_SPECIAL] = 0
    order = np.lexsort((np.arange(len(counts)), -counts))
    return order[:min(n, int((counts > 0).sum()))]


def tte_edges(pieces_days) -> torch.Tensor:
    """Piece edges in years: ``[0, pieces..., inf]``."""
    return torch.tensor([0.0, *pieces_days, float("inf")], dtype=torch.float32) / 365.25


def tte_targets(seqs: Sequences, p: np.ndarray, cut: np.ndarray, lut: np.ndarray,
                n_tasks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Years from visit ``cut`` of patients ``p`` to each task's next occurrence (``lut``:
    token id -> task, -1 if none), or to the end of the record (the later of the last visit
    and ``end_of_record``) where it does not recur: (time [B, tasks], event [B, tasks])."""
    po, vo = np.asarray(seqs.patient_offsets), seqs.visit_offsets
    vt = np.asarray(seqs.visit_time, np.float64)
    t0 = vt[po[p] + cut - 1]
    end = vt[po[p + 1] - 1]
    if "end_of_record" in seqs.patients:
        eor = seqs.patients["end_of_record"].to_numpy(np.float64)[p]
        end = np.where(np.isfinite(eor), np.maximum(end, eor), end)
    vis, row, _ = ranges(po[p] + cut, po[p + 1] - po[p] - cut)        # the visits after
    start = np.asarray(vo[vis])
    tok, which, _ = ranges(start, np.asarray(vo[vis + 1]) - start)
    task = lut[np.asarray(seqs.codes[tok], np.int64)]
    hit = task >= 0
    first = np.full((len(p), n_tasks), np.inf)
    np.minimum.at(first, (row[which][hit], task[hit]), vt[vis[which][hit]] - t0[row[which][hit]])
    event = np.isfinite(first)
    days = np.where(event, first, (end - t0)[:, None])
    years = np.maximum(days, MIN_TTE_DAYS) / 365.25
    return torch.from_numpy(years.astype(np.float32)), torch.from_numpy(event)


def tte_terms(log_hazard: torch.Tensor, time: torch.Tensor, event: torch.Tensor,
              edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per (patient, piece, task): exposure in years, the event's piece (0/1) and the
    negative log-likelihood ``exp(log h) * exposure - event * log h``."""
    edges = edges.to(time.device)
    lo, hi = edges[:-1][None, :, None], edges[1:][None, :, None]
    t = time[:, None, :]
    exposure = (t - lo).clamp(min=0).minimum(hi - lo)
    hit = (event[:, None, :] & (t >= lo) & (t < hi)).float()
    lh = log_hazard.float()
    return exposure, hit, lh.exp() * exposure - lh * hit


def lab_state_weight(pp: PretrainParams, seqs: Sequences, patients: int) -> float:
    """``pretrain.lab_state_weight`` resolved on ``seqs`` and ``patients`` pre-training
    patients (``auto``: ``LAB_STATE_WEIGHT`` where a token carries a value and ``patients``
    reaches ``pretrain.lab_state_from_patients``, else 0); a weight > 0 set on sequences
    without values is an :class:`InputError`."""
    w = pp.lab_state_weight
    if w == "auto" and patients < pp.lab_state_from_patients:
        return 0.0
    on = uses_values("auto" if w == "auto" else w > 0, seqs, "pretrain.lab_state_weight",
                     given=str(w), off="0 (or auto)")
    return (LAB_STATE_WEIGHT if w == "auto" else float(w)) if on else 0.0


def lab_state_targets(value_code: torch.Tensor, x: BEHRTBatch, n_codes: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, known), each ``[B, 2 * n_codes]``: per row and numeric code (``value_code``:
    token id -> code, -1 none) the last value in the input, then its change since the code's
    value before; ``known`` where the input has the value (the change: two values). Tokens
    picked for MLM are not in the input (their value is hidden)."""
    b, length = x.tokens.shape
    dev = x.tokens.device
    code = torch.where(x.mask, value_code[x.tokens], -1)
    if x.mlm_labels is not None:
        code = torch.where(x.mlm_labels == IGNORE, code, -1)
    row = torch.arange(b, device=dev)[:, None].expand(b, length)
    delta = value_changes(row.reshape(-1), code.reshape(-1), x.values.reshape(-1).float(),
                          n_codes).view(b, length)
    # every token scatters; those without a value into a spare bucket (b * n_codes), dropped
    # after: no boolean indexing, so no host sync on a GPU
    key = torch.where(code >= 0, row * n_codes + code, b * n_codes).reshape(-1)
    pos = torch.arange(length, device=dev).expand(b, length).reshape(-1)
    last = torch.zeros(b * n_codes + 1, dtype=torch.long, device=dev).scatter_reduce(
        0, key, pos, "amax", include_self=False)[:-1]
    count = torch.zeros(b * n_codes + 1, device=dev).index_add_(
        0, key, torch.ones_like(pos, dtype=torch.float))[:-1]
    r = torch.arange(b * n_codes, device=dev) // n_codes
    value, change = x.values.float()[r, last].view(b, -1), delta[r, last].view(b, -1)
    known = torch.cat([count.view(b, -1) >= 1, count.view(b, -1) >= 2], 1)
    return torch.cat([value, change], 1) * known, known


def lab_state_sums(lab: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sums over the known entries of ``lab`` (prediction, target, known: the model's lab-state
    output): squared error of the prediction, squared error of predicting 0 (a normalised
    value's training mean and no change: the baseline), and the number of entries."""
    pred, target, known = lab
    return ((pred.float() - target) ** 2 * known).sum(), (target ** 2).sum(), known.sum()


def tte_loss(log_hazard: torch.Tensor, time: torch.Tensor, event: torch.Tensor,
             edges: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Piecewise-exponential negative log-likelihood per (patient, task), averaged (or
    summed)."""
    nll = tte_terms(log_hazard, time, event, edges)[2].sum(1)
    return nll.mean() if reduction == "mean" else nll.sum()


@torch.no_grad()
def init_tte_rates(head: TTEHead, dataset: PretrainDataset, edges: torch.Tensor,
                   batch_size: int = 32) -> None:
    """Start the head's biases at the log event rate per (piece, task) of ``dataset`` (the
    training split, in batches of ``batch_size`` rows: one cut fraction per batch, as in
    training), MOTOR's initialisation."""
    events = exposure = 0.0
    for start in range(0, len(dataset), batch_size):
        b = dataset[(0, np.arange(start, min(start + batch_size, len(dataset))))]
        zero = torch.zeros(b.tte_time.shape[0], len(edges) - 1, b.tte_time.shape[1])
        e, h, _ = tte_terms(zero, b.tte_time, b.tte_event, edges)
        exposure, events = exposure + e.sum(0), events + h.sum(0)
    head.init_rates(events, exposure)


class PretrainDataset:
    """Patients' records as masked, cut :class:`BEHRTBatch`; keys are (epoch, rows).
    ``last_visit`` adds the last input visit's codes (the ``prev`` baseline); ``cut=False``
    keeps whole records (no next-visit targets: benchmarks). ``tte_tasks`` (token ids) adds
    the time-to-event targets; ``mask_prob`` 0 masks nothing."""

    def __init__(self, seqs: Sequences, index, max_len: int, mask_prob: float = 0.15,
                 seed: int = 0, last_visit: bool = False, cut: bool = True,
                 tte_tasks: np.ndarray | None = None):
        self.seqs, self.max_len, self.mask_prob, self.seed = seqs, max_len, mask_prob, seed
        self.cut = cut
        self.n_tasks = 0 if tte_tasks is None else len(tte_tasks)
        self.tte_lut = np.full(seqs.vocab_size, -1, np.int64)
        if self.n_tasks:
            self.tte_lut[np.asarray(tte_tasks, np.int64)] = np.arange(self.n_tasks)
        self.index = np.asarray(index, dtype=np.int64)
        self.n_visits = seqs.n_visits[self.index]
        self.last_visit = last_visit
        self.lengths = token_lengths(seqs, self.index, self.n_visits, max_len)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key) -> BEHRTBatch:
        epoch, rows = key
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        rng = np.random.default_rng([self.seed, epoch, *rows.tolist()])
        n_vis, p = self.n_visits[rows], self.index[rows]
        u = rng.random() if self.cut else 1.0
        cut = np.clip(np.ceil(u * n_vis), 1, n_vis).astype(np.int64)
        x = behrt_inputs(build_batch(self.seqs, p, cut, self.max_len - 1, rows=rows),
                         self.max_len)
        x.tokens, x.mlm_labels = mask_tokens(x.tokens, self.seqs.vocab_size, self.mask_prob, rng)
        x.values = x.values * (x.mlm_labels == IGNORE)   # a picked code's value is hidden too
        nxt = self.seqs.patient_offsets[p] + cut
        x.next_visit = multi_hot(self.seqs, nxt, cut < n_vis)
        x.has_next = x.next_visit.sum(1) > 0
        if self.last_visit:
            x.last_visit = multi_hot(self.seqs, nxt - 1, np.ones(len(rows), bool))
        if self.n_tasks:
            x.tte_time, x.tte_event = tte_targets(self.seqs, p, cut, self.tte_lut, self.n_tasks)
        return x


class EpochBatchSampler(BucketBatchSampler):
    """Length-bucketed batches yielded as ``(epoch, rows)`` for :class:`PretrainDataset`."""

    def __iter__(self):
        for rows in super().__iter__():
            yield self.epoch, rows


def pretrain_loader(dataset: PretrainDataset, batch_size: int, *, shuffle: bool = False,
                    seed: int = 0, num_workers: int = 0, rank: int = 0,
                    world_size: int = 1) -> torch.utils.data.DataLoader:
    """Like :func:`ehrseq.data.tensors.make_loader`, for pre-training batches."""
    sampler = EpochBatchSampler(dataset.lengths, batch_size, shuffle=shuffle, seed=seed,
                                rank=rank, world_size=world_size)
    return torch.utils.data.DataLoader(
        dataset, sampler=sampler, batch_size=None, num_workers=num_workers,
        pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed))


def next_visit_loss(logits: torch.Tensor, target: torch.Tensor,
                    reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the softmax over codes (no specials) against the 0/1 ``target``
    normalised to sum to 1 per row: ``-mean_{c in visit} log softmax(logits)_c``."""
    logp = torch.log_softmax(logits[:, N_SPECIAL:].float(), 1)
    t = target[:, N_SPECIAL:]
    loss = -(logp * t).sum(1) / t.sum(1).clamp(min=1)
    return loss.mean() if reduction == "mean" else loss.sum()


def pretrain_loss(model: nn.Module, batch: BEHRTBatch, mlm_weight: float = 1.0,
                  next_visit_weight: float = 1.0, tte_weight: float = 0.0,
                  edges: torch.Tensor | None = None, lab_state_weight: float = 0.0
                  ) -> torch.Tensor:
    """``mlm_weight * CE(masked codes) + next_visit_weight * next_visit_loss + tte_weight *
    tte_loss + lab_state_weight * mean squared lab-state error`` (``edges``: the time pieces,
    :func:`tte_edges`)."""
    mlm, nxt, tte, lab = model(batch)
    # every head in the graph, at weight 0 when its objective is off (DDP needs each
    # parameter to take part in every step)
    loss = sum(o.float().sum() for o in (nxt, mlm, tte, lab[0] if lab else None)
               if o is not None) * 0.0
    if tte_weight and tte is not None:
        loss = loss + tte_weight * tte_loss(tte, batch.tte_time, batch.tte_event, edges)
    if lab_state_weight and lab is not None:
        err, _, n = lab_state_sums(lab)
        loss = loss + lab_state_weight * err / n.clamp(min=1)
    labels = batch.mlm_labels[batch.mlm_labels != IGNORE]
    if mlm_weight and labels.numel():
        loss = loss + mlm_weight * F.cross_entropy(mlm.float(), labels)
    if next_visit_weight and bool(batch.has_next.any()):
        loss = loss + next_visit_weight * next_visit_loss(nxt[batch.has_next],
                                                          batch.next_visit[batch.has_next])
    return loss


def code_log_freq(seqs: Sequences, index) -> torch.Tensor:
    """Log training frequency of every code (add-one smoothed; specials -inf)."""
    counts = code_counts(seqs, index) + 1.0
    counts[:N_SPECIAL] = 0.0
    with np.errstate(divide="ignore"):
        return torch.from_numpy(np.log(counts / counts.sum())).float()


def ranking_sums(scores: torch.Tensor, target: torch.Tensor, k: int = 10) -> tuple[float, float]:
    """Sums over rows of recall@k and of average precision (area under the per-patient
    precision-recall curve) of ``scores`` against the 0/1 ``target`` (rows with >= 1 code)."""
    n_pos = target.sum(1)
    hits_k = target.gather(1, scores.topk(min(k, scores.shape[1]), 1).indices).sum(1)
    hit = target.gather(1, scores.argsort(1, descending=True))
    prec = hit.cumsum(1) / torch.arange(1, hit.shape[1] + 1, device=hit.device)
    return float((hits_k / n_pos).sum()), float(((prec * hit).sum(1) / n_pos).sum())


@torch.no_grad()
def evaluate_pretraining(model: nn.Module, loader, log_freq: torch.Tensor,
                         device: torch.device, mlm_weight: float = 1.0,
                         next_visit_weight: float = 1.0, tte_weight: float = 0.0,
                         edges: torch.Tensor | None = None, lab_state_weight: float = 0.0
                         ) -> dict[str, float]:
    """Model and baseline metrics over ``loader`` (a :class:`PretrainDataset` with
    ``last_visit=True``): MLM accuracy and perplexity, next-visit recall@10 and AUPRC, the
    time-to-event NLL per (patient, task) against the marginal rates' (``tte_nll_rate``), the
    lab state's mean squared error against predicting 0 (``lab_state_mse_zero``), loss."""
    was = model.training
    model.eval()
    lf = log_freq.to(device)
    s = dict.fromkeys(["nll", "acc", "nll_freq", "acc_freq", "n_mask", "nv", "n_next", "r10",
                       "ap", "r10_freq", "ap_freq", "r10_prev", "ap_prev", "tte", "tte_rate",
                       "n_tte", "lab", "lab_zero", "n_lab"], 0.0)
    for batch in loader:
        batch = batch.to(device)
        mlm, nxt, tte, lab = model(batch)
        if lab is not None:
            for k, v in zip(("lab", "lab_zero", "n_lab"), lab_state_sums(lab),
                            strict=True):
                s[k] += float(v)
        if tte is not None:
            s["tte"] += float(tte_loss(tte, batch.tte_time, batch.tte_event, edges, "sum"))
            base = model.tte.log_rate.expand_as(tte)
            s["tte_rate"] += float(tte_loss(base, batch.tte_time, batch.tte_event, edges, "sum"))
            s["n_tte"] += batch.tte_time.numel()
        labels = batch.mlm_labels[batch.mlm_labels != IGNORE]
        s["nll"] += float(F.cross_entropy(mlm.float(), labels, reduction="sum"))
        s["acc"] += float((mlm.argmax(1) == labels).sum())
        s["nll_freq"] -= float(lf[labels].sum())
        s["acc_freq"] += float((labels == lf.argmax()).sum())
        s["n_mask"] += labels.numel()
        hn = batch.has_next
        if not bool(hn.any()):
            continue
        target, scores = batch.next_visit[hn], nxt[hn].float()
        scores[:, :N_SPECIAL] = -torch.inf
        s["nv"] += float(next_visit_loss(nxt[hn], target, reduction="sum"))
        s["n_next"] += int(hn.sum())
        freq = lf.expand_as(target)
        for name, sc in (("", scores), ("_freq", freq), ("_prev", batch.last_visit[hn] * 1e3 + freq)):
            r10, ap = ranking_sums(sc, target)
            s["r10" + name] += r10
            s["ap" + name] += ap
    model.train(was)
    m, n, k, j = (max(s[c], 1) for c in ("n_mask", "n_next", "n_tte", "n_lab"))
    out = {"loss": mlm_weight * s["nll"] / m + next_visit_weight * s["nv"] / n
           + tte_weight * s["tte"] / k + lab_state_weight * s["lab"] / j,
           "mlm_masked_tokens": s["n_mask"], "next_visit_patients": s["n_next"]}
    if s["n_tte"]:
        out["tte_nll"], out["tte_nll_rate"] = s["tte"] / k, s["tte_rate"] / k
    if s["n_lab"]:
        out["lab_state_mse"], out["lab_state_mse_zero"] = s["lab"] / j, s["lab_zero"] / j
    for sfx in ("", "_freq"):
        out[f"mlm_accuracy{sfx}"] = s["acc" + sfx] / m
        out[f"mlm_perplexity{sfx}"] = float(np.exp(s["nll" + sfx] / m))
    for sfx in ("", "_freq", "_prev"):
        out[f"next_visit_recall_at_10{sfx}"] = s["r10" + sfx] / n
        out[f"next_visit_auprc{sfx}"] = s["ap" + sfx] / n
    return out


def pretraining_metrics(res: dict[str, float], mlm: bool, tte_tasks: int) -> dict:
    """The stage's metrics from :func:`evaluate_pretraining`'s ``res``: the objectives trained
    (``mlm``; ``tte_tasks`` > 0; the lab state where measured), with margins over the
    baselines; an objective not trained is not reported (its head is untrained)."""
    m = {"val.loss": res["loss"]}
    if mlm:
        m |= {f"val.{k}": v for k, v in res.items()
              if not k.startswith(("tte_", "lab_state_"))}
        m["val.mlm_accuracy_margin"] = res["mlm_accuracy"] - res["mlm_accuracy_freq"]
        m["val.mlm_perplexity_ratio"] = res["mlm_perplexity"] / res["mlm_perplexity_freq"]
        for k in ("next_visit_recall_at_10", "next_visit_auprc"):
            m[f"val.{k}_margin"] = res[k] - max(res[f"{k}_freq"], res[f"{k}_prev"])
    if tte_tasks:
        m |= {"val.tte_nll": res["tte_nll"], "val.tte_nll_rate": res["tte_nll_rate"],
              "val.tte_nll_margin": res["tte_nll_rate"] - res["tte_nll"],
              "tte_tasks": tte_tasks}
    if "lab_state_mse" in res:
        m |= {"val.lab_state_mse": res["lab_state_mse"],
              "val.lab_state_mse_zero": res["lab_state_mse_zero"],
              "val.lab_state_mse_margin": res["lab_state_mse_zero"] - res["lab_state_mse"]}
    return m
