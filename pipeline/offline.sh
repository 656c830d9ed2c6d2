#!/usr/bin/env bash
# The offline preset: the whole pipeline, every stage for both schedules, on a 2-core CPU in a few
# minutes, with nothing downloaded. The stages are dvc.yaml's own; only these params differ from
# params.yaml's real experiment:
#   synthetic flowers at 16×16, the tiny UNet, T = 200, 1,000 training steps, 200 samples, and
#   FID/KID through the small `randconv` extractor, so the numbers are named fid_randconv etc.
# It runs as a DVC experiment (`dvc exp show` lists it). Like every `dvc exp run`, it leaves
# these values in the workspace's params.yaml; `git checkout params.yaml` returns to the real one.
# Extra arguments go to `dvc exp run` after these, so that they win (e.g. --name offline, -S train.steps=50).
set -euo pipefail
cd "$(dirname "$0")/.."

exec dvc exp run \
    -S data.source=synthetic -S data.synthetic_count=1000 -S data.image_size=16 \
    -S model.preset=tiny \
    -S diffusion.timesteps=200 \
    -S train.steps=1000 -S train.batch_size=32 -S train.lr=1e-3 -S train.warmup_steps=100 \
    -S train.log_every=50 -S train.checkpoint_every=500 -S train.sample_every=500 \
    -S sample.num_samples=200 -S sample.batch_size=200 \
    -S evaluate.feature_extractor=randconv -S evaluate.kid_subsets=20 -S evaluate.kid_subset_size=100 \
    "$@"
