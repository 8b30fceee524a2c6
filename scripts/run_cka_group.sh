#!/usr/bin/env bash
# cka_group (seeds/001) on CIFAR-100 pairs, with its ablations. Each ablation changes one option of the
# default configuration (--cka_grouping dp, --cka_groups auto, --cka_estimator unbiased, --cka_pool 4;
# weights -c 1 -d 1 -b 1 = CKAGroup.recommended; RepDistiller's recipe otherwise):
#   grouping   --cka_grouping uniform | random      (the CKA dynamic programme vs even / random cuts)
#   groups     --cka_groups N for N in NGROUPS         (vs the automatic knee); N > min(L_s, L_t) is skipped
#   estimator  --cka_estimator biased                 (vs the unbiased minibatch estimator)
#   pool       --cka_pool P for P in POOLS            (maps pooled to P x P before the Gram; 0 = not pooled)
# An ablation run is named by its trial, "<axis>-<value>_<n>" (e.g. S:resnet8x4_T:resnet32x4_cifar100_
# cka_group_r:1.0_a:1.0_b:1.0_grouping-uniform_0), and uses --seed n, so that trial n of every variant
# starts from the same student initialisation and data order as the default run "n" (which is the same
# run as run_cifar_distill.sh's cka_group row: finished runs are skipped). scripts/summarize.py shows
# each variant as its own row ("CKA-group (ours) [grouping-uniform]").
#
#   TRIALS=3 GPUS=0,1,2,3 DATA=./data bash scripts/run_cka_group.sh
#   DRY_RUN=1 ABLATIONS="grouping" PAIRS="resnet32x4:resnet8x4" bash scripts/run_cka_group.sh
#
# Environment:
#   TRIALS        trials per configuration (default 3)
#   GPUS, PER_GPU one run per GPU slot (CUDA_VISIBLE_DEVICES), as in run_cifar_distill.sh
#   DATA, DATASET data folder (default ./data) and dataset (default cifar100)
#   PAIRS         teacher:student pairs (default below)
#   ABLATIONS     axes to run (default "grouping groups estimator pool"); BASELINE=0 drops the default runs
#   NGROUPS        group counts of the "groups" axis (default "1 2 3 4")
#   POOLS         pool sizes of the "pool" axis (default "0 1 2 8")
#   TEACHER_TRIAL, TEACHER_PATH: as in run_cifar_distill.sh
#   SAVE, LOG_DIR, DRY_RUN, SKIP_DONE, RESUME, EXTRA_ARGS, PYTHON: see scripts/lib_runs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib_runs.sh

: "${TRIALS:=3}"
: "${DATA:=./data}"
: "${DATASET:=cifar100}"
: "${TEACHER_TRIAL:=0}"
: "${TEACHER_PATH:=$(default_teacher_path "$DATASET" "$TEACHER_TRIAL")}"
: "${PAIRS:=resnet32x4:resnet8x4 wrn_40_2:wrn_16_2 vgg13:vgg8 resnet32x4:ShuffleV2}"
: "${ABLATIONS:=grouping groups estimator pool}"
: "${BASELINE:=1}"
: "${NGROUPS:=1 2 3 4}"
: "${POOLS:=0 1 2 8}"
WEIGHTS="-c 1 -d 1 -b 1"

[[ $TRIALS =~ ^[0-9]+$ ]] || die "TRIALS=$TRIALS: give a number of trials"

# layers (block outputs, models' layer_names()) per model: --cka_groups must not exceed min(L_s, L_t)
declare -A LAYERS=(
  [resnet20]=11 [resnet32]=17 [resnet56]=29 [resnet110]=56 [resnet8x4]=5 [resnet32x4]=17
  [wrn_16_2]=8 [wrn_40_2]=20 [wrn_40_1]=20 [vgg8]=6 [vgg13]=11
  [ResNet50]=18 [MobileNetV2]=20 [ShuffleV1]=18 [ShuffleV2]=19
)

# variant list: "tag|flags"
variants=()
[[ $BASELINE == 1 ]] && variants+=("|")
for axis in $ABLATIONS; do
  case $axis in
    grouping) for v in uniform random; do variants+=("grouping-$v|--cka_grouping $v"); done ;;
    groups) for v in $NGROUPS; do
        [[ $v =~ ^[1-9][0-9]*$ ]] || die "NGROUPS: '$v' is not a positive whole number"
        variants+=("groups-$v|--cka_groups $v"); done ;;
    estimator) variants+=("estimator-biased|--cka_estimator biased") ;;
    pool) for v in $POOLS; do
        [[ $v =~ ^[0-9]+$ ]] || die "POOLS: '$v' is not a whole number"
        variants+=("pool-$v|--cka_pool $v"); done ;;
    *) die "ABLATIONS: unknown axis '$axis'; choose from: grouping groups estimator pool" ;;
  esac
done

read -r -a wargs <<< "$WEIGHTS"
missing=()
for ((trial = 0; trial < TRIALS; trial++)); do
  for pair in $PAIRS; do
    [[ $pair == *:* ]] || die "PAIRS entry '$pair': write teacher:student"
    t=${pair%%:*} s=${pair#*:}
    path_t=${TEACHER_PATH//"{t}"/$t}
    if [[ ! -f $path_t ]]; then
      [[ " ${missing[*]} " == *" $path_t "* ]] || missing+=("$path_t")
    fi
    for var in "${variants[@]}"; do
      tag=${var%%|*} flags=${var#*|}
      if [[ $tag == groups-* && -n ${LAYERS[$t]:-} && -n ${LAYERS[$s]:-} ]]; then
        n=${tag#groups-} lmin=$((LAYERS[$t] < LAYERS[$s] ? LAYERS[$t] : LAYERS[$s]))
        if ((n > lmin)); then
          ((trial > 0)) || note "skip $tag on $t -> $s: $n groups > min(L_t, L_s) = min(${LAYERS[$t]}, ${LAYERS[$s]})"
          continue
        fi
      fi
      run_trial=$trial
      [[ -n $tag ]] && run_trial="${tag}_$trial"
      read -r -a fargs <<< "$flags"
      enqueue "S-${s}_T-${t}_cka_group_${run_trial}" \
        "$(student_folder "$s" "$t" "$DATASET" cka_group "$WEIGHTS" "$run_trial")" "$s" \
        "$PYTHON" train_student.py --path_t "$path_t" --model_s "$s" --distill cka_group "${wargs[@]}" \
        "${fargs[@]}" --dataset "$DATASET" --data_folder "$DATA" --trial "$run_trial" --seed "$trial" --save_dir "$SAVE"
    done
  done
done
if ((${#missing[@]} > 0 && ${#QUEUE_CMDS[@]} > 0)); then
  if [[ $DRY_RUN == 1 ]]; then
    note "teacher checkpoints not found yet: ${missing[*]}"
  else
    die "teacher checkpoints not found: ${missing[*]}; train them first (ROLE=teachers bash scripts/run_cifar_vanilla.sh) or set TEACHER_PATH"
  fi
fi
run_queue run_cka_group
