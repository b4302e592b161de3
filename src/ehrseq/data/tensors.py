"""Tensor-ready sequences: load the ``sequences`` contract and build padded batches.

A batch is gathered with offset arithmetic in NumPy (no Python loop per patient, visit or
event). Only each patient's first ``landmark_visits`` visits are ever read, and of those the
most recent ``max_visits`` (one number, or one per row: the ``input_visits`` window that every
model shares), so nothing after the landmark can reach a model.

Typical use::

    seqs = Sequences.load("data/processed/sequences")
    ds = SequenceDataset(seqs, out.index, out.landmark_visits, out.duration, out.event, cuts)
    loader = make_loader(ds, batch_size=64, shuffle=True, seed=0)
    for batch in loader:            # a Batch of torch tensors
        logits = model(batch.to(device))
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..io import InputError

NUMERIC_BIN = re.compile(r":q\d+$")   # a value's quantile-bin token: LOINC/8480-6:q3
ARRAYS = {
    "codes": np.int32,
    "visit_offsets": np.int64,
    "patient_offsets": np.int64,
    "visit_time": np.float64,
    "visit_age": np.float32,
    "values": np.float32,
}


@dataclass
class Sequences:
    """The arrays of ``data/processed/sequences/`` (see docs/architecture.md)."""

    codes: np.ndarray
    visit_offsets: np.ndarray
    patient_offsets: np.ndarray
    visit_time: np.ndarray
    visit_age: np.ndarray
    patients: pd.DataFrame
    vocab: dict
    values: np.ndarray | None = None   # float32 per token; NaN = no value (None: all NaN)
    value_stats: dict | None = None    # values.json: per numeric code its training mean, sd

    def __post_init__(self):
        if self.values is None:
            self.values = np.full(len(self.codes), np.nan, np.float32)

    @property
    def has_values(self) -> bool:
        """Whether any token carries a numeric value."""
        return bool(np.isfinite(self.values).any())

    @classmethod
    def load(cls, path: str | Path, mmap: bool = True) -> Sequences:
        """Load and check a sequences directory; ``mmap`` maps the arrays instead of reading."""
        path = Path(path)
        arrays = {}
        for name, dtype in ARRAYS.items():
            f = path / f"{name}.npy"
            if not f.exists():
                raise InputError(f"{f}: missing (the sequences stage writes it)")
            a = np.load(f, mmap_mode="r" if mmap else None, allow_pickle=False)
            if a.ndim != 1 or a.dtype != dtype:
                raise InputError(f"{f}: expected a 1-D {np.dtype(dtype)} array, "
                                 f"got {a.dtype} with shape {a.shape}")
            arrays[name] = a
        for name in ("patients.parquet", "vocab.json"):
            if not (path / name).exists():
                raise InputError(f"{path / name}: missing (the sequences stage writes it)")
        stats = path / "values.json"
        seqs = cls(**arrays, patients=pd.read_parquet(path / "patients.parquet"),
                   vocab=json.loads((path / "vocab.json").read_text()),
                   value_stats=json.loads(stats.read_text()) if stats.exists() else None)
        seqs.check(path)
        return seqs

    def check(self, path: str | Path = "sequences") -> None:
        """Raise :class:`InputError` naming the file whose shape or offsets are inconsistent."""
        path = Path(path)
        vo, po = self.visit_offsets, self.patient_offsets
        n_vis, n_pat = len(vo) - 1, len(po) - 1

        def bad(name, msg):
            raise InputError(f"{path / name}: {msg}")

        if len(vo) < 1 or vo[0] != 0 or vo[-1] != len(self.codes):
            bad("visit_offsets.npy", f"must start at 0 and end at len(codes)={len(self.codes)}")
        if len(po) < 1 or po[0] != 0 or po[-1] != n_vis:
            bad("patient_offsets.npy", f"must start at 0 and end at the visit count {n_vis}")
        for name, off in (("visit_offsets.npy", vo), ("patient_offsets.npy", po)):
            if (np.diff(off) < 0).any():
                bad(name, f"decreasing at row {int(np.argmax(np.diff(off) < 0))}")
        for name in ("visit_time", "visit_age"):
            if len(getattr(self, name)) != n_vis:
                bad(f"{name}.npy", f"has {len(getattr(self, name))} rows, expected {n_vis}")
        if len(self.values) != len(self.codes):
            bad("values.npy", f"has {len(self.values)} rows, expected one per token "
                f"({len(self.codes)}, codes.npy)")
        if len(self.patients) != n_pat:
            bad("patients.parquet", f"has {len(self.patients)} rows, patient_offsets {n_pat}")
        if len(self.codes) and (int(self.codes.min()) < 0
                                or int(self.codes.max()) >= self.vocab_size):
            bad("codes.npy", f"token ids must lie in [0, {self.vocab_size}) (vocab.json)")

    def save(self, path: str | Path) -> None:
        """Write the contract's files into ``path`` (used by tests and tools)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for name, dtype in ARRAYS.items():
            np.save(path / f"{name}.npy", np.asarray(getattr(self, name), dtype=dtype))
        self.patients.to_parquet(path / "patients.parquet", index=False)
        (path / "vocab.json").write_text(json.dumps(self.vocab))
        if self.value_stats is not None:
            (path / "values.json").write_text(json.dumps(self.value_stats))

    @classmethod
    def load_pretraining(cls, path: str | Path, resplit=None
                         ) -> tuple[Sequences, np.ndarray, np.ndarray]:
        """What pre-training reads: the cohort's sequences at ``path`` and, when the sequences
        stage wrote one (``pretrain.corpus``), its corpus (``path/corpus``) after them, as one
        :class:`Sequences`; its training rows (the training split and the corpus) and its
        validation rows. Test patients are in neither. ``resplit(patients)``: other splits
        (a cross-fitting fold's, :func:`ehrseq.data.folds.refold`)."""
        seqs = cls.load(path)
        if (Path(path) / "corpus").is_dir():
            seqs = seqs.concat(cls.load(Path(path) / "corpus"))
        if resplit is not None:
            seqs.patients = resplit(seqs.patients)
        split = seqs.patients["split"].to_numpy()
        return (seqs, np.flatnonzero(np.isin(split, ["train", "corpus"])),
                np.flatnonzero(split == "val"))

    def concat(self, other: Sequences) -> Sequences:
        """This cohort's patients, then ``other``'s (the pre-training corpus, encoded with the
        same vocabulary by the sequences stage), as one in-memory :class:`Sequences`."""
        if other.vocab["tokens"] != self.vocab["tokens"]:
            raise InputError("a corpus must be encoded with the cohort's own vocabulary "
                             "(the sequences stage writes both)")
        vo, po = self.visit_offsets, self.patient_offsets
        return Sequences(
            codes=np.concatenate([self.codes, other.codes]),
            visit_offsets=np.concatenate([vo, other.visit_offsets[1:] + vo[-1]]),
            patient_offsets=np.concatenate([po, other.patient_offsets[1:] + po[-1]]),
            visit_time=np.concatenate([self.visit_time, other.visit_time]),
            visit_age=np.concatenate([self.visit_age, other.visit_age]),
            patients=pd.concat([self.patients, other.patients], ignore_index=True),
            vocab=self.vocab, values=np.concatenate([self.values, other.values]),
            value_stats=self.value_stats)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab["tokens"])

    @property
    def n_patients(self) -> int:
        return len(self.patient_offsets) - 1

    @property
    def n_visits(self) -> np.ndarray:
        """Visits per patient."""
        return np.diff(self.patient_offsets)


