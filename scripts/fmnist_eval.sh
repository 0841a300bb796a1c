#!/usr/bin/env bash
# PGD-20 and AutoAttack (standard) on the first 1000 Fashion-MNIST test points, eps 0.1,
# for one trained run. Usage: scripts/fmnist_eval.sh RUN_DIR [aa]
set -euo pipefail
run=${1:?run dir}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
.venv/bin/robust-ebm attack --checkpoint "$run/model.safetensors" --dataset fashion_mnist \
    --n 1000 --eps 0.1 --attacks pgd --steps 20 --out "$run/pgd20" --json > "$run/pgd20.json"
if [ "${2:-}" = aa ]; then
  .venv/bin/robust-ebm attack --checkpoint "$run/model.safetensors" --dataset fashion_mnist \
      --n 1000 --eps 0.1 --attacks autoattack --out "$run/aa" --json > "$run/aa.json"
fi
