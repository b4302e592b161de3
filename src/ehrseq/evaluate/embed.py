"""Patient embeddings at the landmark: one vector per outcome-eligible patient, from the model
inputs only (the shared input window of visits up to the landmark), for clustering.

(Code embeddings, one vector per vocabulary token, are :mod:`ehrseq.evaluate.embeddings`.)

Registry
--------
:data:`EMBEDDERS` maps a name to an :class:`Embedder`: ``fn(task, params) -> [n, d]`` float
matrix whose row ``i`` is ``task.table`` row ``i`` (every split), plus the paths it reads
(``needs``, e.g. a model directory: list them as DVC deps of the ``embed`` stage; the stage
fails with a clear error when one is missing). ``params`` is the ``embed`` params section
(attributes ``dim``, ``seed``, ``batch_size``, ``device``); an embedder reads only what it
needs. Built in:

- ``lstm``: the top-layer LSTM state of the trained survival LSTM (``models/train_survival``)
  at each patient's landmark visit, i.e. exactly the vector its hazard head reads.
- ``tfidf_svd``: TF-IDF (sublinear tf, L2) of the code counts, truncated SVD to ``dim``, rows
  L2-normalised (LSA); IDF and SVD fitted on the train split only.
- ``random_proj``: a seeded Gaussian random projection of ``log1p`` code counts to ``dim``
  (no learning at all: the reference every learned embedding has to beat).
- ``behrt_cls`` / ``behrt_mean``: the pre-trained BEHRT encoder (``models/pretrain_behrt``,
  no fine-tuning, so no outcome label shaped it) on the same ``[CLS] visit [SEP] ...`` input
  the fine-tuning stage builds: the final ``[CLS]`` state, or the mean over every real token.
- ``med2vec``: Med2Vec visit vectors (``models/train_med2vec``) averaged over the input visits.

Adding one: a function ``fn(task, params)`` decorated with ``@register(name, needs=(dir,))``,
its name in :data:`ehrseq.params.EMBEDDING_METHODS` (and ``embed.methods``) and its model
directory in the ``embed`` stage's deps. :func:`mean_over_input_visits`, :func:`input_rows`
and :func:`load_encoder` are the helpers such encoders need.
Special tokens (ids < 5) never enter the count-based embeddings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from ..data.features import code_counts
from ..data.task import SurvivalTask
from ..data.tensors import Batch, SequenceDataset, make_loader, ranges
from ..io import InputError

N_SPECIALS = 5  # [PAD] [UNK] [CLS] [SEP] [MASK]
EmbedFn = Callable[[SurvivalTask, Any], np.ndarray]


@dataclass(frozen=True)
class Embedder:
    fn: EmbedFn
    needs: tuple[str, ...] = ()   # paths it reads besides sequences/outcomes (DVC deps)
    doc: str = ""


EMBEDDERS: dict[str, Embedder] = {}


def register(name: str, needs: tuple[str, ...] = ()) -> Callable[[EmbedFn], EmbedFn]:
    """Decorator adding ``fn`` to :data:`EMBEDDERS` under ``name``."""
    def deco(fn: EmbedFn) -> EmbedFn:
        EMBEDDERS[name] = Embedder(fn, tuple(needs), (fn.__doc__ or "").strip().split("\n")[0])
        return fn
    return deco


# --------------------------------------------------------------------------- helpers

def input_counts(task: SurvivalTask) -> sp.csr_matrix:
    """Code counts over each row's input visits (all rows of ``task.table``), specials 0."""
    s = task.seqs
    m = code_counts(s.codes, s.visit_offsets, s.patient_offsets,
                    task.table["index"].to_numpy(), task.table["landmark_visits"].to_numpy(),
                    s.vocab_size, task.window)
    keep = np.ones(s.vocab_size)
    keep[:N_SPECIALS] = 0
    m = sp.csr_matrix(m @ sp.diags(keep))
    m.eliminate_zeros()
    return m


def input_rows(task: SurvivalTask) -> tuple[np.ndarray, np.ndarray]:
    """(global visit id, table row) of every input visit (the shared window) of every row."""
    po = np.asarray(task.seqs.patient_offsets)
    end = po[task.table["index"].to_numpy()] + task.table["landmark_visits"].to_numpy()
    vis, row, _ = ranges(end - task.window, task.window)
    return vis, row


