#!/usr/bin/env bash
# The GPU measurements this project has never been able to take, as one short script for a
# machine with an NVIDIA GPU (about 8 minutes on one H100-class GPU; nothing is downloaded at run
# time but the package install). Every result goes to $OUT (default ./gpu-oneshot):
#
#   estimate-<size>.txt   python -m ehrseq.ops.estimate --model all --device cuda: measured
#                         optimizer steps of every family (LSTM, BEHRT, BEHRT pre-training,
#                         Med2Vec) at each size on a toy cohort, projected to a 40-run grid
#                         of 20 epochs (the "basis" line says it was measured, not the FLOP model)
#   throughput.txt        bench/behrt_throughput.py at BEHRT-large, length 512, batch 64: our
#                         BEHRT (padded and length-bucketed) against Hugging Face BERT
#   nvidia-smi.txt, torch.txt   the machine
#
#   bash bench/gpu_oneshot.sh            # on the GPU machine, in the repository root
#
# Exits non-zero when torch sees no CUDA device (a CPU build of torch on a GPU machine is named).
set -euo pipefail
OUT="${OUT:-gpu-oneshot}"
mkdir -p "$OUT"
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || make install >/dev/null
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
"$PY" - <<'EOF' | tee "$OUT/torch.txt"
import sys, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device (a CPU build of torch?): nothing to measure")
print(torch.cuda.get_device_name(0))
EOF
for size in small medium large; do
  timeout 150 "$PY" -m ehrseq.ops.estimate --model all --size "$size" --device cuda \
    --steps 10 --gpu h100 --runs 40 --epochs 20 > "$OUT/estimate-$size.txt" 2>&1 \
    || echo "estimate $size: exit $?" >> "$OUT/estimate-$size.txt"
done
timeout 240 "$PY" bench/behrt_throughput.py --device cuda > "$OUT/throughput.txt" 2>&1 \
  || echo "throughput: exit $?" >> "$OUT/throughput.txt"
echo "results in $OUT/"
