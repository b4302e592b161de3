"""A pre-training corpus of its own (``pretrain.corpus``, issue 29): the corpus stage, its
encoding by the sequences stage with the labelled cohort's vocabulary, the refusal of a corpus
that holds labelled validation or test patients, and pre-training reading it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import export_dir, script

from ehrseq.data.ingest import ingest
from ehrseq.data.sequences import build_sequences
from ehrseq.data.tensors import Sequences
from ehrseq.io import InputError
from ehrseq.params import ParamsError, SequencesParams, parse_params


def stage(name: str):
    return script(f"stages/{name}.py")


def flattened(export: str, where) -> object:
    where.mkdir(parents=True)
    ingest(export_dir(export), where)
    return where


def test_a_generated_corpus_needs_its_own_seed():
    with pytest.raises(ParamsError, match=r"pretrain.corpus.seed: 42 equals data.seed"):
        parse_params({"pretrain": {"corpus": {"patients": 10, "seed": 42}}}, "params.yaml")
    c = parse_params({"pretrain": {"corpus": {"patients": 10, "seed": 7}}}, "p").pretrain.corpus
    assert (c.source, c.patients, c.seed) == ("generate", 10, 7)
    assert parse_params({}, "p").pretrain.corpus is None      # the default: no corpus


def test_the_corpus_is_encoded_with_the_cohorts_vocabulary(tmp_path):
    """Labelled cohort: one real export; corpus: the other. The labelled arrays keep their
    patients and splits; the corpus's arrays hold every corpus patient under the same
    vocabulary, which is fitted on the training split and the corpus, never on validation or
    test patients."""
    lab, corp = flattened("unmc-v3.2", tmp_path / "lab"), flattened("dbt-synthea-v3.0",
                                                                   tmp_path / "corp")
    p = SequencesParams()
    alone = build_sequences(lab, tmp_path / "alone", p).metrics
    m = build_sequences(lab, tmp_path / "seq", p, corpus=corp).metrics
    a, c = Sequences.load(tmp_path / "seq"), Sequences.load(tmp_path / "seq/corpus")
    b = Sequences.load(tmp_path / "alone")
    n_corpus = len(pd.read_parquet(corp / "patients.parquet"))
    assert m["corpus.patients"] == len(c.patients) == n_corpus and m["patients"] == len(a.patients)
    assert set(c.patients["split"]) == {"corpus"}
    pd.testing.assert_frame_equal(a.patients, b.patients)       # the cohort's rows unchanged
    assert a.vocab == c.vocab and m["tokens"] == alone["tokens"] == len(a.codes)
    assert m["corpus.tokens"] == len(c.codes) > 0
    # the vocabulary's counts are the training split's and the corpus's occurrences
    seen = np.zeros(a.vocab_size, np.int64)
    for s, rows in ((a, np.flatnonzero(a.patients["split"] == "train")),
                    (c, np.arange(len(c.patients)))):
        for i in rows:
            v0, v1 = s.patient_offsets[i], s.patient_offsets[i + 1]
            np.add.at(seen, np.asarray(s.codes[s.visit_offsets[v0]:s.visit_offsets[v1]]), 1)
    counts = np.asarray(a.vocab["counts"])
    assert (seen[5:] == counts[5:]).all()          # [UNK] etc. are not counted
    assert m["vocab_size"] > alone["vocab_size"]   # the corpus brings codes of its own
    # what pre-training reads: training split + corpus; validation; never a test patient
    s, train, val = Sequences.load_pretraining(tmp_path / "seq")
    split = s.patients["split"].to_numpy()
    assert set(split[train]) == {"train", "corpus"} and set(split[val]) == {"val"}
    assert len(train) == m["patients_train"] + n_corpus
    i = len(a.patients)                            # the corpus's first patient, after the cohort
    assert (s.codes[s.visit_offsets[s.patient_offsets[i]]:s.visit_offsets[s.patient_offsets[i + 1]]]
            == c.codes[c.visit_offsets[0]:c.visit_offsets[c.patient_offsets[1]]]).all()


def test_a_corpus_with_held_out_patients_is_refused_and_training_patients_read_once(tmp_path):
    lab = flattened("unmc-v3.2", tmp_path / "lab")
    with pytest.raises(InputError, match=r"corpus patients are in the labelled cohort's "
                                         r"validation or test split.*pretrain.corpus"):
        build_sequences(lab, tmp_path / "seq", SequencesParams(), corpus=lab)
    assert not (tmp_path / "seq").exists()
    # a corpus that repeats only labelled training patients: they are read once, as labelled
    train = pd.read_parquet(lab / "patients.parquet")
    from ehrseq.data.sequences import split_of

    p = SequencesParams()
    keep = train["patient"][split_of(train["patient"], (p.split.train, p.split.val,
                                                        p.split.test), p.split.salt) == "train"]
    corp = flattened("dbt-synthea-v3.0", tmp_path / "corp")
    for f in ("patients", "events"):
        both = pd.concat([pd.read_parquet(corp / f"{f}.parquet"),
                          pd.read_parquet(lab / f"{f}.parquet").query("patient in @keep")])
        both.to_parquet(corp / f"{f}.parquet", index=False)
    m = build_sequences(lab, tmp_path / "seq2", p, corpus=corp).metrics
    assert m["corpus.repeated_training_patients"] == len(keep) > 0
    c = Sequences.load(tmp_path / "seq2/corpus")
    assert not c.patients["patient"].isin(train["patient"]).any()


def test_pretraining_reads_the_corpus(tmp_path, monkeypatch):
    """The stage end to end on a toy workspace with a corpus of 30 patients: pre-training
    trains on the training split and the corpus; fine-tuning reads the result."""
    from test_tune import toy_workspace

    toy_workspace(tmp_path)
    seqs = Sequences.load(tmp_path / "data/processed/sequences")
    corpus = Sequences.load(tmp_path / "data/processed/sequences")
    corpus.patients = corpus.patients.assign(split="corpus", patient=lambda d: "c" + d["patient"].astype(str))
    corpus.save(tmp_path / "data/processed/sequences/corpus")
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["pretrain"] = {"objective": "tte", "tte_codes": 8, "tte_pieces": [30, 365]}
    params["model"]["behrt"] = {"hidden": 16, "layers": 1, "heads": 2, "intermediate": 32,
                                "max_len": 64}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    stage("pretrain_behrt").main()
    m = json.loads((tmp_path / "metrics/pretrain_behrt.json").read_text())
    n_train = int((seqs.patients["split"] == "train").sum())
    assert m["behrt.corpus_patients"] == len(corpus.patients)
    assert m["behrt.train_patients"] == n_train + len(corpus.patients)
    stage("finetune_behrt").main("full")
    assert (tmp_path / "models/finetune_behrt/full").exists()


def test_corpus_stage_generates_or_says_none(tmp_path, monkeypatch):
    """``null``: data/corpus holds only corpus.json (the sequences stage sees no corpus);
    a generated corpus: the ingest stage's files, with its own seed's patients."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("{}\n")
    stage("corpus").main()
    assert sorted(p.name for p in (tmp_path / "data/corpus").iterdir()) == ["corpus.json"]
    assert json.loads((tmp_path / "metrics/corpus.json").read_text())["patients"] == 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"data": {"workers": 1}, "pretrain": {"corpus": {"patients": 2, "seed": 7}}}))
    stage("corpus").main()
    pats = pd.read_parquet(tmp_path / "data/corpus/patients.parquet")
    assert len(pats) == 2 and (tmp_path / "data/corpus/events.parquet").is_file()
    assert json.loads((tmp_path / "data/corpus/corpus.json").read_text())["patients"] == 2


