"""Sequences loading, the vectorised batch builder and the bucketing sampler."""

import numpy as np
import pandas as pd
import pytest
import torch

from ehrseq.data.tensors import (
    BucketBatchSampler,
    SequenceDataset,
    Sequences,
    build_batch,
    make_loader,
    toy_sequences,
)
from ehrseq.io import InputError


@pytest.fixture
def seqs(tmp_path):
    toy_sequences(60, vocab_size=40, max_visits=10, seed=3).save(tmp_path / "seq")
    return Sequences.load(tmp_path / "seq")


def _landmarks(seqs, seed=0):
    rng = np.random.default_rng(seed)
    return np.floor(rng.uniform(1, seqs.n_visits + 1)).astype(int)


def _reference(seqs, p, lm, max_visits):
    """Plain-Python version of the batch builder, for comparison."""
    first = seqs.patient_offsets[p]
    keep = range(first + max(0, lm - max_visits), first + lm)
    codes = [list(seqs.codes[seqs.visit_offsets[v]:seqs.visit_offsets[v + 1]]) for v in keep]
    gaps = [seqs.visit_time[v] - seqs.visit_time[v - 1] if v > first else 0.0 for v in keep]
    return codes, [seqs.visit_age[v] for v in keep], gaps


def test_load_round_trip_and_bad_offsets(tmp_path, seqs):
    assert seqs.n_patients == 60 and seqs.vocab_size == 40
    assert seqs.codes.dtype == np.int32 and seqs.visit_offsets[-1] == len(seqs.codes)
    bad = toy_sequences(5, seed=1)
    bad.patient_offsets = bad.patient_offsets.copy()
    bad.patient_offsets[-1] += 1
    bad.save(tmp_path / "bad")
    with pytest.raises(InputError, match="patient_offsets.npy"):
        Sequences.load(tmp_path / "bad")
    (tmp_path / "bad" / "codes.npy").unlink()
    with pytest.raises(InputError, match="codes.npy: missing"):
        Sequences.load(tmp_path / "bad")


def test_batch_matches_plain_python_reference(seqs):
    lm = _landmarks(seqs)
    rows = np.array([5, 0, 17, 33, 59, 2])
    b = build_batch(seqs, rows, lm[rows], max_visits=4, rows=rows)
    codes3 = b.padded_codes()
    for i, p in enumerate(rows):
        codes, ages, gaps = _reference(seqs, p, lm[p], 4)
        n = len(codes)
        assert b.lengths[i] == n and b.visit_mask[i].sum() == n
        assert np.allclose(b.age[i, :n], ages) and (b.age[i, n:] == 0).all()
        assert np.allclose(b.gap_days[i, :n], gaps, atol=1e-3)
        for v, c in enumerate(codes):
            assert b.visit_counts[i, v] == len(c)
            start = b.bag_offsets[i * b.visit_mask.shape[1] + v]
            assert b.tokens[start:start + len(c)].tolist() == c
            assert codes3[i, v, :len(c)].tolist() == c and (codes3[i, v, len(c):] == 0).all()
    assert b.n_tokens == int(b.visit_counts.sum())


def test_batch_never_reads_visits_after_the_landmark(seqs):
    lm = np.minimum(_landmarks(seqs), np.maximum(seqs.n_visits - 1, 1))
    rows = np.flatnonzero(lm < seqs.n_visits)
    before = build_batch(seqs, rows, lm[rows], max_visits=6)
    # Rewrite every visit after each landmark: codes, times and ages.
    po, vo = seqs.patient_offsets, seqs.visit_offsets
    after = np.zeros(len(seqs.visit_time), bool)
    for p in rows:
        after[po[p] + lm[p]:po[p + 1]] = True
    token_after = np.repeat(after, np.diff(vo))
    changed = Sequences(
        codes=np.where(token_after, 7, np.asarray(seqs.codes)).astype(np.int32),
        visit_offsets=vo, patient_offsets=po,
        visit_time=np.where(after, 0.0, seqs.visit_time),
        visit_age=np.where(after, 99.0, seqs.visit_age).astype(np.float32),
        patients=seqs.patients, vocab=seqs.vocab)
    assert token_after.any()
    later = build_batch(changed, rows, lm[rows], max_visits=6)
    for name in ("tokens", "bag_offsets", "visit_counts", "age", "gap_days", "lengths"):
        assert torch.equal(getattr(before, name), getattr(later, name)), name


def test_landmark_out_of_range_is_refused(seqs):
    with pytest.raises(ValueError, match="landmark_visits"):
        build_batch(seqs, [0], [seqs.n_visits[0] + 1])
    with pytest.raises(ValueError, match="landmark_visits"):
        build_batch(seqs, [0], [0])


