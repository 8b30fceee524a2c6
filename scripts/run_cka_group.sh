#!/usr/bin/env bash
# cka_group (seeds/001) on CIFAR-100 pairs, with its ablations. Every run fixes the group count n
# (CKA_GROUPS, default 3: --cka_groups auto's knee finds weakly separated groups unreliably, so a table made
# with it would mix different n across pairs and seeds). Each ablation changes one option of that
# configuration (--cka_grouping dp, --cka_student_split even, --cka_estimator unbiased, --cka_pool 4;
# weights -c 1 -d 1 -b 1 = CKAGroup.recommended; RepDistiller's recipe otherwise):
#   grouping   --cka_grouping uniform | random           (the CKA dynamic programme vs even / random cuts)
#   groups     --cka_groups N for N in NGROUPS            (N a number, or auto: the knee)
#   split      --cka_student_split proportional | anchored (vs the even student split)
#   estimator  --cka_estimator biased                      (vs the unbiased minibatch estimator)
#   pool       --cka_pool P for P in POOLS                 (maps pooled to P x P before the Gram; 0 = not pooled)
# A run is named by its trial, "<tag>_<n>", and uses --seed n, so that trial n of every variant starts from
# the same student initialisation and data order. The tag names n ("groups-3"; none for auto) and the
# ablation ("groups-3-grouping-uniform"): e.g. S:resnet8x4_T:resnet32x4_cifar100_cka_group_r:1.0_a:1.0_b:1.0_
# groups-3-split-anchored_0. A group count above min(L_s, L_t) is skipped. With CKA_GROUPS=auto the names are
# those of earlier versions of this script ("0", "grouping-uniform_0", ...; the default run is then the
# same run as run_cifar_distill.sh's cka_group row: finished runs are skipped). scripts/summarize.py shows
# each variant as its own row ("CKA-group (ours) [groups-3-grouping-uniform]").
#
#   TRIALS=3 GPUS=0,1,2,3 DATA=./data bash scripts/run_cka_group.sh
#   DRY_RUN=1 ABLATIONS="split" PAIRS="resnet32x4:resnet8x4" bash scripts/run_cka_group.sh
#
# Environment:
#   TRIALS        trials per configuration (default 3)
#   GPUS, PER_GPU one run per GPU slot (CUDA_VISIBLE_DEVICES), as in run_cifar_distill.sh
#   DATA, DATASET data folder (default ./data) and dataset (default cifar100)
#   PAIRS         teacher:student pairs (default below)
#   CKA_GROUPS    the group count n of every run (default 3; "auto" for the knee)
#   ABLATIONS     axes to run (default "grouping groups split estimator pool"); BASELINE=0 drops the default runs
#   NGROUPS       group counts of the "groups" axis (default "1 2 3 4 auto")
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
: "${CKA_GROUPS:=3}"
: "${ABLATIONS:=grouping groups split estimator pool}"
: "${BASELINE:=1}"
: "${NGROUPS:=1 2 3 4 auto}"
: "${POOLS:=0 1 2 8}"
WEIGHTS="-c 1 -d 1 -b 1"

[[ $TRIALS =~ ^[0-9]+$ ]] || die "TRIALS=$TRIALS: give a number of trials"
check_n() { [[ $1 == auto || $1 =~ ^[1-9][0-9]*$ ]] || die "$2: '$1' is not a positive whole number or auto"; }
check_n "$CKA_GROUPS" CKA_GROUPS

# layers (block outputs, models' layer_names()) per model: --cka_groups must not exceed min(L_s, L_t)
declare -A LAYERS=(
  [resnet20]=11 [resnet32]=17 [resnet56]=29 [resnet110]=56 [resnet8x4]=5 [resnet32x4]=17
  [wrn_16_2]=8 [wrn_40_2]=20 [wrn_40_1]=20 [vgg8]=6 [vgg13]=11
  [ResNet50]=18 [MobileNetV2]=20 [ShuffleV1]=18 [ShuffleV2]=19
)

# the tag and flags of group count n: none for auto (the distiller's default)
n_tag() { [[ $1 == auto ]] && echo "" || echo "groups-$1"; }
n_flags() { [[ $1 == auto ]] && echo "" || echo "--cka_groups $1"; }
join_tag() { [[ -n $1 && -n $2 ]] && echo "$1-$2" || echo "$1$2"; }

# variant list: "tag|n|flags", each tag once
variants=()
declare -A seen_tag=()
add_variant() { [[ -n ${seen_tag["x$1"]:-} ]] && return; seen_tag["x$1"]=1; variants+=("$1|$2|$3"); }
base=$(n_tag "$CKA_GROUPS")
[[ $BASELINE == 1 ]] && add_variant "$base" "$CKA_GROUPS" "$(n_flags "$CKA_GROUPS")"
for axis in $ABLATIONS; do
  case $axis in
    grouping) for v in uniform random; do
        add_variant "$(join_tag "$base" "grouping-$v")" "$CKA_GROUPS" "$(n_flags "$CKA_GROUPS") --cka_grouping $v"; done ;;
    groups) for v in $NGROUPS; do
        check_n "$v" NGROUPS
        add_variant "$(n_tag "$v")" "$v" "$(n_flags "$v")"; done ;;
    split) for v in proportional anchored; do
        add_variant "$(join_tag "$base" "split-$v")" "$CKA_GROUPS" "$(n_flags "$CKA_GROUPS") --cka_student_split $v"; done ;;
    estimator) add_variant "$(join_tag "$base" estimator-biased)" "$CKA_GROUPS" "$(n_flags "$CKA_GROUPS") --cka_estimator biased" ;;
    pool) for v in $POOLS; do
        [[ $v =~ ^[0-9]+$ ]] || die "POOLS: '$v' is not a whole number"
        add_variant "$(join_tag "$base" "pool-$v")" "$CKA_GROUPS" "$(n_flags "$CKA_GROUPS") --cka_pool $v"; done ;;
    *) die "ABLATIONS: unknown axis '$axis'; choose from: grouping groups split estimator pool" ;;
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
      IFS='|' read -r tag n flags <<< "$var"
      if [[ $n != auto && -n ${LAYERS[$t]:-} && -n ${LAYERS[$s]:-} ]]; then
        lmin=$((LAYERS[$t] < LAYERS[$s] ? LAYERS[$t] : LAYERS[$s]))
        if ((n > lmin)); then
          ((trial > 0)) || note "skip ${tag} on $t -> $s: $n groups > min(L_t, L_s) = min(${LAYERS[$t]}, ${LAYERS[$s]})"
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
