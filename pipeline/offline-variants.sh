#!/usr/bin/env bash
# The offline preset with three variants in one report (README, "Compare variants, not only schedules"):
# cosine, cosine with Min-SNR-γ (cosine-minsnr) and linear with v-prediction and zero terminal SNR
# (linear-ztsnr-v), params.yaml's variants, in under 6 minutes on a 2-core CPU
# (python bench/offline_preset.py --script pipeline/offline-variants.sh). It is pipeline/offline.sh
# made lighter, so that three runs fit where two did: 150 training steps (not 250) and no FID during
# training, 100 samples (not 200), bits/dim on 16 held-out images (not 32), and a sweep of 50 samples
# at DDIM 5 steps and DDPM 50 (no DPM-Solver++). Extra arguments go to offline.sh after these.
set -euo pipefail
cd "$(dirname "$0")/.."
exec bash pipeline/offline.sh -S 'schedules=[cosine,cosine-minsnr,linear-ztsnr-v]' \
    -S train.steps=150 -S train.eval_every=0 -S sample.num_samples=100 -S sample.batch_size=100 \
    -S evaluate.nll_images=16 -S 'sweep.samplers=[ddim]' -S 'sweep.steps=[5]' -S sweep.num_samples=50 "$@"
