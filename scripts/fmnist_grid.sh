#!/usr/bin/env bash
# Train every objective of the Fashion-MNIST study for one seed (sequentially, one thread).
# Usage: scripts/fmnist_grid.sh SEED [OUT_ROOT]   (settings: configs/fmnist/base.toml)
set -euo pipefail
seed=${1:?seed}
root=${2:-runs/fmnist}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$root"
for obj in standard pgd_at trades mart weat_adv weat_nat; do
  extra=(--eps 0.1 --step-size 0.05 --steps 5)
  # standard training has no inner attack, so no budget
  if [ "$obj" = standard ]; then extra=(); fi
  .venv/bin/robust-ebm train --config configs/fmnist/base.toml --objective "$obj" \
      --seed "$seed" --out "$root/$obj-s$seed" "${extra[@]}" > "$root/$obj-s$seed.log" 2>&1 \
    || echo "FAILED: $obj seed $seed" >&2
done
