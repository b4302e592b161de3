"""Embedding metrics shared by every encoder: code neighbours against ground truth, next-visit
recall, and the baselines every learned embedding must beat.

- :func:`precision_at_k`: for each labelled code, the share of its k cosine nearest labelled
  neighbours that share at least one label with it (labels: Synthea modules,
  :mod:`ehrseq.data.modules`). Queries whose labels no other candidate carries are skipped
  (they cannot score); :func:`chance_precision` is what a random ranking gets on average.
- :func:`random_embedding` and :func:`ppmi_svd` (positive PMI of within-visit co-occurrence,
  factorised by truncated SVD) are the two baselines of the same dimension.
- :func:`next_visit_recall`: recall@k of the codes of the next visit from scores of the
  current one, for any ``score_fn(visit rows) -> [n, vocab]``; :func:`frequency_scores` and
  :func:`last_visit_scores` are the baselines.
- :func:`umap_plot`: a 2-D UMAP of code embeddings coloured by module (PNG + CSV).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from ..data.tensors import Sequences, ranges

# --------------------------------------------------------------------------- code neighbours

def _normalise(emb: np.ndarray) -> np.ndarray:
    emb = np.asarray(emb, np.float64)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def cosine_neighbours(emb: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """Indices [n, k] of each row's k most cosine-similar other rows, most similar first
    (ties in a deterministic but arbitrary order). Zero rows have similarity 0 to all."""
    x = _normalise(emb)
    n = len(x)
    k = min(k, n - 1)
    out = np.zeros((n, k), np.int64)
    for s in range(0, n, chunk):          # one iteration per chunk of rows
        sim = x[s:s + chunk] @ x.T
        rows = np.arange(sim.shape[0])
        sim[rows, s + rows] = -np.inf     # never your own neighbour
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sim, part, 1), axis=1, kind="stable")
        out[s:s + chunk] = np.take_along_axis(part, order, 1)
    return out


def _scorable(member: np.ndarray) -> np.ndarray:
    """Rows with a label that at least one other row carries."""
    return (member & (member.sum(0) >= 2)[None, :]).any(1)


def precision_at_k(emb: np.ndarray, member: np.ndarray, ks: Sequence[int] = (5, 10)
                   ) -> dict[int, float]:
    """Mean over queries of the share of the k nearest neighbours (cosine) sharing a label.

    ``member`` is the boolean ``[n_codes, n_labels]`` matrix of the rows of ``emb``. Only
    labelled rows take part, as queries and as candidates; a query counts when at least one
    other candidate shares one of its labels.
    """
    lab = np.flatnonzero(member.any(1))
    if len(lab) < 2:      # no Synthea module code in the vocabulary (e.g. a MEDS dataset)
        return {k: float("nan") for k in ks}
    m = member[lab]
    nbrs = cosine_neighbours(np.asarray(emb)[lab], max(ks))
    hit = (m[:, None, :] & m[nbrs]).any(-1)[_scorable(m)]      # [queries, k]
    return {k: float(hit[:, :k].mean()) if len(hit) else float("nan") for k in ks}


def chance_precision(member: np.ndarray, chunk: int = 2048) -> float:
    """Expected precision@k of a random ranking: the mean share of the other labelled codes
    that share a label with the query (the queries of :func:`precision_at_k`)."""
    m = member[member.any(1)]
    q = m[_scorable(m)].astype(np.float32)
    if not len(q):
        return float("nan")
    mf = m.astype(np.float32)
    shared = np.concatenate([((q[s:s + chunk] @ mf.T) > 0).sum(1) - 1   # minus itself
                             for s in range(0, len(q), chunk)])
    return float((shared / max(len(m) - 1, 1)).mean())


def random_embedding(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Standard normal [n, dim] from a seeded generator."""
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


# --------------------------------------------------------------------------- co-occurrence

def visit_code_matrix(seqs: Sequences, visits: np.ndarray) -> sp.csr_matrix:
    """Binary visits x vocabulary matrix (1 where the visit holds the code)."""
    visits = np.asarray(visits, np.int64)
    vo = seqs.visit_offsets
    start = np.asarray(vo[visits])
    pos, owner, _ = ranges(start, np.asarray(vo[visits + 1]) - start)
    m = sp.csr_matrix((np.ones(len(pos), np.float32), (owner, np.asarray(seqs.codes[pos]))),
                      shape=(len(visits), seqs.vocab_size))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def split_visits(seqs: Sequences, split: str) -> np.ndarray:
    """Visit rows of the patients in ``split`` (train/val/test)."""
    p = np.flatnonzero(seqs.patients["split"].to_numpy() == split)
    po = seqs.patient_offsets
    visits, _, _ = ranges(np.asarray(po[p]), np.asarray(po[p + 1]) - np.asarray(po[p]))
    return visits


