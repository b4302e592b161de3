"""Stage `evaluate`: the only place test metrics are computed. Scores every model's test
predictions found under data/predictions (no list of models: :mod:`ehrseq.evaluate.scoring`),
compares them pairwise on the same test patients, and writes metrics/summary.json (the
headline: the only DVC metric, what `dvc exp show` and `dvc metrics diff` print),
metrics/evaluate.json and metrics/learning_curve.json (every number), a Markdown report and
figures."""

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ehrseq.evaluate.crossfit import score_crossfit, split_crossfit  # noqa: E402
from ehrseq.evaluate.curve import learning_curve, split_outputs  # noqa: E402
from ehrseq.evaluate.probes import (  # noqa: E402
    load_representations,
    probe_scores,
    probes_markdown,
)
from ehrseq.evaluate.report import (  # noqa: E402
    ORACLE_NOTE,
    calibration_markdown,
    collapse_markdown,
    collect,
    comparisons_markdown,
    headline,
    headroom,
    machine,
    onset_markdown,
    paired_comparisons,
    to_markdown,
    window_note,
)
from ehrseq.evaluate.scoring import (  # noqa: E402
    PREDICTIONS,
    Outcomes,
    check_present,
    find_predictions,
    prediction_outputs,
    score_all,
)
from ehrseq.io import atomic_outputs, run_stage, write_json  # noqa: E402
from ehrseq.params import load_params  # noqa: E402
from ehrseq.survival.bins import read_bins  # noqa: E402

PLOTS = Path("plots/evaluate")
OUTCOMES = Path("data/processed/outcomes")
EMBEDDINGS = Path("data/processed/embeddings")
OUTCOMES_METRICS = Path("metrics/outcomes.json")
PRETRAIN_METRICS = {"behrt": Path("metrics/pretrain_behrt.json"),
                    "med2vec": Path("metrics/train_med2vec.json")}
"""The pre-training runs whose seconds the learning curve's cost adds to pre-trained families."""
log = logging.getLogger("evaluate")


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text()) if path.is_file() else {}


def pretraining_runs() -> dict[str, dict]:
    """Run statistics of each pre-training stage (``<run>.<key>`` in its metrics), by run."""
    out = {}
    for run, path in PRETRAIN_METRICS.items():
        m = _read_json(path)
        info = {k[len(run) + 1:]: v for k, v in m.items() if k.startswith(run + ".")}
        if info:
            out[run] = info
    return out


