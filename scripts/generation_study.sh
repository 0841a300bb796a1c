#!/usr/bin/env bash
# The generation study of docs/results/generation.md: SGLD samples of the Fashion-MNIST models
# (standard, SAT = pgd_at, TRADES, WEAT_adv) x init (uniform, gaussian, pca) x momentum (0.8, 0),
# then FID/KID/IS/precision-recall on the feature network of configs/features/fashion_mnist.toml.
#
# Usage: scripts/generation_study.sh [MODELS_ROOT] [OUT_ROOT]
#   env: N_PER_CLASS (50), STEPS (50), ETA (step size, 0.1), NOISE (0.001), REAL_N (10000),
#        MODELS ("standard pgd_at trades weat_adv"), SEED (0)
# Resumable: a configuration whose result.json exists is skipped. Waits for missing models.
# Per model: 3 inits x momentum {0.8, 0} at step size ETA, plus PCA with momentum 0 at ETA/(1-0.8).
set -euo pipefail
models_root=${1:-runs/fmnist}
out_root=${2:-runs/generation}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
N_PER_CLASS=${N_PER_CLASS:-50}
STEPS=${STEPS:-50}
ETA=${ETA:-0.1}
NOISE=${NOISE:-0.001}
REAL_N=${REAL_N:-10000}
SEED=${SEED:-0}
MODELS=${MODELS:-"standard pgd_at trades weat_adv"}
features=runs/features/fashion_mnist/model.safetensors

# 1. the feature network (once): an independently trained standard classifier
if [ ! -f "$features" ]; then
  .venv/bin/robust-ebm train --config configs/features/fashion_mnist.toml \
      --out runs/features/fashion_mnist > runs/features/fashion_mnist.log 2>&1
fi

generate() { .venv/bin/robust-ebm generate "$@"; }

# 2. samples and metrics of every configuration
for model in $MODELS; do
  ckpt=$models_root/$model-s0/model.safetensors
  until [ -f "$ckpt" ]; do echo "waiting for $ckpt" >&2; sleep 60; done
  # the grid, plus a control: PCA, momentum 0 with eta / (1 - 0.8), the step that momentum 0.8
  # reaches in a steady gradient field, to separate "momentum" from "a larger step"
  eta_x5=$(python3 -c "print(f'{$ETA / (1 - 0.8):g}')")
  for cfg in uniform:0.8:$ETA uniform:0:$ETA gaussian:0.8:$ETA gaussian:0:$ETA \
             pca:0.8:$ETA pca:0:$ETA pca:0:$eta_x5; do
    IFS=: read -r init mom eta <<< "$cfg"
    out=$out_root/$model/$init-m$mom
    [ "$eta" != "$ETA" ] && out=$out-eta$eta
    [ -f "$out/result.json" ] && continue
    mkdir -p "$out"
    start=$(date +%s)
    generate --checkpoint "$ckpt" --dataset fashion_mnist --init "$init" \
        --steps "$STEPS" --step-size "$eta" --momentum "$mom" --noise-std "$NOISE" \
        --energy joint --n-per-class "$N_PER_CLASS" --seed "$SEED" \
        --features "$features" --real-n "$REAL_N" --out "$out" --json > "$out/result.tmp"
    echo "$(( $(date +%s) - start ))" > "$out/seconds.txt"
    mv "$out/result.tmp" "$out/result.json"
    echo "done $model $init momentum $mom eta $eta ($(cat "$out/seconds.txt") s)" >&2
  done
done

# 3. the tables of docs/results/generation.md (OUT_ROOT/tables.md) and the grids it shows
.venv/bin/python - "$models_root" "$out_root" "$features" "$REAL_N" "$SEED" <<'PY'
"""Tables: metrics per configuration; the feature network's accuracy on the samples; a
real-data reference row (real test images, same count and classes: the floor of each metric at
this sample size) and the starting points of each init before any SGLD step; SGLD steps until the chains' mean E(x,y) reaches (a) the mean E(x,y) of the
real training images and (b) the final mean E(x,y) of the momentum-0 chains of the same model
and init (so the momentum-0 row reads STEPS by construction)."""
import json, shutil, sys
from pathlib import Path
import numpy as np, torch
from robust_ebm.checkpoint import load_model
from robust_ebm.cli.generate_cmd import CLASS_NAMES, describe_features, file_sha256
from robust_ebm.data import load_dataset
from robust_ebm.energy import joint_energy
from robust_ebm.generation_metrics import ClassifierFeatures, generation_metrics
from robust_ebm.sampling import save_grid

models_root, out_root, features = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
real_n, seed = int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(1)
train = load_dataset("fashion_mnist", "train")
test = load_dataset("fashion_mnist", "test")
g = torch.Generator().manual_seed(seed)
real = train.subset(torch.randperm(len(train), generator=g)[:real_n])
feat_model = load_model(features)
feat_net = ClassifierFeatures(feat_model)
feat_name = describe_features(features, file_sha256(features))
img_dir = Path("docs/results/img/generation")
img_dir.mkdir(parents=True, exist_ok=True)


