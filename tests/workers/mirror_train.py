"""Worker for tests/test_mirror.py: train the survival LSTM on a toy cohort with checkpoints
mirrored to the DVC remote of the repository given as argv[2]; write the final weights'
checksum and the validation-loss curve to argv[1]. argv[3] = seconds to sleep per step (so a
test can kill it mid-run)."""

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ehrseq.data.tensors import SequenceDataset, make_loader, toy_sequences
from ehrseq.models.lstm_survival import DiscreteTimeSurvivalLSTM, LSTMConfig, survival_loss
from ehrseq.params import RuntimeParams, TrainParams
from ehrseq.train.loop import fit
from ehrseq.train.mirror import CheckpointMirror
from ehrseq.train.runtime import seed_everything

out, repo, pause = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
torch.set_num_threads(1)
seqs = toy_sequences(n_patients=120, vocab_size=30, max_visits=6, seed=2)
rng = np.random.default_rng(0)
lm = np.maximum(1, seqs.n_visits)
duration = rng.exponential(100.0, seqs.n_patients) + 1
event = (rng.random(seqs.n_patients) < 0.7).astype(int)
cuts = [0, 30, 90, 180, 400]
tr, va = np.arange(0, 96), np.arange(96, 120)
ds = {k: SequenceDataset(seqs, r, lm[r], duration[r], event[r], cuts=cuts)
      for k, r in (("train", tr), ("val", va))}
seed_everything(0)
model = DiscreteTimeSurvivalLSTM(LSTMConfig(vocab_size=30, n_bins=4, embed_dim=8, hidden_dim=8))
params = TrainParams(epochs=6, batch_size=16, lr=5e-3, warmup_frac=0.0, patience=10)
runtime = RuntimeParams(checkpoint_every_steps=4, checkpoint_every_minutes=0)
stats = fit(model, make_loader(ds["train"], 16, shuffle=True, seed=0), survival_loss, params,
            runtime,
            val_loader=make_loader(ds["val"], 24), run_key="mirror-test",
            checkpoint_root=repo / "checkpoints", mirror=CheckpointMirror.from_dvc(repo),
            progress=False, on_step=lambda step: time.sleep(pause))
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes()
                                 for p in model.parameters())).hexdigest()
out.write_text(json.dumps({"sha": digest, "val_loss": [h["val_loss"] for h in stats["history"]],
                           "resumed_from_step": stats["resumed_from_step"]}))
