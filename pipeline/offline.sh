#!/usr/bin/env bash
# The offline preset, from nothing: the whole pipeline, every stage for both schedules, with nothing downloaded,
# in under 6 minutes on a 2-core CPU (bench/offline_preset.py). The stages are dvc.yaml's own;
# only these params differ from params.yaml's real experiment:
#   synthetic flowers at 16×16 (100 held out), the tiny UNet, T = 50, 250 training steps of 24
#   images (FID and KID of 100 DDIM-10 samples at steps 125 and 250), 200 DDIM samples (20 steps),
#   bits/dim on 32 held-out images, a sweep of DDIM 5 and 20 steps and DDPM 50 on 100 samples
#   each, and FID/KID through the small `randconv` extractor, so the numbers are named fid_randconv etc.
# It runs as a DVC experiment (`dvc exp show` lists it with its values; `dvc exp apply NAME` brings
# them back). `dvc exp run` leaves its values in the workspace's params.yaml; this script puts back
# the params.yaml it found when it ends, however it ends, so that the preset never becomes what
# `ddpm` and `dvc repro` read next. The workspace keeps the preset's outputs and DVC's record of
# them (dvc.lock), so `dvc status` then lists the stages whose params differ from the outputs.
# Extra arguments go to `dvc exp run` after these, so that they win (e.g. --name offline, -S train.steps=50).
# DVC's stderr goes through pipeline/quiet_dvc.py, which drops its warnings about outputs not made yet.
set -euo pipefail
cd "$(dirname "$0")/.."
. pipeline/venv.sh  # the project's virtual environment, made on the first run (Python ≥ 3.11 is all it needs)

mkdir -p .dvc/tmp  # DVC's own scratch folder, ignored by git and on params.yaml's disk: putting it back is a rename
found=$(mktemp .dvc/tmp/params.yaml.XXXXXX)
cp -p params.yaml "$found"
trap 'mv -f "$found" params.yaml' EXIT
trap 'exit 130' INT; trap 'exit 143' TERM  # a signal ends the script through its EXIT trap too

{ dvc exp run \
    -S data.source=synthetic -S data.synthetic_count=1000 -S data.image_size=16 -S data.holdout=100 \
    -S model.preset=tiny \
    -S diffusion.timesteps=50 \
    -S train.steps=250 -S train.batch_size=24 -S train.lr=1e-3 -S train.warmup_steps=50 \
    -S train.log_every=50 -S train.checkpoint_every=125 -S train.sample_every=125 \
    -S train.eval_every=125 -S train.eval_samples=100 -S train.eval_steps=10 \
    -S sample.sampler=ddim -S sample.steps=20 -S sample.num_samples=200 -S sample.batch_size=200 \
    -S evaluate.feature_extractor=randconv \
    -S evaluate.nll_images=32 \
    -S 'sweep.steps=[5,20]' -S sweep.num_samples=100 \
    "$@" 2>&1 1>&3 3>&- | python3 pipeline/quiet_dvc.py 3>&-; } 3>&1  # DVC's stderr through the filter
