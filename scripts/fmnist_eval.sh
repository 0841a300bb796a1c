#!/usr/bin/env bash
# PGD-20 on the first 1000 Fashion-MNIST test points and AutoAttack (standard version) on the
# first AA_N (default 1000) test points, L-inf eps 0.1, for one trained run.
# Usage: scripts/fmnist_eval.sh RUN_DIR [AA_N]      (AA_N=0 skips AutoAttack)
set -euo pipefail
run=${1:?run dir}
aa_n=${2:-1000}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
.venv/bin/robust-ebm attack --checkpoint "$run/model.safetensors" --dataset fashion_mnist \
    --n 1000 --eps 0.1 --attacks pgd --steps 20 --out "$run/pgd20" --json > "$run/pgd20.json"
if [ "$aa_n" -gt 0 ]; then
  .venv/bin/robust-ebm attack --checkpoint "$run/model.safetensors" --dataset fashion_mnist \
      --n "$aa_n" --eps 0.1 --attacks autoattack --out "$run/aa" --json > "$run/aa.json"
fi