def ppmi(cooc: sp.spmatrix) -> sp.csr_matrix:
    """Positive pointwise mutual information of a symmetric co-occurrence count matrix."""
    c = sp.csr_matrix(cooc, dtype=np.float64)
    c.setdiag(0)
    c.eliminate_zeros()
    total = c.sum()
    row = np.asarray(c.sum(1)).ravel()
    coo = c.tocoo()
    val = np.log(coo.data * total / (row[coo.row] * row[coo.col]))
    keep = val > 0
    return sp.csr_matrix((val[keep], (coo.row[keep], coo.col[keep])), shape=c.shape)


def ppmi_svd(seqs: Sequences, visits: np.ndarray, dim: int, seed: int = 0) -> np.ndarray:
    """Code embeddings [vocab, dim]: PPMI of within-visit co-occurrence over ``visits``
    (the training split), truncated SVD, rows ``U sqrt(S)`` (Levy et al., 2015)."""
    from sklearn.decomposition import TruncatedSVD

    x = visit_code_matrix(seqs, visits)
    p = ppmi(x.T @ x)
    out = np.zeros((seqs.vocab_size, dim), np.float32)
    rank = min(dim, seqs.vocab_size - 1)
    if p.nnz == 0 or rank < 1:
        return out
    svd = TruncatedSVD(n_components=rank, random_state=seed, algorithm="randomized", n_iter=7)
    us = svd.fit_transform(p)                     # U * S
    out[:, :rank] = us / np.sqrt(np.maximum(svd.singular_values_, 1e-12))
    return out


# --------------------------------------------------------------------------- next visit

