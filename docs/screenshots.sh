#!/usr/bin/env bash
# Screenshots of what a user opens after the pipeline, taken by headless Chromium (Debian's
# `chromium`), so that the pages can be checked without a desktop:
#   docs/mlflow-experiment.png  `mlflow ui`'s page of the experiment, as a click on its name opens it
#   docs/mlflow-run-samples.png the cosine model run's last training grid, in its Artifacts tab (MLflow 3.17's
#                               "samples" card on Model metrics opens at step 0, where no grid is logged)
#   docs/dvc-plots.png          `dvc plots show`'s page, offline (its charts need no CDN)
# Run it in a repository where the pipeline has run (e.g. after `bash pipeline/offline.sh`, or in the
# copy that `python bench/offline_preset.py --keep /tmp/preset` keeps):
#   bash docs/screenshots.sh [FOLDER]      # FOLDER: that repository (default: this one)
# It prints the commit whose code made the pictures (the README's captions state it): in such a copy
# the source's, which the copy's commit message holds; elsewhere that repository's HEAD.
set -euo pipefail
docs="$(cd "$(dirname "$0")" && pwd)"
cd "${1:-$docs/..}"
made=$(git log -1 --format=%s | sed -n 's/^the project at commit //p')
made=${made:-$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- ddpm pipeline .dvc/plots || echo "+uncommitted changes")}
port=5077
shot() {  # URL PNG: the page after its scripts ran, 1400×900
    chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,900 \
        --virtual-time-budget=20000 --screenshot="$2" "$1" 2>/dev/null
    echo "wrote $2"
}

read -r experiment grid <<<"$(python3 - <<'EOF'
import mlflow
client = mlflow.MlflowClient("sqlite:///mlflow.db")
experiment = client.get_experiment_by_name("ddpm-flowers").experiment_id
[run] = client.search_runs([experiment], "attributes.run_name = 'cosine, seed 0'")
grids = [a.path for a in client.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")]
last = max(grids, key=lambda path: int(path.split("+step+")[1].split("+")[0]))  # log_image's name holds the step
print(experiment, f"runs/{run.info.run_id}/artifacts/{last}")
EOF
)"
mlflow ui --backend-store-uri sqlite:///mlflow.db --port "$port" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 1; done
shot "http://127.0.0.1:$port/#/experiments/$experiment?workflowType=machine_learning" "$docs/mlflow-experiment.png"
shot "http://127.0.0.1:$port/#/experiments/$experiment/$grid" "$docs/mlflow-run-samples.png"

dvc plots show --quiet  # writes dvc_plots/index.html from .dvc/config's offline template
shot "file://$PWD/dvc_plots/index.html" "$docs/dvc-plots.png"
echo "pictures made at commit $made"
