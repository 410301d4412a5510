#!/usr/bin/env bash
# The GPU checks in one command, sized for a lent GPU machine's few minutes (the device tool: 15 minutes a session,
# 10 a command). Run from the repository root where python3 has a CUDA torch, transformers and peft (the lent H200's
# image has them); the serving packages it lacks travel as wheels in .whl/ (bench/device_wheels.sh fetches them here).
#
#   1. tests/test_device.py on the GPU: every model kind loaded onto it by its loader in float32 (chats as on the
#      CPU) and bfloat16, its language model also in int8 and nf4 (cached decoding agrees with one forward),
#      concurrent turns batched there as each alone; training on the GPU in bf16 and fp16 (tests/train's runs use
#      device: auto), and LoRA over an NF4 base (QLoRA).
#   2. bench/serve.py at LLaMA-7B's and CLIP ViT-L/14's shapes in bfloat16: batching versus taking turns over HTTP.
#
# Everything it prints also goes to $OUT (default ./device-out): gpu.txt, tests.txt, serve.txt.
#   DEVICE=cpu SERVE_ARGS="--size small --clients 1,2 --requests 1 --max-tokens 4" bench/device_check.sh  # a dry run
set -uo pipefail
OUT=${OUT:-device-out}
DEVICE=${DEVICE:-cuda}
SERVE_ARGS=${SERVE_ARGS:---size 7b --clients 1,8 --requests 1 --max-tokens 128 --rounds 1}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

{
  (nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi")
  "$PYTHON" -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
        '| transformers', transformers.__version__, '| peft', peft.__version__)"
} 2>&1 | tee "$OUT/gpu.txt"

status=0
MMGPT_TEST_DEVICE=$DEVICE timeout 120 "$PYTHON" -m pytest -q -p no:cacheprovider -p no:randomly tests/test_device.py \
  tests/train/test_trainer.py::test_reduced_precision_runs \
  tests/train/test_trainer.py::test_a_lora_run_writes_a_peft_adapter_checkpoints_and_metrics \
  tests/train/test_quantized_base.py 2>&1 \
  | tee "$OUT/tests.txt" || status=1

# shellcheck disable=SC2086  # SERVE_ARGS is a list of arguments
timeout 450 "$PYTHON" bench/serve.py --device "$DEVICE" --dtype "$([ "$DEVICE" = cpu ] && echo float32 || echo bfloat16)" \
  $SERVE_ARGS 2>&1 | tee "$OUT/serve.txt" || status=1
exit $status
