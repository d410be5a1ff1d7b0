#!/usr/bin/env bash
# GPU rows of saferl's benchmarks, on one GPU, in about 5 minutes (at most 8):
#
#   1. the runtime benchmark (experiments/bench/runtime.py): each role's call alone (generate,
#      train step, reward forward, critic forward and train step) on a ~0.47B-parameter Llama
#      built from a config (hidden 1024, 24 layers, vocabulary 32000), bf16, NCCL, ZeRO 2 and 3;
#   2. whole PPO-Lagrangian iterations through the learner (experiments/bench/ppo_iteration.py),
#      six roles sharing the GPU, with Hugging Face generate, and with vLLM engines where the
#      `vllm` extra is installed (the row says why it did not run otherwise).
#
# Each prints its table; tokens/s are generated tokens for generate and the rollout, prompt +
# response tokens otherwise. Run from anywhere, with saferl installed (pip install -e .):
#
#   bash experiments/bench/gpu.sh
#
# Sizes can be changed through the environment: HIDDEN, LAYERS, HEADS, VOCAB, BATCH, PROMPT_LEN,
# NEW_TOKENS.
set -uo pipefail
cd "$(dirname "$0")/../.."
export RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

HIDDEN=${HIDDEN:-1024} LAYERS=${LAYERS:-24} HEADS=${HEADS:-16} VOCAB=${VOCAB:-32000}
BATCH=${BATCH:-32} PROMPT_LEN=${PROMPT_LEN:-128} NEW_TOKENS=${NEW_TOKENS:-128}
shape=(--hidden "$HIDDEN" --layers "$LAYERS" --heads "$HEADS" --vocab "$VOCAB"
       --batch "$BATCH" --prompt-len "$PROMPT_LEN" --new-tokens "$NEW_TOKENS")

if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu.sh: torch sees no CUDA device; run it on a machine with a GPU" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch, transformers, deepspeed, ray; print(f'torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, deepspeed {deepspeed.__version__}, ray {ray.__version__}')"

status=0
echo
echo "== 1. runtime: each role's call alone =="
python experiments/bench/runtime.py --device cuda "${shape[@]}" --ranks 1 --stages 2,3 --repeats 3 || status=1

echo
echo "== 2. whole PPO-Lagrangian iterations =="
python experiments/bench/ppo_iteration.py --device cuda "${shape[@]}" --iterations 3 --rollout hf,vllm || status=1
exit $status