def test_dataset_targets_and_loader(seqs):
    rng = np.random.default_rng(1)
    n = seqs.n_patients
    ds = SequenceDataset(seqs, np.arange(n), _landmarks(seqs), rng.uniform(1, 900, n),
                         rng.integers(0, 2, n), cuts=[0, 100, 300, 600])
    seen = []
    for batch in make_loader(ds, 16, shuffle=True, seed=0):
        assert batch.target_bin.dtype == torch.int64 and batch.target_bin.max() <= 2
        assert batch.duration.shape == batch.lengths.shape
        seen += batch.rows.tolist()
    assert sorted(seen) == list(range(n))


def test_bucketing_reduces_padding_and_reshuffles():
    lengths = np.random.default_rng(0).integers(1, 200, 2000)
    s = BucketBatchSampler(lengths, 32, shuffle=True, seed=1, pool_batches=20)
    padded = sum(len(b) * lengths[b].max() for b in s)
    rand = np.random.default_rng(2).permutation(2000)
    padded_random = sum(32 * lengths[rand[i:i + 32]].max() for i in range(0, 2000, 32))
    assert padded < 0.75 * padded_random
    first = [b.tolist() for b in s]
    assert first == [b.tolist() for b in s]  # same epoch, same batches
    s.set_epoch(1)
    assert first != [b.tolist() for b in s]
    assert sorted(np.concatenate([np.array(b) for b in first]).tolist()) == list(range(2000))
    s.skip_batches(3)
    assert [b.tolist() for b in s] == [b.tolist() for b in list(s)][3:]


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_shards_by_rank(drop_last):
    lengths = np.arange(103)
    shards = [list(BucketBatchSampler(lengths, 8, seed=5, rank=r, world_size=3,
                                      drop_last=drop_last)) for r in range(3)]
    assert len({len(s) for s in shards}) == 1  # every rank runs the same number of steps
    rows = np.concatenate([b for s in shards for b in s])
    if drop_last:
        assert len(rows) == len(set(rows.tolist()))
    else:
        assert set(rows.tolist()) == set(range(103))


def test_values_asked_of_data_without_any_is_a_parameter_error():
    from ehrseq.data.tensors import uses_values
    from ehrseq.io import InputError

    seqs = toy_sequences(10)                       # no token carries a value
    key = "model.lstm.values"
    assert uses_values(False, seqs, key) is False and uses_values("auto", seqs, key) is False
    with pytest.raises(InputError, match=r"model.lstm.values: true.*sequences.event_kinds"):
        uses_values(True, seqs, key)
    seqs.values[3] = 0.5
    assert uses_values(True, seqs, key) is True and uses_values("auto", seqs, key) is True
    assert uses_values(False, seqs, key) is False


def test_value_deltas_follow_each_patients_codes_in_the_window():
    """A lab value's change since the same patient's previous value of its code (bins of one
    code are one code; the bare code of a binned lab carries no value); 0 for a first
    measurement, at a new patient and at a window's first visit."""
    from ehrseq.data.tensors import build_batch, value_code_ids

    nan = np.nan
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "LOINC/1:q0", "LOINC/1:q1",
              "LOINC/1", "LOINC/2", "SNOMED/9"]
    #          p0: v0 [q0=1.0, L2=3.0], v1 [q1=2.5, L1 bare, S9], v2 [L2=2.0]; p1: v0 [q1=-1], v1 [q0=0]
    codes = np.array([5, 8, 6, 7, 9, 8, 6, 5], np.int32)
    values = np.array([1.0, 3.0, 2.5, nan, nan, 2.0, -1.0, 0.0], np.float32)
    seqs = Sequences(
        codes=codes, visit_offsets=np.array([0, 2, 5, 6, 7, 8]),
        patient_offsets=np.array([0, 3, 5]),
        visit_time=np.array([0.0, 10, 20, 0, 5]), visit_age=np.full(5, 50.0, np.float32),
        patients=pd.DataFrame({"patient": ["a", "b"], "split": "train", "n_visits": [3, 2]}),
        vocab={"tokens": tokens, "counts": [0] * len(tokens),
               "specials": {t: i for i, t in enumerate(tokens[:5])}},
        values=values,
        value_stats={"codes": ["LOINC/1", "LOINC/2"], "mean": [0, 0], "sd": [1, 1]})
    ids = value_code_ids(seqs)
    assert ids.tolist() == [-1] * 5 + [0, 0, -1, 1, -1]
    code = torch.from_numpy(ids)
    b = build_batch(seqs, [0, 1], [3, 2])
    assert b.value_deltas(code).tolist() == pytest.approx([0, 0, 1.5, 0, 0, -1.0, 0, 1.0])
    b = build_batch(seqs, [0, 1], [3, 2], max_visits=2)   # p0: its last two visits
    assert b.value_deltas(code).tolist() == pytest.approx([0, 0, 0, 0, 0, 1.0])
