"""Where the runs of a stage write, beside its main run: one folder name per kind, under
models/, plots/, metrics/ and data/predictions/. The stages write there
(:func:`ehrseq.data.task.stage_name`, :func:`ehrseq.data.folds.fold_stage`); ``evaluate`` and the
MEDS export read them back by the same names."""

CURVE = "curve"
"""A label-efficiency curve point: ``curve/<stage>/n<labelled>_r<replicate>``."""
CROSSFIT = "crossfit"
"""A cross-fitting fold: ``crossfit/<stage>/f<k>``."""
