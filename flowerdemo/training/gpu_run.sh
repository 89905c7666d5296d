#!/usr/bin/env bash
# Both trainings in one go on a machine with one NVIDIA GPU and PyTorch, from the repository root:
#
#   python -m flowerdemo.training.carry --pack PACK_DIR --out .carry      # here, beforehand
#   bash flowerdemo/training/gpu_run.sh .carry OUT_DIR [TOTAL_SECONDS]    # there
#
# 1. EfficientNet-Lite0 from ImageNet weights: learning rate chosen on val (trained on train),
#    then the chosen recipe trained on train+val; evaluated on test.
# 2. ResNet-50 from scratch, distilled from that Lite0 on train+val, for the time that is left.
# The whole script ends within TOTAL_SECONDS (default 540): the ResNet-50 gets what the Lite0
# runs did not use, less a margin for its evaluation and saving.
set -euo pipefail
carry=${1:?folder written by flowerdemo.training.carry}
out=${2:?folder for weights, results and logs}
total_s=${3:-540}
started=$(date +%s)
export PYTHONUNBUFFERED=1

site=$(mktemp -d)
python3 -m pip install --quiet --no-index --no-deps --no-compile --target "$site" "$carry"/wheels/*.whl
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'

eval_splits=val
if [[ -f "$carry/flowers102_144px_q85_test.npz" ]]; then
    eval_splits=val,test
fi

python3 -m flowerdemo.training.train --arch lite0 --pack "$carry" --out "$out" \
    --imagenet-weights "$carry/lite0_imagenet_fp16.pt" --eval-splits "$eval_splits" \
    --search-lr 5e-4,1e-3,2e-3,4e-3 --search-budget-s 45 \
    --final-splits train,val --budget-s 60

# What is left, less 45 s for loading, evaluating and saving; at most 400 s of training.
left=$(( total_s - ($(date +%s) - started) - 45 ))
budget=$(( left < 400 ? left : 400 ))
if (( budget < 60 )); then
    echo "only ${left} s left: no time to train the ResNet-50" >&2
    exit 1
fi
python3 -m flowerdemo.training.train --arch resnet50 --pack "$carry" --out "$out" \
    --teacher "$out/lite0.pt" --train-splits train,val --eval-splits "$eval_splits" \
    --budget-s "$budget"
echo "gpu_run: done in $(( $(date +%s) - started )) s"
