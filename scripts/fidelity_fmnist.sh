#!/usr/bin/env bash
# Fashion-MNIST: each adversarial objective with our defaults and with every published-behaviour
# option (docs/fidelity.md), same data, seed and budget. Base settings: configs/fmnist/base.toml.
# Usage: scripts/fidelity_fmnist.sh SEED EPOCHS SUBSET [OUT_ROOT]
# Then: python scripts/fidelity_report.py OUT_ROOT
# Environment: OBJECTIVES (default: pgd_at trades mart weat_adv weat_nat) and VARIANTS (default:
# ours published; also: raw = ours with [model] normalize = false, the published raw [0,1] input).
set -euo pipefail
seed=${1:?seed}
epochs=${2:?epochs}
subset=${3:?train subset}
root=${4:-runs/fidelity}
py=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$root"
published_opts() {
  local opts=(train.anneal=cos train.cycle_momentum=true)
  case $1 in
    pgd_at) ;;  # Madry's PGD clips its start: only the schedule differs
    trades) opts+=(objective.clip_start=false objective.forward_passes=3) ;;
    mart|weat_nat) opts+=(objective.clip_start=false objective.kl_form=log_eps) ;;
    weat_adv) opts+=(objective.clip_start=false objective.kl_form=log_eps objective.beta=6) ;;
  esac
  printf -- '--set %s ' "${opts[@]}"
}
read -r -a objectives <<< "${OBJECTIVES:-pgd_at trades mart weat_adv weat_nat}"
read -r -a variants <<< "${VARIANTS:-ours published}"
for obj in "${objectives[@]}"; do
  for variant in "${variants[@]}"; do
    out="$root/$obj-$variant-s$seed"
    extra=()
    case $variant in
      ours) ;;
      published) read -r -a extra <<< "$(published_opts "$obj")" ;;
      raw) extra=(--set model.normalize=false) ;;
      *) echo "unknown variant $variant (ours, published, raw)" >&2; exit 2 ;;
    esac
    "$py" -m robust_ebm train --config configs/fmnist/base.toml --objective "$obj" \
        --eps 0.1 --step-size 0.05 --steps 5 --seed "$seed" --epochs "$epochs" \
        --set data.train_subset="$subset" --out "$out" "${extra[@]}" > "$out.log" 2>&1 \
      || echo "FAILED: $obj $variant seed $seed" >&2
  done
done
