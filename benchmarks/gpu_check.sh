#!/usr/bin/env bash
# The GPU path in one call (issue 13, item 4): on a machine with an NVIDIA GPU and PyTorch,
# install the carried wheels, run the test suite's CUDA-marked tests, then measure on a ~1B
# Llama-shaped random model in 4-bit: `sftchat train` against TRL's SFTTrainer (training
# tokens/s, peak GPU memory, MFU) and the chat engine (4-bit decode tokens/s, hot-swap time).
# Under ~8 minutes on one H100/H200.
#
# 1. Here (a machine that reaches the package index, with ../shared beside the checkout):
#        bash benchmarks/gpu_check.sh --prepare
#    puts the wheels the GPU image lacks (bitsandbytes, textual, trl, datasets and what they
#    need beyond it) and 400 Alpaca records into .whl/ (git-ignored), about 46 MB.
# 2. On the GPU machine (the device tool: carry [".whl"]), from the repository root:
#        bash benchmarks/gpu_check.sh
#    Logs and JSON records go to $OUT (or ./gpu-results). Copy the figures into
#    benchmarks/RESULTS.md §2 with the device named.
#
# Without a GPU the script installs and imports the kit, then stops, saying so (exit 3):
# everything up to the point where CUDA is needed is checked on any machine.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KIT="${SFTCHAT_GPU_KIT:-$ROOT/.whl}"
RESULTS="${OUT:-$ROOT/gpu-results}"
PYTHON="${PYTHON:-python3}"

# The wheels the GPU image lacks (its package list: /work/.library/device/KINDS.md), pinned to
# the versions tested on CPU here. Python 3.12, x86-64.
WHEELS=(bitsandbytes==0.50.2 textual==8.2.8 platformdirs==4.14.8 mdit-py-plugins==0.7.0
        linkify-it-py==2.2.0 uc-micro-py==2.0.0 trl==1.16.0 datasets==5.2.0 dill==0.4.1
        multiprocess==0.70.19)

if [[ "${1:-}" == "--prepare" ]]; then
    mkdir -p "$KIT"
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$KIT" "${WHEELS[@]}"
    "$PYTHON" - "$ROOT/../shared/data/alpaca_5000.json" "$KIT/alpaca.json" <<'EOF'
import json, sys
records = json.load(open(sys.argv[1], encoding="utf-8"))[:400]
json.dump(records, open(sys.argv[2], "w", encoding="utf-8"))
EOF
    du -sh "$KIT"
    exit 0
fi

mkdir -p "$RESULTS"
step() { echo; echo "== $* ($(date +%T))"; }

step "installing the carried wheels"
# For the GPU image's Python 3.12 (named, so that a dry run elsewhere installs the same kit).
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --python-version 3.12 --implementation cp --only-binary=:all: \
    --target /tmp/sftchat-site "$KIT"/*.whl
export PYTHONPATH="/tmp/sftchat-site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
"$PYTHON" -c "import bitsandbytes, peft, textual, transformers, sftchat.cli; \
print('kit ok: bitsandbytes', bitsandbytes.__version__, '| transformers', \
transformers.__version__, '| peft', peft.__version__)"
TRL=1
"$PYTHON" -c "import trl, datasets" 2>"$RESULTS/trl-import.log" || {
    TRL=0; echo "TRL does not import here (see trl-import.log): its rows are skipped"; }

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA GPU visible to PyTorch: stopping before the GPU steps (the kit installs" \
         "and imports; run this on a GPU machine for the figures)"
    exit 3
fi
"$PYTHON" -c "import torch; p = torch.cuda.get_device_properties(0); \
print('device:', p.name, round(p.total_memory / 2**30, 1), 'GiB, torch', torch.__version__)" \
    | tee "$RESULTS/device.txt"

step "CUDA-marked tests (4-bit load, bf16, generate, train, hot-swap, memory estimate, OOM)"
"$PYTHON" -m pytest -q -m cuda tests/gpu -p no:cacheprovider -p no:randomly 2>&1 \
    | tee "$RESULTS/cuda-tests.log" || echo "(CUDA tests failed: see cuda-tests.log)"

step "a ~1B Llama-shaped model (TinyLlama's shape, random weights, a tokenizer trained on the data)"
MODEL=/tmp/sftchat-llama-1b
"$PYTHON" "$ROOT/benchmarks/bench_model.py" --data "$KIT/alpaca.json" --out "$MODEL" \
    --vocab 32000 --hidden 2048 --intermediate 5632 --layers 22 --heads 32 --kv-heads 4

step "sftchat train vs TRL SFTTrainer on the GPU, 4-bit NF4"
SKIP_TRL=(); [[ $TRL == 1 ]] || SKIP_TRL=(--skip-trl)
"$PYTHON" "$ROOT/benchmarks/train_vs_trl.py" --device cuda --model "$MODEL" \
    --data "$KIT/alpaca.json" --examples 400 --epochs 1 --batch-size 8 --max-length 512 \
    "${SKIP_TRL[@]}" --out "$RESULTS/train_vs_trl_gpu.json" 2>&1 | tee "$RESULTS/train_vs_trl.log"

step "4-bit decode tokens/s and hot-swap time on the GPU"
"$PYTHON" "$ROOT/benchmarks/engine_speed.py" --model "$MODEL" --tokens 128 --repeats 3 \
    --out "$RESULTS/engine_speed_gpu.json" 2>&1 | tee "$RESULTS/engine_speed.log"

step "done: $RESULTS"
