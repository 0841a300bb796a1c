#!/usr/bin/env bash
# The energy analysis and detector study of docs/results/energy.md for one trained run.
# Usage: scripts/energy_study.sh OBJECTIVE [SEED] [--no-sweep]   (Fashion-MNIST, eps 0.1,
# first 500 test images; every iterative attack 20 steps, APGD included; Square 1000 queries;
# the PGD steps/eps sweep unless --no-sweep). DETECT_ATTACKS (comma list) narrows the attacks
# the detector is evaluated against (default: the full list).
set -euo pipefail
obj=${1:?objective}; seed=${2:-0}; sweep=${3:-}
run=runs/fmnist/$obj-s$seed
out=runs/energy/$obj-s$seed
mkdir -p "$out"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
[ -f "$out/energy/energy.json" ] || .venv/bin/robust-ebm energy --checkpoint "$run/model.safetensors" --dataset fashion_mnist \
    --n 500 --eps 0.1 --steps 20 $sweep --out "$out/energy" --json > "$out.energy.json"
.venv/bin/robust-ebm detect calibrate --checkpoint "$run/model.safetensors" --dataset fashion_mnist \
    --n 500 --eps 0.1 --steps 20 --out "$out/detect" --json > "$out.calibrate.json"
.venv/bin/robust-ebm detect evaluate --checkpoint "$run/model.safetensors" --dataset fashion_mnist \
    --detector "$out/detect/detector.json" --n 500 --eps 0.1 --steps 20 --out "$out/detect-eval" \
    ${DETECT_ATTACKS:+--attacks "$DETECT_ATTACKS"} --json > "$out.detect.json"
