#!/usr/bin/env bash
# The main job on a fresh machine: set up, bring the stack up, run ml_pipeline_dag to a
# promoted model. The stack keeps running afterwards (`mlwf down` stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mlwf=.venv/bin/mlwf
"$mlwf" up
"$mlwf" trigger ml_pipeline_dag --unpause --wait
home=$("$mlwf" config --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["home"]["value"])' 2>/dev/null || echo .mlwf)
echo
echo "Production model: $home/data/registry/production.json"
cat "$home/data/registry/production.json" 2>/dev/null || true
echo
echo "UI: $("$mlwf" open airflow --print)   password: mlwf password   stop: mlwf down"