def mean_over_input_visits(task: SurvivalTask, visit_vectors: np.ndarray) -> np.ndarray:
    """Mean of per-visit vectors ``[n_visits, d]`` over each row's input visits."""
    vis, row = input_rows(task)
    n = len(task.table)
    out = np.zeros((n, visit_vectors.shape[1]), np.float64)
    np.add.at(out, row, np.asarray(visit_vectors)[vis])
    return (out / np.maximum(np.bincount(row, minlength=n), 1)[:, None]).astype(np.float32)


def _dim(params, n_train: int, n_features: int) -> int:
    return max(1, min(int(params.dim), n_features - 1, n_train - 1))


# --------------------------------------------------------------------------- built-ins

@register("tfidf_svd")
def tfidf_svd(task: SurvivalTask, params) -> np.ndarray:
    """TF-IDF of input code counts + truncated SVD (fitted on train) + L2 rows."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.preprocessing import normalize

    counts = input_counts(task)
    tr = task.rows("train")
    tfidf = TfidfTransformer(sublinear_tf=True).fit(counts[tr])
    x = tfidf.transform(counts)
    svd = TruncatedSVD(_dim(params, len(tr), x.shape[1]), random_state=params.seed)
    svd.fit(x[tr])
    return normalize(svd.transform(x)).astype(np.float32)


@register("random_proj")
def random_projection(task: SurvivalTask, params) -> np.ndarray:
    """Seeded Gaussian random projection of log1p input code counts."""
    counts = input_counts(task)
    rng = np.random.default_rng(params.seed)
    w = rng.standard_normal((counts.shape[1], int(params.dim))) / np.sqrt(params.dim)
    return np.asarray(counts.log1p() @ w, np.float32)


def lstm_landmark_state(model, batch: Batch) -> torch.Tensor:
    """Top-layer LSTM hidden state at each patient's last (landmark) visit ``[B, hidden]``:
    the vector :class:`~ehrseq.models.lstm_survival.DiscreteTimeSurvivalLSTM` feeds its
    hazard head (same calls as its ``forward``; dropout is off in eval mode)."""
    x = model.encode_visits(batch)
    packed = pack_padded_sequence(x, batch.lengths.cpu(), batch_first=True,
                                  enforce_sorted=False)
    _, (h, _) = model.lstm(packed)
    return h[-1]


def load_encoder(name: str, device: str = "cpu"):
    """The trained model embedder ``name`` reads (its ``needs[0]`` directory), checked against
    the current vocabulary so that codes mean what the model learnt."""
    from ..models.inference import resolve_device
    from ..models.store import load_model

    model_dir = Path(EMBEDDERS[name].needs[0])
    if not (model_dir / "config.json").is_file():
        raise InputError(f"{model_dir}/config.json: missing; run the stage that writes "
                         f"{model_dir} or drop {name!r} from embed.methods")
    model, _, vocab = load_model(model_dir, device=resolve_device(device))
    return model, vocab


def _check_vocab(name: str, vocab: dict | None, task: SurvivalTask) -> None:
    if vocab is not None and vocab.get("tokens") != task.seqs.vocab["tokens"]:
        raise InputError(f"{EMBEDDERS[name].needs[0]}/vocab.json: differs from the sequences "
                         f"vocabulary; re-run the stage that trains it ({name!r})")


def _landmark_dataset(task: SurvivalTask) -> SequenceDataset:
    """Every row's input window (the visits every model reads)."""
    t = task.table
    return SequenceDataset(task.seqs, t["index"].to_numpy(), t["landmark_visits"].to_numpy(),
                           max_visits=task.window)


@register("lstm", needs=("models/train_survival",))
def lstm_embedding(task: SurvivalTask, params) -> np.ndarray:
    """Survival-LSTM hidden state at the landmark visit."""
    from ..models.inference import predict

    model, vocab = load_encoder("lstm", params.device)
    _check_vocab("lstm", vocab, task)
    ds = _landmark_dataset(task)
    return predict(model, make_loader(ds, params.batch_size, pin_memory=False),
                   lstm_landmark_state, len(ds))