def forest(rows, path: Path) -> None:
    """C-index with 95% intervals per model; the oracle as a dashed line."""
    rows = [r for r in rows if r["_c"] is not None]
    models = [r for r in rows if not r["model"].startswith("oracle")]
    oracle = next((r for r in rows if r["model"].startswith("oracle")), None)
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(models) + 1.2), dpi=110)
    y = range(len(models))
    c = [r["_c"] for r in models]
    err = [[r["_c"] - (r["_lo"] if r["_lo"] is not None else r["_c"]) for r in models],
           [(r["_hi"] if r["_hi"] is not None else r["_c"]) - r["_c"] for r in models]]
    ax.errorbar(c, list(y), xerr=err, fmt="o", capsize=3)
    ax.set_yticks(list(y), [f"{r['model']} {r['size']}".strip() for r in models])
    ax.axvline(0.5, color="grey", lw=1)
    if oracle:
        ax.axvline(oracle["_c"], color="tab:red", ls="--", lw=1, label="oracle (true risk)")
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), fontsize=8, frameon=False)
    ax.set_xlabel("test C-index (Harrell), 95% bootstrap interval")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def params_vs_c(rows, path: Path) -> None:
    pts = [r for r in rows if r.get("_params") and r["_c"] is not None]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=110)
    for r in pts:
        ax.scatter(r["_params"], r["_c"])
        ax.annotate(f"{r['model']} {r['size']}", (r["_params"], r["_c"]), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("test C-index")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def probes() -> tuple[dict, str]:
    """Representation probes of the scenario's planted features (a synthetic outcome with
    features and an embed stage's outputs), as metrics and a report section."""
    import pandas as pd

    feats = OUTCOMES / "features.parquet"
    reps = load_representations(EMBEDDINGS) if EMBEDDINGS.is_dir() else {}
    if not feats.is_file() or not reps:
        return {}, ""
    split = pd.read_parquet(OUTCOMES / "outcomes.parquet", columns=["split"])["split"]
    rows = probe_scores(pd.read_parquet(feats), split, reps)
    flat = {f"probe.{r['representation']}.{r['feature']}": r["score"] for r in rows}
    return flat, probes_markdown(rows)


def main() -> None:
    params = load_params()
    rep, horizons = params.report, read_bins(OUTCOMES)[1]
    with atomic_outputs(PLOTS) as (out,):
        out.mkdir()
        current = prediction_outputs(PREDICTIONS)
        check_present(current)
        current, curve_points = split_outputs(current, PREDICTIONS)
        current, folds = split_crossfit(current, PREDICTIONS)
        found = find_predictions(PREDICTIONS, current, curve_points + folds)
        flat, risks = score_all(PREDICTIONS, OUTCOMES, horizons, rep, out,
                                progress=lambda name: log.info("scoring %s", name), found=found)
        log.info("scoring the learning curve (%d points)", len(curve_points))
        curve, curve_md = learning_curve(curve_points, found[0], PREDICTIONS, OUTCOMES, horizons,
                                         rep.bootstrap, rep.seed, out, pretraining_runs(),
                                         rep.gpu_hourly_usd)
        rows = collect(flat, params.model_dump(mode="json"))   # read once, above
        scored = [r for r in rows if not r["model"].startswith("oracle") and r["_c"] is not None]
        best = max(scored, key=lambda r: r["_c"]) if scored else None
        if best is not None:
            flat["best.c_harrell"] = best["_c"]
            if flat.get("oracle.c_harrell") is not None:
                flat["best.gap_to_oracle"] = flat["oracle.c_harrell"] - best["_c"]
        others = [n for n in risks if n != flat.get("best_count.model")]   # every model
        pairs = paired_comparisons(risks, Outcomes.load(OUTCOMES), rep.bootstrap, rep.seed,
                                   flat.get("best_count.model"), others)
        for r in pairs:
            for k in ("delta", "lo", "hi", "p_not_better"):
                flat[f"delta.{r['a']}-{r['b']}.{k}"] = r[k]
        flat.update(headroom(pairs, flat.get("best_count.model")))
        log.info("scoring the cross-fitting folds (%d outputs)", len(folds))
        crossfit, crossfit_md = score_crossfit(folds, OUTCOMES, horizons, rep)
        flat.update(crossfit)
        probe_flat, probe_md = probes()
        flat.update(probe_flat)
        onset_md = onset_markdown(flat)
        forest(rows, out / "cindex.png")
        params_vs_c(rows, out / "params_vs_cindex.png")
        best_name = "" if best is None else \
            best["model"] + (f" ({best['size']})" if best["size"] else "")
        (out / "report.md").write_text(
            f"# Benchmark: outcome `{params.outcome.name}`, model size `{params.model.size}`\n\n"
            + (f"Highest test C: **{best_name}** (C = {best['_c']:.3f}; reported, not a "
               "choice: every choice reads the validation split only). "
               if best else "No model could be scored (no evaluable test pairs). ")
            + (f"Best count-based model, chosen on the validation split: "
               f"**{flat['best_count.model']}** (test C = {flat['best_count.c_harrell']:.3f}); "
               "every other model is compared with it below. "
               if flat.get("best_count.model") else "")
            + (f"Headroom (oracle C minus the best count model's, paired): "
               f"**{flat['headroom']:+.3f}** [{flat['headroom_lo']:+.3f}, "
               f"{flat['headroom_hi']:+.3f}]. " if "headroom" in flat else "")
            + f"Test split: {flat['test.patients']} patients, {flat['test.landmarks']} "
            f"landmarks, {flat['test.events']} events. GPU price for costs: "
            f"${rep.gpu_hourly_usd}/h. Machine: {machine()}.\n\n"
            + window_note(params.outcome.history.model_dump(), _read_json(OUTCOMES_METRICS))
            + " " + ORACLE_NOTE + "\n\n" + to_markdown(rows) + collapse_markdown(rows)
            + "\n![C-index](cindex.png)\n"
            + ("\n## Calibration at the evaluation horizons (expected calibration error)\n\n"
               + calibration_markdown(rows) if calibration_markdown(rows) else "")
            + ("\n## Paired comparisons (same test patients, same bootstrap resamples)\n\n"
               + comparisons_markdown(pairs) if pairs else "")
            + ("\n## Label efficiency (ΔC per labelled training patients, paired)\n\n"
               + curve_md + "\n![learning curve](learning_curve.png)\n"
               "![C against cost](learning_curve_cost.png)\n" if curve_md else "")
            + ("\n## Cross-fitted: every patient scored once (crossfit.folds)\n\n"
               + crossfit_md if crossfit_md else "")
            + ("\n## Disease trajectories: onset AUROC per target and horizon\n\n"
               + onset_md if onset_md else "")
            + ("\n## Which representation carries which planted feature (probes)\n\n"
               + probe_md if probe_md else ""))
    write_json("metrics/evaluate.json", flat)
    write_json("metrics/summary.json", headline(flat))
    write_json("metrics/learning_curve.json", curve)
    print(to_markdown(rows))
    if pairs:
        print(comparisons_markdown(pairs))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_stage(main)
