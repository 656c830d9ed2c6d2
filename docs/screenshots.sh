#!/usr/bin/env bash
# Screenshots of what a user opens after the pipeline, taken by headless Chromium (Debian's
# `chromium`), so that the pages can be checked without a desktop:
#   docs/mlflow-experiment.png  `mlflow ui`'s page of the experiment, as a click on its name opens it
#   docs/dvc-plots.png          `dvc plots show`'s page, offline (its charts need no CDN)
# Run it in a repository where the pipeline has run (e.g. after `bash pipeline/offline.sh`):
#   bash docs/screenshots.sh [FOLDER]      # FOLDER: that repository (default: this one)
set -euo pipefail
docs="$(cd "$(dirname "$0")" && pwd)"
cd "${1:-$docs/..}"
port=5077
shot() {  # URL PNG: the page after its scripts ran, 1400×900
    chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,900 \
        --virtual-time-budget=20000 --screenshot="$2" "$1" 2>/dev/null
    echo "wrote $2"
}

experiment=$(python3 - <<'EOF'
import mlflow
experiment = mlflow.MlflowClient("sqlite:///mlflow.db").get_experiment_by_name("ddpm-flowers")
print(experiment.experiment_id)
EOF
)
mlflow ui --backend-store-uri sqlite:///mlflow.db --port "$port" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 1; done
shot "http://127.0.0.1:$port/#/experiments/$experiment?workflowType=machine_learning" "$docs/mlflow-experiment.png"

dvc plots show --quiet  # writes dvc_plots/index.html from .dvc/config's offline template
shot "file://$PWD/dvc_plots/index.html" "$docs/dvc-plots.png"