def value_code_ids(seqs: Sequences) -> np.ndarray:
    """Token id -> the index of its numeric code in ``values.json`` (-1: a token that carries no
    value). With quantile bins (``sequences.numeric_bins``) a value's token is its bin,
    ``LOINC/8480-6:q3``, and the bare code is the token of an observation without a value: only
    the bin tokens map. Without bins the bare code carries the value."""
    index = {c: i for i, c in enumerate((seqs.value_stats or {}).get("codes", []))}
    tokens = seqs.vocab["tokens"]
    binned = {NUMERIC_BIN.sub("", t) for t in tokens if NUMERIC_BIN.search(t)}
    return np.array([index.get(NUMERIC_BIN.sub("", t), -1)
                     if NUMERIC_BIN.search(t) or t not in binned else -1 for t in tokens],
                    np.int64)


def value_changes(patient: torch.Tensor, code: torch.Tensor, values: torch.Tensor,
                  n_codes: int) -> torch.Tensor:
    """Per token (flat tensors in time order within each patient): its value minus the value
    of the same ``patient``'s previous token of the same numeric ``code`` (-1: a token without
    a value, left at 0), a lab value's change since its last measurement; 0 for a first one.
    ``n_codes``: more than the largest code. No host sync (it runs in forward passes on a GPU):
    every token is sorted by the key ``patient * n_codes + code``, stable, so tokens come in
    time order within a key."""
    key = torch.where(code >= 0, patient * n_codes + code, -1)
    key, order = torch.sort(key, stable=True)
    same = (key[1:] == key[:-1]) & (key[1:] >= 0)
    cur, prev = order[1:], order[:-1]
    out = torch.zeros_like(values)
    out[cur] = torch.where(same, values[cur] - values[prev], 0.0)
    return out


