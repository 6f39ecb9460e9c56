#!/usr/bin/env bash
# Run the fedcond Flower app on a SuperLink and SuperNodes on 127.0.0.1, with TLS and
# SuperNode authentication (the steps of docs/federated.md, "Across machines"):
#
#   scripts/deploy_local.sh [NUM_NODES] [RUN_CONFIG]
#   e.g. scripts/deploy_local.sh 2 "strategy='fedavg' rounds=2"
#
# scripts/deploy_local.py does the work (see its docstring); it stops and reaps every
# process it started, also on error or Ctrl-C. DEPLOY_TIMEOUT (default 300) bounds the run.
# Exit status: that of `flwr run` (0 when the run finished).
set -euo pipefail
exec "${PYTHON:-python}" "$(dirname "${BASH_SOURCE[0]}")/deploy_local.py" --nodes "${1:-2}" \
  --run-config "${2:-}" --timeout "${DEPLOY_TIMEOUT:-300}"
