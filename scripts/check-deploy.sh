#!/usr/bin/env bash
# check-deploy.sh — the deployment checks (`make check-deploy`):
#   1. tests/integration/test_deploy.py (also part of `make test`): a real Prometheus
#      scraping `ppd serve`, promtool, the dashboard's queries, yamllint, kubectl
#      kustomize, the Kubernetes schemas, the Dockerfile checks and hadolint;
#   2. plus a load run (PPD_DEPLOY_LOAD_SECONDS, default 60 s, three clients on
#      two slots, one CPU thread) whose data Prometheus scraped, drawn from the
#      dashboard's own queries into docs/deploy-dashboard.png (scripts/render-dashboard.py);
#   3. the rendered manifests of the base and the CPU overlay in build/deploy/.
# What it cannot do here: build the image (no Docker engine) or apply the
# manifests (no cluster); docs/deploy.md's tested-on table says so.
# Usage: scripts/check-deploy.sh [PYTHON]   (default build/itest-venv/bin/python,
# the venv `make test-integration` builds from tests/integration/requirements.txt)
set -euo pipefail
cd "$(dirname "$0")/.."

py=${1:-build/itest-venv/bin/python}
[ -x "$py" ] || { echo "check-deploy: $py missing; run 'make test-integration' once (it builds the venv)" >&2; exit 1; }
out=build/deploy
mkdir -p "$out"

if command -v kubectl >/dev/null; then
  kubectl kustomize deploy/kubernetes/base > "$out/base.yaml"
  kubectl kustomize deploy/kubernetes/overlays/cpu > "$out/cpu.yaml"
  echo "check-deploy: rendered manifests in $out/base.yaml and $out/cpu.yaml"
else
  echo "check-deploy: kubectl not installed; manifests not rendered (test_deploy.py checks them unpatched)"
fi

PPD_DEPLOY_DASHBOARD_DATA="$out/dashboard-data.json" \
PPD_DEPLOY_LOAD_SECONDS="${PPD_DEPLOY_LOAD_SECONDS:-60}" \
PPD_DEPLOY_RATE_INTERVAL="${PPD_DEPLOY_RATE_INTERVAL:-15s}" \
PPD_TEST_MODEL="${PPD_TEST_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}" \
PPD_BIN="${PPD_BIN:-build/ppd}" \
  "$py" -m pytest -q -rs -p no:cacheprovider tests/integration/test_deploy.py

"$py" scripts/render-dashboard.py "$out/dashboard-data.json" docs/deploy-dashboard.png