def set_value_codes(model: torch.nn.Module, seqs: Sequences) -> torch.nn.Module:
    """Give every module inside ``model`` that reads value changes (a ``value_code`` buffer:
    the survival LSTM, BEHRT) the token -> numeric code map of ``seqs``
    (:func:`value_code_ids`); returns ``model``."""
    ids = torch.from_numpy(value_code_ids(seqs))
    for m in model.modules():
        code = getattr(m, "value_code", None)
        if isinstance(code, torch.Tensor):
            if len(ids) != len(code):
                raise ValueError(f"the vocabulary has {len(ids)} tokens, the model {len(code)}")
            code.copy_(ids)
    return model


def uses_values(wanted: bool | str, seqs: Sequences, key: str, given: str = "true",
                off: str = "false") -> bool:
    """A parameter that reads numeric values (``key``: ``model.behrt.values``,
    ``pretrain.lab_state_weight``, ...) checked against the data: ``auto`` reads values when a
    token carries one; wanted with no token carrying one (no numeric observation) is an
    :class:`InputError` naming the key, its value (``given``) and the setting that turns it off
    (``off``)."""
    if wanted == "auto":
        return seqs.has_values
    if wanted and not seqs.has_values:
        raise InputError(f"{key}: {given}, but no token of the sequences carries a numeric "
                         "value (values.npy is all NaN): keep 'observation' in "
                         "sequences.event_kinds, use data with numeric observations, or set "
                         f"{key}: {off}")
    return bool(wanted)