def first_step(traj, target):
    hit = np.nonzero(traj <= target + 1e-9)[0]
    return str(int(hit[0])) if len(hit) else f">{len(traj) - 1}"


def row(cells):
    return "| " + " | ".join(str(c) for c in cells) + " |"


head = ["model", "init", "momentum", "FID", "KID x1e3", "IS", "precision", "recall",
        "feature-net acc", "E(x,y) x0 -> end", "steps to real E(x,y)", "steps to end E (zeta=0)",
        "s"]
lines = [f"Features: {feat_name}. Real set: {len(real)} training images (seed {seed}).", "",
         row(head), "|" + "---|" * len(head)]
ref_done = False
for mdir in sorted(p for p in out_root.iterdir() if p.is_dir()):
    model = load_model(models_root / f"{mdir.name}-s0" / "model.safetensors")
    with torch.no_grad():
        e_real = torch.cat([joint_energy(model(b.float() / 255), y) for b, y in
                            zip(real.images.split(1000), real.labels.split(1000))]).mean().item()
    for init in ("uniform", "gaussian", "pca"):
        m0 = mdir / f"{init}-m0" / "samples.npz"
        e_m0 = np.load(m0)["energy_trajectory"].mean(1)[-1] if m0.is_file() else None
        runs = [(mom, mdir / f"{init}-m{mom}") for mom in ("0.8", "0")]
        runs += [(f"0, eta {d.name.split('eta')[1]}", d)
                 for d in sorted(mdir.glob(f"{init}-m0-eta*"))]
        for mom, d in runs:
            if not (d / "result.json").is_file():
                continue
            r = json.loads((d / "result.json").read_text())
            m = r["metrics"]
            z = np.load(d / "samples.npz")
            x, y = torch.from_numpy(z["x"]), torch.from_numpy(z["y"]).long()
            if not ref_done:
                idx = torch.cat([(test.labels == c).nonzero().squeeze(1)[: int((y == c).sum())]
                                 for c in torch.unique(y)])
                ref = generation_metrics(real.images, test.images[idx], feat_net, feat_name,
                                         seed=seed)
                with torch.no_grad():
                    acc = (feat_model(test.images[idx].float() / 255).argmax(1)
                           == test.labels[idx]).float().mean().item()
                lines.append(row([f"real test images (n={len(idx)})", "-", "-",
                                  f"{ref['fid']:.2f}", f"{1e3 * ref['kid_mean']:.2f}",
                                  f"{ref['is_mean']:.2f}", f"{ref['precision']:.3f}",
                                  f"{ref['recall']:.3f}", f"{acc:.3f}", "-", "-", "-", "-"]))
                ref_done = True
                for init0 in ("uniform", "gaussian", "pca"):  # the starting points, no SGLD
                    f0 = mdir / f"{init0}-m0.8" / "samples.npz"
                    if not f0.is_file():
                        continue
                    x0 = torch.from_numpy(np.load(f0)["x0"])
                    r0 = generation_metrics(real.images, x0, feat_net, feat_name, seed=seed)
                    with torch.no_grad():
                        acc0 = (feat_model(x0.float() / 255).argmax(1) == y).float().mean().item()
                    lines.append(row(["x0 only (no SGLD; same for every model)", init0, "-",
                                      f"{r0['fid']:.2f}", f"{1e3 * r0['kid_mean']:.2f}",
                                      f"{r0['is_mean']:.2f}", f"{r0['precision']:.3f}",
                                      f"{r0['recall']:.3f}", f"{acc0:.3f}", "-", "-", "-", "-"]))
            with torch.no_grad():
                acc = (feat_model(x.float() / 255).argmax(1) == y).float().mean().item()
            traj = z["energy_trajectory"].mean(1)
            secs = (d / "seconds.txt").read_text().strip() if (d / "seconds.txt").exists() else "?"
            lines.append(row([
                mdir.name, init, mom, f"{m['fid']:.2f}", f"{1e3 * m['kid_mean']:.2f}",
                f"{m['is_mean']:.2f}", f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{acc:.3f}",
                f"{traj[0]:.2f} -> {traj[-1]:.2f}", f"{first_step(traj, e_real)} ({e_real:.2f})",
                "-" if e_m0 is None else f"{first_step(traj, e_m0)} ({e_m0:.2f})", secs]))
            if mom == "0.8":  # the grids shown in the docs (redrawn from samples.npz)
                sc = r["sampler"]
                title = (f"{mdir.name} | init {init}, {sc['steps']} steps, eta {sc['step_size']}, "
                         f"zeta {sc['momentum']}, s {sc['noise_std']}")
                save_grid(img_dir / f"{mdir.name}-{init}-m{mom}-grid.png", x.float() / 255, y, 10,
                          CLASS_NAMES["fashion_mnist"], title)
            if init == "pca" and mom in ("0.8", "0"):
                shutil.copyfile(d / "energy.png", img_dir / f"{mdir.name}-{init}-m{mom}-energy.png")
(out_root / "tables.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
