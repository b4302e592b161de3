"""Worker for tests/test_ddp.py: train the survival LSTM on a toy cohort, plainly or under
torchrun, and write rank 0's validation-loss curve and every rank's weight checksum."""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ehrseq.data.tensors import SequenceDataset, make_loader, toy_sequences
from ehrseq.models.lstm_survival import DiscreteTimeSurvivalLSTM, LSTMConfig, survival_loss
from ehrseq.params import TrainParams
from ehrseq.train import distributed
from ehrseq.train.loop import fit
from ehrseq.train.runtime import seed_everything

out, global_batch = Path(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(1)
ddp = distributed.setup()
seqs = toy_sequences(n_patients=240, vocab_size=40, max_visits=8, seed=1)
rng = np.random.default_rng(0)
n = seqs.n_patients
lm = np.maximum(1, seqs.n_visits)
risky = np.array([np.isin(5, seqs.codes[seqs.visit_offsets[seqs.patient_offsets[p]]:
                                        seqs.visit_offsets[seqs.patient_offsets[p] + 1]])
                  for p in range(n)])
duration = rng.exponential(np.where(risky, 40.0, 200.0)) + 1
event = (rng.random(n) < 0.8).astype(int)
cuts = [0, 30, 60, 120, 240, 480]
tr, va = np.arange(0, 192), np.arange(192, n)
ds = {k: SequenceDataset(seqs, r, lm[r], duration[r], event[r], cuts=cuts)
      for k, r in (("train", tr), ("val", va))}
seed_everything(0)
model = DiscreteTimeSurvivalLSTM(LSTMConfig(vocab_size=40, n_bins=5, embed_dim=16,
                                            hidden_dim=16, dropout=0.0))
params = TrainParams(epochs=4, batch_size=global_batch // ddp.world_size, lr=5e-3,
                     warmup_frac=0.0, patience=10)
stats = fit(model, make_loader(ds["train"], params.batch_size, shuffle=True, seed=0,
                               rank=ddp.rank, world_size=ddp.world_size),
            survival_loss, params, val_loader=make_loader(ds["val"], 48), checkpoint=False,
            progress=False, wrap_model=distributed.wrap, rank=ddp.rank,
            world_size=ddp.world_size)
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes()
                                 for p in model.parameters())).hexdigest()
(out.parent / f"{out.stem}.rank{ddp.rank}.sha").write_text(digest)
if ddp.is_main:
    out.write_text(json.dumps({"val_loss": [h["val_loss"] for h in stats["history"]],
                               "world_size": ddp.world_size}))
distributed.teardown()