def ranges(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate ``arange(s, s + l)`` for every pair without a loop.

    Returns (values, owner, within): the concatenated indices, which pair each came from and
    its position inside that pair's range.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    first = np.cumsum(lengths) - lengths
    within = np.arange(int(lengths.sum()), dtype=np.int64) - first[owner]
    return np.asarray(starts, dtype=np.int64)[owner] + within, owner, within


@dataclass
class Batch:
    """Padded tensors for B patients and V visits (left-aligned: visit ``lengths-1`` is the
    landmark visit).

    Codes come flat for :class:`torch.nn.EmbeddingBag`: visit (b, v) holds
    ``tokens[bag_offsets[b*V+v] : bag_offsets[b*V+v] + visit_counts[b, v]]``; padded visits
    are empty bags. :meth:`padded_codes` gives the ``[B, V, C]`` layout instead.
    """

    tokens: torch.Tensor        # int64 [T]
    bag_offsets: torch.Tensor   # int64 [B*V]
    visit_counts: torch.Tensor  # int64 [B, V] codes per visit (0 = padding)
    visit_mask: torch.Tensor    # bool [B, V]
    lengths: torch.Tensor       # int64 [B] visits kept per patient (>= 1)
    age: torch.Tensor           # float32 [B, V] years
    gap_days: torch.Tensor      # float32 [B, V] days since the previous visit (0 for a first)
    values: torch.Tensor        # float32 [T] each token's normalised value (0: none)
    index: torch.Tensor         # int64 [B] patient row in the sequences arrays
    rows: torch.Tensor          # int64 [B] row in the dataset (to put predictions back)
    duration: torch.Tensor | None = None    # float32 [B] days from the landmark
    event: torch.Tensor | None = None       # float32 [B] 0/1
    target_bin: torch.Tensor | None = None  # int64 [B] time bin (see models.losses)
    target_event: torch.Tensor | None = None  # float32 [B] event within the last bin edge

    @property
    def n_patients(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    def _map(self, fn) -> Batch:
        return Batch(**{f.name: None if (v := getattr(self, f.name)) is None else fn(v)
                        for f in fields(self)})

    def to(self, device, non_blocking: bool = False) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True)."""
        return self._map(lambda t: t.pin_memory())

    def value_deltas(self, value_code: torch.Tensor) -> torch.Tensor:
        """Per token ``[T]``: its value minus the value of the same patient's previous token of
        the same numeric code within the batch's visits (the input window), a lab value's
        change since its last measurement; 0 for a first measurement and for a token without a
        value. ``value_code``: token id -> numeric code (-1: none, :func:`value_code_ids`)."""
        b, v = self.visit_counts.shape
        bag = torch.repeat_interleave(torch.arange(b * v, device=self.tokens.device),
                                      self.visit_counts.reshape(-1).to(self.tokens.device),
                                      output_size=self.n_tokens)
        return value_changes(bag // max(v, 1), value_code[self.tokens], self.values,
                             value_code.numel())

    def padded_codes(self, flat: torch.Tensor | None = None) -> torch.Tensor:
        """Codes (or ``flat``, any per-token tensor such as ``values``) as ``[B, V, C]`` with
        0 padding, C = the longest visit."""
        flat = self.tokens if flat is None else flat
        b, v = self.visit_counts.shape
        counts = self.visit_counts.reshape(-1)
        c = int(counts.max()) if counts.numel() else 0
        out = torch.zeros(b * v, max(c, 1), dtype=flat.dtype, device=flat.device)
        bag = torch.repeat_interleave(torch.arange(b * v, device=counts.device), counts)
        within = torch.arange(self.n_tokens, device=counts.device) - self.bag_offsets[bag]
        out[bag, within] = flat
        return out.view(b, v, -1)


def build_batch(seqs: Sequences, index, landmark_visits, max_visits=None,
                rows=None) -> Batch:
    """Gather patients ``index`` using only their first ``landmark_visits`` visits.

    Of those visits the most recent ``max_visits`` (an int or one per patient) are kept.
    Raises ``ValueError`` when a
    landmark asks for fewer than 1 or more visits than the patient has.
    """
    p = np.asarray(index, dtype=np.int64)
    lm = np.asarray(landmark_visits, dtype=np.int64)
    po, vo = seqs.patient_offsets, seqs.visit_offsets
    first_visit = np.asarray(po[p])
    n_vis = np.asarray(po[p + 1]) - first_visit
    bad = np.flatnonzero((lm < 1) | (lm > n_vis))
    if len(bad):
        i = bad[0]
        raise ValueError(f"patient row {p[i]}: landmark_visits={lm[i]} but the patient has "
                         f"{n_vis[i]} visits (accepted: 1..n_visits)")
    keep = lm if max_visits is None else np.minimum(lm, max_visits)
    vis, row, pos = ranges(first_visit + lm - keep, keep)
    bsz, vmax = len(p), int(keep.max()) if len(keep) else 0

    age = np.zeros((bsz, vmax), np.float32)
    age[row, pos] = seqs.visit_age[vis]
    prev = np.where(vis > first_visit[row], vis - 1, vis)
    gap = np.zeros((bsz, vmax), np.float32)
    gap[row, pos] = seqs.visit_time[vis] - seqs.visit_time[prev]

    vstart = np.asarray(vo[vis])
    counts = np.asarray(vo[vis + 1]) - vstart
    tok, _, _ = ranges(vstart, counts)
    grid = np.zeros((bsz, vmax), np.int64)
    grid[row, pos] = counts
    flat = grid.reshape(-1)
    offsets = np.cumsum(flat) - flat
    t = torch.from_numpy
    return Batch(
        tokens=t(np.asarray(seqs.codes[tok], dtype=np.int64)),
        bag_offsets=t(offsets),
        visit_counts=t(grid),
        visit_mask=t(np.arange(vmax)[None, :] < keep[:, None]),
        lengths=t(keep),
        age=t(age),
        gap_days=t(gap),
        values=t(np.nan_to_num(np.asarray(seqs.values[tok], dtype=np.float32), nan=0.0)),
        index=t(p),
        rows=t(np.arange(bsz, dtype=np.int64) if rows is None else np.asarray(rows, np.int64)),
    )


class SequenceDataset(torch.utils.data.Dataset):
    """Patients with a landmark and optional survival targets; indexed by a list of rows.

    ``dataset[rows]`` returns a whole :class:`Batch`, so a DataLoader is built with
    ``batch_size=None`` and a batch sampler as its ``sampler`` (see :func:`make_loader`).
    ``cuts`` (time-bin edges in days) adds ``target_bin``/``target_event`` via
    :func:`ehrseq.survival.bins.bin_targets`.
    """

    def __init__(self, seqs: Sequences, index, landmark_visits, duration=None, event=None,
                 cuts: Sequence[float] | None = None, max_visits=None):
        self.seqs = seqs
        self.index = np.asarray(index, dtype=np.int64)
        self.landmark_visits = np.asarray(landmark_visits, dtype=np.int64)
        if len(self.index) != len(self.landmark_visits):
            raise ValueError("index and landmark_visits differ in length")
        if len(self.index) and (self.index.min() < 0 or self.index.max() >= seqs.n_patients):
            raise ValueError(f"index must lie in [0, {seqs.n_patients}) (sequences patients)")
        if max_visits is not None and np.ndim(max_visits):   # one window per row
            max_visits = np.asarray(max_visits, np.int64)
            if max_visits.shape != self.index.shape or (max_visits < 1).any():
                raise ValueError("max_visits: one value >= 1 per row expected")
        self.max_visits = max_visits
        self.duration = None if duration is None else np.asarray(duration, np.float32)
        self.event = None if event is None else np.asarray(event, np.float32)
        self.target_bin = self.target_event = None
        if cuts is not None:
            if self.duration is None or self.event is None:
                raise ValueError("cuts need duration and event")
            from ..survival.bins import bin_targets

            self.target_bin, self.target_event = bin_targets(self.duration, self.event, cuts)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def lengths(self) -> np.ndarray:
        """Visits each row contributes (what bucketing sorts on)."""
        lm = self.landmark_visits
        return lm if self.max_visits is None else np.minimum(lm, self.max_visits)

    def __getitem__(self, rows) -> Batch:
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        mv = self.max_visits
        batch = build_batch(self.seqs, self.index[rows], self.landmark_visits[rows],
                            mv if mv is None or np.ndim(mv) == 0 else mv[rows], rows=rows)
        for name in ("duration", "event", "target_bin", "target_event"):
            arr = getattr(self, name)
            if arr is not None:
                setattr(batch, name, torch.from_numpy(np.ascontiguousarray(arr[rows])))
        return batch


class BucketBatchSampler:
    """Batches of rows of similar length, reshuffled per epoch, sharded by rank.

    Shuffled rows are cut into pools of ``batch_size * pool_batches``; each pool is sorted by
    length and split into batches, and the batch order is shuffled. Without shuffling rows are
    sorted by length overall (the least padding; inference). Every rank builds the same batch
    list from (seed, epoch) and takes every ``world_size``-th batch; the list is padded by
    repeating its first batches (or cut, with ``drop_last``) so all ranks run equally many.
    """

    def __init__(self, lengths, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 pool_batches: int = 50, drop_last: bool = False, rank: int = 0,
                 world_size: int = 1):
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got "
                             f"batch_size={batch_size}, rank={rank}, world_size={world_size}")
        self.lengths = np.asarray(lengths)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.pool_batches, self.drop_last = pool_batches, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch, self._skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_batches(self, n: int) -> None:
        """Start the next iteration at this rank's batch ``n`` (mid-epoch resume)."""
        self._skip = n

    def _all_batches(self) -> list[np.ndarray]:
        n, bs = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            return [order[i:i + bs] for i in range(0, n, bs)]
        rng = np.random.default_rng([self.seed, self.epoch])
        perm = rng.permutation(n)
        pool = bs * self.pool_batches
        batches = []
        for start in range(0, n, pool):   # one iteration per pool of batches, not per row
            chunk = perm[start:start + pool]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i:i + bs] for i in range(0, len(chunk), bs)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def _batches(self) -> list[np.ndarray]:
        batches = self._all_batches()
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
            batches = batches[:len(batches) - len(batches) % self.world_size]
        elif batches and len(batches) % self.world_size:
            extra = self.world_size - len(batches) % self.world_size
            batches += (batches * extra)[:extra]
        return batches[self.rank::self.world_size]

    def __iter__(self) -> Iterator[np.ndarray]:
        skip, self._skip = self._skip, 0
        yield from self._batches()[skip:]

    def __len__(self) -> int:
        return len(self._batches())