def behrt_pool(encoder, batch, pool: str) -> torch.Tensor:
    """BEHRT hidden states pooled per patient: ``cls`` = the ``[CLS]`` state (what the survival
    head reads), ``mean`` = the mean over real tokens (``[CLS]`` and ``[SEP]`` included)."""
    h = encoder(batch)
    if pool == "cls":
        return h[:, 0]
    m = batch.mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp(min=1)


def _behrt(task: SurvivalTask, params, name: str, pool: str) -> np.ndarray:
    from ..models.behrt import BEHRTDataset
    from ..models.inference import predict

    model, vocab = load_encoder(name, params.device)
    _check_vocab(name, vocab, task)
    encoder = getattr(model, "encoder", model)
    max_len = encoder.config.max_len
    ds = BEHRTDataset(_landmark_dataset(task), max_len)
    return predict(encoder, make_loader(ds, params.batch_size, pin_memory=False),
                   lambda m, b: behrt_pool(m, b, pool), len(ds))


@register("behrt_cls", needs=("models/pretrain_behrt",))
def behrt_cls(task: SurvivalTask, params) -> np.ndarray:
    """Pre-trained BEHRT: final [CLS] state of the landmark input."""
    return _behrt(task, params, "behrt_cls", "cls")


@register("behrt_mean", needs=("models/pretrain_behrt",))
def behrt_mean(task: SurvivalTask, params) -> np.ndarray:
    """Pre-trained BEHRT: mean final state over the landmark input's tokens."""
    return _behrt(task, params, "behrt_mean", "mean")


@register("med2vec", needs=("models/train_med2vec",))
def med2vec_mean(task: SurvivalTask, params) -> np.ndarray:
    """Med2Vec visit vectors averaged over the input visits."""
    from ..models.inference import resolve_device
    from ..models.med2vec import encode_all_visits

    model, vocab = load_encoder("med2vec", params.device)
    _check_vocab("med2vec", vocab, task)
    return mean_over_input_visits(
        task, encode_all_visits(model, task.seqs, device=resolve_device(params.device)))


# --------------------------------------------------------------------------- run, save, load

def embed(name: str, task: SurvivalTask, params) -> np.ndarray:
    """Run embedder ``name``; check one finite row per ``task.table`` row."""
    if name not in EMBEDDERS:
        raise InputError(f"embed.methods: unknown embedding {name!r}; "
                         f"accepted: {sorted(EMBEDDERS)}")
    missing = [p for p in EMBEDDERS[name].needs if not Path(p).exists()]
    if missing:
        raise InputError(f"embedding {name!r} reads {missing[0]}, which is missing; run the "
                         f"stage that writes it or drop {name!r} from embed.methods")
    x = np.asarray(EMBEDDERS[name].fn(task, params), np.float32)
    if x.ndim != 2 or len(x) != len(task.table):
        raise RuntimeError(f"embedding {name}: expected [{len(task.table)}, d], got {x.shape}")
    if not np.isfinite(x).all():
        raise RuntimeError(f"embedding {name}: non-finite values in rows "
                           f"{np.flatnonzero(~np.isfinite(x).all(1))[:5].tolist()}")
    return x


@dataclass
class PatientEmbedding:
    """One embedding file: ``patient``, ``index`` (row in sequences), ``split``, ``X``."""

    patient: np.ndarray
    index: np.ndarray
    split: np.ndarray
    X: np.ndarray

    def save(self, path: str | Path) -> None:
        np.savez_compressed(path, patient=self.patient.astype(str), index=self.index,
                            split=self.split.astype(str), X=self.X)

    @classmethod
    def load(cls, path: str | Path) -> PatientEmbedding:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["patient"], z["index"], z["split"], z["X"])

    @classmethod
    def from_task(cls, task: SurvivalTask, X: np.ndarray) -> PatientEmbedding:
        t = task.table
        return cls(t["patient"].to_numpy(str), t["index"].to_numpy(np.int64),
                   t["split"].to_numpy(str), np.asarray(X, np.float32))
