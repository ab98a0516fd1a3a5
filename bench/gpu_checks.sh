#!/usr/bin/env bash
# Every GPU check of issue 18 in one call, for a session lent a GPU machine (no internet
# there; its image has python3 with torch, transformers, accelerate, peft and pytest).
#
# 1. Here, on the CPU machine (pip works): fetch the wheels the GPU machine lacks (TRL 0.29.0,
#    the peer, and its datasets) into .whl/, which git ignores:
#        bash bench/gpu_checks.sh prepare
# 2. There, through the device tool, one call (every step has its own time limit and writes
#    its output under $OUT as it goes, so a cut-off call still returns the steps before):
#        run(command="bash bench/gpu_checks.sh", carry=[".whl"], timeout_s=540)
#
# Steps, most valuable first:
#   env.txt        nvidia-smi, python, torch and transformers versions
#   tests.txt      the one-process tests of the training stages on CUDA (every stage picks
#                  the GPU when there is one; 109 tests, 30 s on 2 CPU cores): SFT, RM and PPO
#                  resume after a crash (the EMA and every restored state back on the model's
#                  device), bf16 autocast, fp16 loss scaling, LoRA, the static KV cache and
#                  compiled decode step, collect, pretraining
#   ppo-160m.txt   bench/ppo_throughput.py --config gpu-160m, ours and TRL interleaved
#   ppo-1b.txt     the same on gpu-1b: samples/s ratio, generation against the memory-bandwidth
#                  floor, peak GPU memory (targets in issue 18: >= 4x / 3x TRL, within 2x of
#                  the floor, under 40 GiB)
#   ppo-1b-fused.txt  gpu-1b again, ours only, with ppo.fused_logprobs (no (batch x response
#                  x vocabulary) logits): its peak GPU memory against ppo-1b's
set -u
cd "$(dirname "$0")/.."

if [ "${1:-}" = "prepare" ]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    # Python 3.12 wheels (the GPU image's python); pure-Python ones, so the platform tags
    # only satisfy pip. datasets 4.0 asks pyarrow >= 15, which the image has.
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
        -d .whl trl==0.29.0 datasets==4.0.0 dill==0.3.8 multiprocess==0.70.16 || exit 1
    ls -la .whl
    exit 0
fi

OUT=${OUT:-runs/gpu-checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD/src"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
SIDES=ours
python3 -c "import trl" 2>/dev/null && SIDES=ours,trl

{
    nvidia-smi
    python3 -c "import sys, torch, transformers, accelerate, peft
print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO GPU')
print('transformers', transformers.__version__, 'accelerate', accelerate.__version__,
      'peft', peft.__version__)"
    echo "peer sides: $SIDES"
} > "$OUT/env.txt" 2>&1

step() {  # step NAME SECONDS COMMAND...: its output in $OUT/NAME.txt, its exit status last
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    echo "exit $rc" >> "$OUT/$name.txt"
    echo "   exit $rc"
}

step tests 150 python3 -m pytest -q -p no:cacheprovider tests/test_ppo.py tests/test_ppo_speed.py \
    tests/test_rollout.py tests/test_sft.py tests/test_reward.py tests/test_precision.py \
    tests/test_collect.py tests/test_real_models.py tests/test_modeling.py tests/test_pretrain.py
step ppo-160m 150 python3 bench/ppo_throughput.py --config gpu-160m --runs 1 --iters 3 \
    --sides "$SIDES" --trl-python python3
step ppo-1b 200 python3 bench/ppo_throughput.py --config gpu-1b --runs 1 --iters 3 \
    --sides "$SIDES" --trl-python python3
step ppo-1b-fused 150 python3 bench/ppo_throughput.py --config gpu-1b --runs 1 --iters 3 \
    --sides ours --set ppo.fused_logprobs=true