def make_loader(dataset: SequenceDataset, batch_size: int, *, shuffle: bool = False,
                seed: int = 0, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                pin_memory: bool | None = None, drop_last: bool = False,
                ) -> torch.utils.data.DataLoader:
    """A DataLoader of :class:`Batch` built with a :class:`BucketBatchSampler`.

    Workers build whole batches; ``pin_memory`` defaults to on when CUDA is available. The
    loader has its own seeded generator, so iterating it never draws from the global RNG.
    """
    sampler = BucketBatchSampler(dataset.lengths, batch_size, shuffle=shuffle, seed=seed,
                                 rank=rank, world_size=world_size, drop_last=drop_last)
    return torch.utils.data.DataLoader(
        dataset, sampler=sampler, batch_size=None, num_workers=num_workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


def toy_sequences(n_patients: int = 100, vocab_size: int = 50, max_visits: int = 12,
                  max_codes: int = 6, seed: int = 0) -> Sequences:
    """A small random cohort in the sequences contract (tests, benchmarks, size estimates)."""
    rng = np.random.default_rng(seed)
    n_vis = rng.integers(1, max_visits + 1, n_patients)
    n_codes = rng.integers(1, max_codes + 1, int(n_vis.sum()))
    po = np.concatenate([[0], np.cumsum(n_vis)]).astype(np.int64)
    vo = np.concatenate([[0], np.cumsum(n_codes)]).astype(np.int64)
    owner = np.repeat(np.arange(n_patients), n_vis)
    first = po[:-1][owner]
    gaps = rng.exponential(60.0, len(owner)) * (np.arange(len(owner)) != first)
    start = rng.uniform(15_000, 18_000, n_patients)[owner]
    cum = np.cumsum(gaps)
    visit_time = start + cum - cum[first]
    birth = rng.uniform(-10_000, 10_000, n_patients)
    specials = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    tokens = list(specials) + [f"TOY/{i}" for i in range(len(specials), vocab_size)]
    return Sequences(
        codes=rng.integers(len(specials), vocab_size, int(n_codes.sum())).astype(np.int32),
        visit_offsets=vo, patient_offsets=po, visit_time=visit_time,
        visit_age=((visit_time - birth[owner]) / 365.25).astype(np.float32),
        patients=pd.DataFrame({"patient": [f"p{i}" for i in range(n_patients)],
                               "split": rng.choice(["train", "val", "test"], n_patients),
                               "n_visits": n_vis}),
        vocab={"tokens": tokens, "counts": [0] * vocab_size, "specials": specials},
    )
