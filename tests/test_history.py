"""One history for all: count features, the LSTM, BEHRT, Med2Vec and the synthetic truth read
the same visits of every landmark (``outcome.history``), and the datasets are wired to the
landmark's visits, never to all of a patient's visits."""

import numpy as np
import pytest
from conftest import ingested

from ehrseq.data.task import SurvivalTask
from ehrseq.data.tensors import Sequences, build_batch
from ehrseq.models.behrt import BEHRTDataset
from ehrseq.models.med2vec import Med2VecSurvivalDataset
from ehrseq.outcomes.build import build_outcomes
from ehrseq.outcomes.landmarks import input_window, landmark_tokens
from ehrseq.params import OutcomeParams, ParamsError, parse_params

SPECIAL = 5
HISTORY = {"max_visits": 6, "max_tokens": 60}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = ingested("unmc-v3.2", tmp_path_factory.mktemp("history"))
    build_outcomes(root / "interim", root / "seq", root / "out",
                   OutcomeParams(history=HISTORY))
    return SurvivalTask.load(root / "seq", root / "out")


def _bags(tokens, owner, n):
    """Per row, the sorted token ids (specials dropped)."""
    keep = tokens >= SPECIAL
    order = np.lexsort((tokens[keep], owner[keep]))
    t, o = tokens[keep][order], owner[keep][order]
    return [t[o == i] for i in range(n)]   # test code: a loop over rows is fine


def test_window_limits_and_truncation(task):
    t, s = task.table, task.seqs
    iv, lm = t["input_visits"].to_numpy(), t["landmark_visits"].to_numpy()
    assert ((iv >= 1) & (iv <= np.minimum(lm, HISTORY["max_visits"]))).all()
    assert (iv < lm).mean() > 0.3                           # the window bites in this cohort
    end = s.patient_offsets[t["index"].to_numpy()] + lm
    vo = s.visit_offsets
    cost = vo[end] - vo[end - iv] + iv                       # codes + one [SEP] per visit
    assert ((cost <= HISTORY["max_tokens"]) | (iv == 1)).all()
    longer = np.minimum(iv + 1, lm)                          # one more visit would not fit
    more = (vo[end] - vo[end - longer] + longer > HISTORY["max_tokens"]) | \
        (longer > HISTORY["max_visits"]) | (longer == iv)
    assert more.all()
    assert (input_window(vo, s.patient_offsets, t["index"], lm, 10**6, 10**9) == lm).all()


def test_every_model_reads_the_same_visits(task):
    split = "test" if len(task.rows("test")) else "train"
    r = task.rows(split)
    n = len(r)
    counts = task.counts(split).toarray()
    expect = [np.repeat(np.arange(counts.shape[1]), counts[i].astype(int))[
        np.repeat(np.arange(counts.shape[1]), counts[i].astype(int)) >= SPECIAL]
        for i in range(n)]
    # LSTM: the survival dataset's batch
    ds = task.dataset(split)
    b = ds[np.arange(n)]
    owner = np.repeat(np.arange(n), b.visit_counts.sum(1).numpy())
    lstm = _bags(b.tokens.numpy(), owner, n)
    # BEHRT: its token layout, without [CLS]/[SEP]/[PAD]
    x = BEHRTDataset(ds, 256)[np.arange(n)]
    rows = np.repeat(np.arange(n), x.tokens.shape[1])
    behrt = _bags(x.tokens.numpy().ravel(), rows, n)
    # Med2Vec + head: its visits
    m = Med2VecSurvivalDataset(ds)[np.arange(n)]
    owner = np.repeat(m.patient.numpy(), m.counts.numpy())
    med2vec = _bags(m.tokens.numpy(), owner, n)
    # the synthetic truth's named effects
    t = task.table.iloc[r]
    tok, row, _ = landmark_tokens(task.seqs.codes, task.seqs.visit_offsets,
                                  task.seqs.patient_offsets, t["index"], t["landmark_visits"],
                                  t["input_visits"])
    truth = _bags(tok, row, n)
    for i in range(n):
        for got in (lstm, behrt, med2vec, truth):
            np.testing.assert_array_equal(got[i], np.sort(expect[i]))


def test_dataset_reads_landmark_visits_not_all_visits(task):
    """The wiring: a patient's batch ends at its landmark visit, not at its last visit."""
    t = task.table
    later = np.flatnonzero(t["landmark_visits"].to_numpy()
                           < task.seqs.n_visits[t["index"].to_numpy()])
    assert len(later)
    ds = task.dataset("train")
    r = task.rows("train")
    i = np.flatnonzero(np.isin(r, later))[0]
    row = t.iloc[r[i]]
    got = ds[[i]]
    ref = build_batch(task.seqs, [row["index"]], [row["landmark_visits"]],
                      [row["input_visits"]])
    whole = build_batch(task.seqs, [row["index"]], [task.seqs.n_visits[row["index"]]])
    assert (got.tokens == ref.tokens).all() and (got.age == ref.age).all()
    assert got.tokens.shape != whole.tokens.shape or (got.tokens != whole.tokens).any()
    last = task.seqs.patient_offsets[row["index"]] + row["landmark_visits"] - 1
    assert got.age[0, int(got.lengths[0]) - 1] == np.float32(task.seqs.visit_age[last])


def test_behrt_must_hold_the_window():
    """Checked by the params schema, before any stage builds a model."""
    parse_params({"outcome": {"history": {"max_tokens": 255}}})
    with pytest.raises(ParamsError, match="outcome.history.max_tokens=300"):
        parse_params({"outcome": {"history": {"max_tokens": 300}}})
    parse_params({"outcome": {"history": {"max_tokens": 300}}, "model": {"size": "medium"}})
    with pytest.raises(ParamsError, match="model.behrt.heads: 3 does not divide hidden 128"):
        parse_params({"model": {"size": "small", "behrt": {"heads": 3}}})
    with pytest.raises(ParamsError, match="contrastive objective is not implemented"):
        parse_params({"pretrain": {"contrastive_weight": 0.5}})


def test_sequences_fixture_is_real(task):
    assert isinstance(task.seqs, Sequences) and task.seqs.n_patients == 111