def next_visit_pairs(seqs: Sequences, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(visit, next visit of the same patient) rows for the patients of ``split``."""
    v = split_visits(seqs, split)
    owner = np.repeat(np.arange(seqs.n_patients), seqs.n_visits)
    same = owner[v[:-1]] == owner[v[1:]] if len(v) > 1 else np.zeros(0, bool)
    same &= v[1:] == v[:-1] + 1 if len(v) > 1 else same
    return v[:-1][same], v[1:][same]


def next_visit_recall(score_fn: Callable[[np.ndarray], np.ndarray | torch.Tensor],
                      seqs: Sequences, src: np.ndarray, tgt: np.ndarray,
                      ks: Sequence[int] = (10, 20), n_special: int = 5,
                      chunk: int = 2048) -> dict[int, float]:
    """Mean over pairs of |top-k codes scored for ``src`` ∩ codes of ``tgt``| / |codes of
    ``tgt``| (Doctor AI's recall@k). Special tokens (ids < ``n_special``) are never ranked
    nor counted; pairs whose next visit holds only specials are skipped."""
    kmax = max(ks)
    hits = {k: 0.0 for k in ks}
    n_pairs = 0
    for s in range(0, len(src), chunk):          # one iteration per chunk of pairs
        sc = torch.as_tensor(score_fn(src[s:s + chunk])).float().clone()
        sc[:, :n_special] = -torch.inf
        target = torch.from_numpy(visit_code_matrix(seqs, tgt[s:s + chunk]).toarray() > 0)
        target[:, :n_special] = False
        size = target.sum(1)
        ok = size > 0
        top = torch.topk(sc, kmax, dim=1).indices
        got = torch.gather(target, 1, top)
        for k in ks:
            hits[k] += float((got[:, :k].sum(1)[ok] / size[ok]).sum())
        n_pairs += int(ok.sum())
    return {k: hits[k] / n_pairs if n_pairs else float("nan") for k in ks}


def frequency_scores(seqs: Sequences, train_visits: np.ndarray) -> np.ndarray:
    """Share of training visits that hold each code [vocab]."""
    x = visit_code_matrix(seqs, train_visits)
    return np.asarray(x.sum(0)).ravel() / max(x.shape[0], 1)


def last_visit_scores(seqs: Sequences, freq: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Baseline score function: the codes of the current visit first, then by frequency."""
    def score(visits: np.ndarray) -> np.ndarray:
        cur = visit_code_matrix(seqs, visits).toarray()
        return cur * 2.0 + freq[None, :] / max(float(freq.max()), 1e-12)
    return score


# --------------------------------------------------------------------------- figure

def umap_plot(emb: np.ndarray, tokens: Sequence[str], labels: Sequence[frozenset[str]],
              path_stem: str | Path, top: int = 10, seed: int = 0,
              title: str = "Code embeddings (UMAP)") -> None:
    """2-D UMAP (cosine, seeded) of the labelled codes, coloured by module: each code takes
    its most specific label among the ``top`` largest modules, others are grey. Codes whose
    embedding is all zeros (no direction for a cosine) are left out.
    Writes ``<stem>.csv`` (token, module, x, y) and ``<stem>.png``."""
    import pandas as pd

    from ..plots import plt, skipped_figure
    from .clustering import umap_fit

    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    emb = np.asarray(emb, np.float32)
    nonzero = np.abs(emb).sum(1) > 0
    idx = np.array([i for i, lab in enumerate(labels) if lab and nonzero[i]], np.int64)
    if len(idx) < 3:      # no Synthea module code to place (e.g. a MEDS dataset)
        pd.DataFrame(columns=["token", "module", "x", "y"]).to_csv(stem.with_suffix(".csv"),
                                                                   index=False)
        skipped_figure(f"{title}\nno code of a Synthea module in the vocabulary",
                       stem.with_suffix(".png"))
        return
    size: dict[str, int] = {}
    for i in idx:
        for m in labels[i]:
            size[m] = size.get(m, 0) + 1
    best = sorted(size, key=lambda m: (-size[m], m))[:top]
    colour_of = {m: j for j, m in enumerate(best)}
    module = [min((m for m in labels[i] if m in colour_of), key=lambda m: (size[m], m),
                  default="other") for i in idx]
    xy, _ = umap_fit(emb[idx], 2, 15, 0.1, "cosine", seed)
    df = pd.DataFrame({"token": [tokens[i] for i in idx], "module": module,
                       "x": xy[:, 0], "y": xy[:, 1]})
    df.to_csv(stem.with_suffix(".csv"), index=False)
    fig, ax = plt.subplots(figsize=(7.5, 6), dpi=110)
    other = df["module"] == "other"
    ax.scatter(df.x[other], df.y[other], s=6, c="#c8c8c8", label="other")
    tab = plt.get_cmap("tab20").colors
    palette = [tab[i] for i in range(0, 20, 2) if i != 14] + [tab[i] for i in range(1, 20, 2)
                                                              if i != 15]   # no greys
    for m, j in colour_of.items():
        sel = df["module"] == m
        ax.scatter(df.x[sel], df.y[sel], s=9, color=palette[j % len(palette)], label=m)
    ax.legend(fontsize=7, markerscale=2, loc="best")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"))
    plt.close(fig)


MED2VEC_KS_CODE, MED2VEC_KS_VISIT = (5, 10), (10, 20)


def med2vec_quality(model, seqs, code_emb: np.ndarray, visit_emb: np.ndarray, cfg, seed: int,
                    plots_dir: Path) -> dict:
    """Med2Vec's embeddings against ground truth no model saw: code precision@k by Synthea
    module (beside a random and a PPMI+SVD embedding of the same dimension), next-visit recall
    on the test patients (beside frequency and last-visit baselines), and a UMAP of the codes."""
    from ..data.modules import code_modules, label_tokens, membership

    tokens = seqs.vocab["tokens"]
    n_special = len(seqs.vocab.get("specials", {}))
    # ground truth: Synthea modules; baselines of the same dimension
    labels = label_tokens(tokens, code_modules())
    member, modules = membership(labels)
    train_visits = split_visits(seqs, "train")
    candidates = {
        "med2vec": code_emb,
        "random": random_embedding(len(tokens), cfg.code_dim, seed),
        "ppmi_svd": ppmi_svd(seqs, train_visits, cfg.code_dim, seed),
    }
    metrics: dict = {"codes.labelled": int(member.any(1).sum()),
                     "codes.vocab": len(tokens), "codes.modules": len(modules),
                     "med2vec.dead_codes": int((code_emb[n_special:].sum(1) == 0).sum())}
    chance = chance_precision(member)
    for name, emb in candidates.items():
        for k, p in precision_at_k(emb, member, MED2VEC_KS_CODE).items():
            metrics[f"code_precision_at_{k}.{name}"] = p
    for k in MED2VEC_KS_CODE:
        m = metrics
        m[f"code_precision_at_{k}.chance"] = chance
        m[f"code_precision_at_{k}.margin_vs_random"] = \
            m[f"code_precision_at_{k}.med2vec"] - m[f"code_precision_at_{k}.random"]
        m[f"code_precision_at_{k}.margin_vs_ppmi_svd"] = \
            m[f"code_precision_at_{k}.med2vec"] - m[f"code_precision_at_{k}.ppmi_svd"]

    # next-visit recall on the test patients
    src, tgt = next_visit_pairs(seqs, "test")
    freq = frequency_scores(seqs, train_visits)
    weight, bias = model.output.weight.detach(), model.output.bias.detach()
    scorers = {
        "med2vec": lambda v: torch.from_numpy(visit_emb[v]) @ weight.T + bias,
        "frequency": lambda v: torch.from_numpy(freq).expand(len(v), -1),
        "last_visit": last_visit_scores(seqs, freq),
    }
    metrics["next_visit.pairs"] = len(src)
    for name, fn in scorers.items():
        for k, r in next_visit_recall(fn, seqs, src, tgt, MED2VEC_KS_VISIT, n_special).items():
            metrics[f"next_visit_recall_at_{k}.{name}"] = r
    for k in MED2VEC_KS_VISIT:
        m = metrics
        for base in ("frequency", "last_visit"):
            m[f"next_visit_recall_at_{k}.margin_vs_{base}"] = \
                m[f"next_visit_recall_at_{k}.med2vec"] - m[f"next_visit_recall_at_{k}.{base}"]
    umap_plot(code_emb, tokens, labels, plots_dir / "code_umap", seed=seed,
              title=f"Med2Vec code embeddings ({cfg.size}, UMAP), by Synthea module")
    return metrics
