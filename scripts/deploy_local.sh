#!/usr/bin/env bash
# Run the fedcond Flower app on a real SuperLink with SuperNodes, all on loopback,
# insecure local mode (no TLS: for a laptop or CI only, never across machines).
#
#   scripts/deploy_local.sh [NUM_NODES] [RUN_CONFIG]
#   e.g. scripts/deploy_local.sh 2 "strategy='fedavg' rounds=2"
#
# Starts one flower-superlink and NUM_NODES flower-supernodes (partition-id=i,
# num-partitions=NUM_NODES) on free 127.0.0.1 ports, submits the app in this repository
# with `flwr run . deploy --stream`, and stops every process it started on exit (also on
# error or Ctrl-C). FLWR_HOME is a fresh temporary directory, so nothing under ~/.flwr is
# touched. Bounded: the run is killed after DEPLOY_TIMEOUT seconds (default 300).
# Exit status: that of `flwr run` (0 when the run finished).
set -euo pipefail

NUM_NODES="${1:-2}"
RUN_CONFIG="${2:-}"
TIMEOUT="${DEPLOY_TIMEOUT:-300}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/fedcond-deploy.XXXXXX")"
export FLWR_HOME="$WORK/flwr-home"
# Offline: the app's dependencies are those of this environment; never `uv sync`.
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
mkdir -p "$FLWR_HOME"
PIDS=()

descendants() {  # every live descendant of a PID, by parent PID (ours only, never by name)
  local child
  for child in $(pgrep -P "$1" 2>/dev/null); do echo "$child"; descendants "$child"; done
}

cleanup() {
  local all=() pid
  for pid in "${PIDS[@]}"; do all+=("$pid" $(descendants "$pid")); done
  for pid in "${all[@]}"; do kill "$pid" 2>/dev/null || true; done
  sleep 1
  for pid in "${all[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  [[ -n "${KEEP_DEPLOY_DIR:-}" ]] || rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

free_port() { python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }

LINK_PORT="$(free_port)"
echo "deploy: SuperLink on 127.0.0.1:$LINK_PORT, $NUM_NODES SuperNodes, logs in $WORK"
flower-superlink --insecure --host 127.0.0.1 --port "$LINK_PORT" \
  --disable-runtime-dependency-installation >"$WORK/superlink.log" 2>&1 &
PIDS+=($!)

# Wait (bounded) for the SuperLink's HTTP endpoint.
for _ in $(seq 1 60); do
  if python -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', $LINK_PORT)))"; then break; fi
  sleep 0.5
done

for ((i = 0; i < NUM_NODES; i++)); do
  NODE_PORT="$(free_port)"
  flower-supernode --insecure --superlink "127.0.0.1:$LINK_PORT" --host 127.0.0.1 --port "$NODE_PORT" \
    --node-config "partition-id=$i num-partitions=$NUM_NODES" >"$WORK/supernode-$i.log" 2>&1 &
  PIDS+=($!)
done

cat >"$FLWR_HOME/config.toml" <<EOF
[superlink]
default = "deploy"

[superlink.deploy]
address = "127.0.0.1:$LINK_PORT"
insecure = true
EOF

cd "$REPO"
ARGS=(run . deploy --stream)
if [[ -n "$RUN_CONFIG" ]]; then ARGS+=(--run-config "$RUN_CONFIG"); fi
set +e
timeout "$TIMEOUT" flwr "${ARGS[@]}"
STATUS=$?
set -e
if [[ $STATUS -ne 0 ]]; then
  echo "deploy: flwr run exited with $STATUS; SuperLink log tail:" >&2
  tail -n 30 "$WORK/superlink.log" >&2 || true
fi
exit $STATUS
