#!/usr/bin/env bash
# Train every teacher and every vanilla student of the standard CIFAR-100 pairs (RepDistiller's
# Tables 1-2: the "Teacher" and "Student" rows), TRIALS times each, with RepDistiller's recipe
# (train_teacher.py defaults: SGD lr 0.05, or 0.01 for MobileNetV2/ShuffleV1/ShuffleV2, momentum 0.9,
# wd 5e-4, batch 64, 240 epochs, lr x0.1 at 150/180/210).
#
#   TRIALS=3 GPUS=0,1,2,3 DATA=./data bash scripts/run_cifar_vanilla.sh
#   DRY_RUN=1 bash scripts/run_cifar_vanilla.sh            # print the commands only
#
# Environment:
#   TRIALS     trials per model, run as --trial 0 .. TRIALS-1 (default 3); trial n sets seed n
#   GPUS       comma-separated GPU ids (default 0); each run gets one GPU via CUDA_VISIBLE_DEVICES and
#              runs alone on it: the bs-64 CIFAR recipe is not split across GPUs. "cpu": no GPU.
#   PER_GPU    runs at a time on each GPU (default 1)
#   DATA       folder holding cifar-100-python/ (default ./data)
#   DATASET    cifar100 (default) or cifar10
#   ROLE       all (default), teachers or students
#   PAIRS      space-separated teacher:student pairs (default: RepDistiller's 11, REPD_PAIRS in lib_runs.sh)
#   SAVE, LOG_DIR, DRY_RUN, SKIP_DONE, RESUME, EXTRA_ARGS, PYTHON: see scripts/lib_runs.sh
#
# Output: $SAVE/teachers/models/<model>_vanilla_<dataset>_trial_<n>/ (metrics.jsonl, summary.json,
# <model>_best.pth, <model>_last.pth, ckpt_epoch_*.pth). Teachers are queued first (trial 0 first),
# so scripts/run_cifar_distill.sh can start as soon as they exist; scripts/summarize.py makes the table.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib_runs.sh

: "${TRIALS:=3}"
: "${DATA:=./data}"
: "${DATASET:=cifar100}"
: "${ROLE:=all}"
: "${PAIRS:=$REPD_PAIRS}"

[[ $TRIALS =~ ^[0-9]+$ ]] || die "TRIALS=$TRIALS: give a number of trials"
case $ROLE in all | teachers | students) ;; *) die "ROLE=$ROLE: use all, teachers or students" ;; esac

teachers=() students=()
add_unique() {  # array-name value
  local -n arr=$1
  local x
  for x in "${arr[@]}"; do [[ $x == "$2" ]] && return 0; done
  arr+=("$2")
}
for pair in $PAIRS; do
  [[ $pair == *:* ]] || die "PAIRS entry '$pair': write teacher:student"
  add_unique teachers "${pair%%:*}"
  add_unique students "${pair#*:}"
done
models=()
if [[ $ROLE != students ]]; then for m in "${teachers[@]}"; do add_unique models "$m"; done; fi
if [[ $ROLE != teachers ]]; then for m in "${students[@]}"; do add_unique models "$m"; done; fi

for ((trial = 0; trial < TRIALS; trial++)); do
  for m in "${models[@]}"; do
    enqueue "${m}_vanilla_${DATASET}_trial_${trial}" "$(teacher_folder "$m" "$DATASET" "$trial")" "$m" \
      "$PYTHON" train_teacher.py --model "$m" --dataset "$DATASET" --data_folder "$DATA" \
      --trial "$trial" --save_dir "$SAVE"
  done
done
run_queue run_cifar_vanilla