def test_a_corpus_leaves_the_cohorts_value_tokens_and_values(tmp_path):
    """The value bins and statistics are fitted on the labelled training split alone: a corpus
    (here a copy of the cohort's own export under new ids, so its values would move the bins
    if they were fitted on it) leaves every value token and value of the cohort as it was, and
    with them a synthetic scenario's planted outcome (it reads those tokens)."""
    import shutil

    src = export_dir("dbt-synthea-v3.0")
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in src.glob("*.csv"):
        d = pd.read_csv(f, dtype=str, keep_default_na=False)
        for col in ("Id", "PATIENT", "ENCOUNTER"):
            if col in d and (f.name == "patients.csv" or col != "Id"):
                d[col] = np.where(d[col] == "", "", "c-" + d[col])
        d.to_csv(copy / f.name, index=False)
    for f in src.iterdir():
        if f.suffix != ".csv":
            shutil.copy(f, copy / f.name)
    lab = flattened("dbt-synthea-v3.0", tmp_path / "lab")
    corp = tmp_path / "corp"
    corp.mkdir()
    ingest(copy, corp)
    p = SequencesParams()
    build_sequences(lab, tmp_path / "alone", p)
    build_sequences(lab, tmp_path / "seq", p, corpus=corp)
    a, b = Sequences.load(tmp_path / "alone"), Sequences.load(tmp_path / "seq")
    ta, tb = np.asarray(a.vocab["tokens"]), np.asarray(b.vocab["tokens"])
    q = np.char.find(ta[a.codes].astype(str), ":q") >= 0
    assert q.sum() > 100                                   # value tokens to compare
    assert (ta[a.codes][q] == tb[b.codes][q]).all()        # the same bins
    np.testing.assert_array_equal(a.values, b.values)      # the same normalised values
    assert a.value_stats == b.value_stats
