#!/usr/bin/env bash
# Distil every student of the standard CIFAR-100 pairs with every method of the zoo (cka_group
# included), TRIALS times, each method with its published weights: RepDistiller's protocol
# (its scripts/run_cifar_distill.sh; recipe = train_student.py defaults: SGD lr 0.05, or 0.01 for
# MobileNetV2/ShuffleV1/ShuffleV2, batch 64, 240 epochs, x0.1 at 150/180/210, T=4). The teachers come
# from scripts/run_cifar_vanilla.sh (trial TEACHER_TRIAL, last epoch, as RepDistiller's ckpt_epoch_240).
#
#   TRIALS=3 GPUS=0,1,2,3 DATA=./data bash scripts/run_cifar_distill.sh
#   DRY_RUN=1 METHODS="kd crd" PAIRS="resnet32x4:resnet8x4" bash scripts/run_cifar_distill.sh
#
# Environment:
#   TRIALS        student trials, --trial 0 .. TRIALS-1 (default 3); trial n sets seed n
#   GPUS          comma-separated GPU ids (default 0); one run per GPU (CUDA_VISIBLE_DEVICES), since the
#                 bs-64 CIFAR recipe does not split across GPUs; "cpu": no GPU
#   PER_GPU       runs at a time on each GPU (default 1)
#   DATA          folder holding cifar-100-python/ (default ./data)
#   DATASET       cifar100 (default)
#   METHODS       space-separated row names (default: every method, below, and the LS/DOT rows
#                 kd_ls dkd_ls mlkd_ls kd_dot); "crd_kd" adds the CRD paper's CRD+KD row (-c 1 -d 1 -b 0.8),
#                 which is not in the default list
#   PAIRS         space-separated teacher:student pairs (default: the 11 standard pairs)
#   TEACHER_TRIAL which teacher trial teaches every student trial (default 0)
#   TEACHER_PATH  teacher checkpoint, {t} = teacher name (default
#                 $SAVE/teachers/models/{t}_vanilla_$DATASET_trial_$TEACHER_TRIAL/{t}_last.pth); e.g.
#                 TEACHER_PATH='save/models/{t}_vanilla/ckpt_epoch_240.pth' for RepDistiller's files
#   SAVE, LOG_DIR, DRY_RUN, SKIP_DONE, RESUME, EXTRA_ARGS, PYTHON: see scripts/lib_runs.sh
#
# Weights (= each distiller's `recommended` attribute, or the per-pair setting of the method's own scripts
# in PAIR_WEIGHTS / PAIR_FLAGS; tests/test_scripts.py checks this):
#   RepDistiller rows: kd -c 0.1 -d 0.9; every other RepDistiller method -c 1 -d 0 -b <beta>.
#   FitNet: RepDistiller's FitNet is *joint* training on feats[2] (no hint stage 1; mdistiller#29): the
#     method's defaults (--hint_layer 2 --init_epochs 0), spelt out in the row.
#   AB, FT, FSP keep their 30-epoch init stage (--init_epochs default 30), as RepDistiller.
#   CRD draws its 16384 negatives per batch on the device, K distinct per anchor as RepDistiller's loader
#     does; EXTRA_ARGS="--crd_sampler dataset" draws them per sample in the loader instead.
#   SemCKD/SRRL: SemCKD's and SimKD's protocol (-c 1 -d 1), SimKD -c 0 -d 0 -b 1; cosine: seeds/004's
#     0.5/0.5; cka_group: ours (-c 1 -d 1 -b 1). Compare each with the published row of its own protocol.
#   2022-2024 rows (mdistiller's and the authors' configs): dkd -c 1 -d 0 -b 1 with --dkd_beta 8 (6 for
#     wrn_16_2, wrn_40_1, vgg8, vgg13->MobileNetV2; 2 for resnet20/resnet32 students) and its 20-epoch
#     warm-up (the method's default); reviewkd -b 5 (8 for ShuffleV2, 0.6 resnet56->resnet20, 1
#     resnet110->resnet32) with its warm-up; ofd -b 0.001; dist -b 2 (tau 4); mlkd -c 0.1 -b 0.9 at lr
#     0.025 (0.01 for ShuffleNet/MobileNet) with its strongly augmented second view (the method's default:
#     MLKD's published rows also trained 480 epochs; EXTRA_ARGS="--epochs 480 --lr_decay_epochs ..." for
#     that); ctkd (KD+CTKD) -c 0.1 -d 0.9; rcka -b 15 (the authors' script).
#   Loop-option rows (their folders are tagged kd+LS, kd+DOT, ...): kd_ls = KD+LS -c 0.1 -d 9 --kd_T 2
#     (vgg8: T 3); dkd_ls = DKD+LS, the KD weight on DKD's alpha and beta (-b 9; vgg8 -b 15 beta 2,
#     wrn_16_2 -b 12 beta 2) at base T 2; mlkd_ls = MLKD+LS -b 9 (vgg8: 6) at T 2; kd_dot = KD+DOT
#     --optimizer dot --dot_delta 0.075. The LS README gives (T, weight[, beta]) per pair; its DKD code
#     multiplies beta by the weight twice and leaves DKD's T at 4, so what its DKD+LS rows ran is unclear:
#     we run the stated intent.

# Skip rule (printed as '# skip' notes): a method runs on a pair unless its shapes cannot match:
#   fsp, kdsvd  compare stage features channel by channel: they need identical channel widths at every
#               feature stage (WIDTHS below), i.e. same-width pairs only (RepDistiller: FSP "N/A");
#   cosine      needs the flattened last stage maps (LAST_MAP, C*H*W) in an integer ratio.
#   A model missing from these tables is not skipped: train_student.py refuses with one line if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib_runs.sh

: "${TRIALS:=3}"
: "${DATA:=./data}"
: "${DATASET:=cifar100}"
: "${TEACHER_TRIAL:=0}"
: "${TEACHER_PATH:=$(default_teacher_path "$DATASET" "$TEACHER_TRIAL")}"
: "${PAIRS:=$REPD_PAIRS}"
ALL_METHODS="kd hint attention similarity correlation vid rkd pkt abound factor fsp nst kdsvd crd semckd srrl simkd cosine cka_group reviewkd ofd rcka dkd dist mlkd ctkd kd_ls dkd_ls mlkd_ls kd_dot"
: "${METHODS:=$ALL_METHODS}"

[[ $TRIALS =~ ^[0-9]+$ ]] || die "TRIALS=$TRIALS: give a number of trials"

# --distill name -> published weights
declare -A WEIGHTS=(
  [kd]="-c 0.1 -d 0.9 -b 0"
  [hint]="-c 1 -d 0 -b 100"
  [attention]="-c 1 -d 0 -b 1000"
  [similarity]="-c 1 -d 0 -b 3000"
  [correlation]="-c 1 -d 0 -b 0.02"
  [vid]="-c 1 -d 0 -b 1"
  [rkd]="-c 1 -d 0 -b 1"
  [pkt]="-c 1 -d 0 -b 30000"
  [abound]="-c 1 -d 0 -b 1"
  [factor]="-c 1 -d 0 -b 200"
  [fsp]="-c 1 -d 0 -b 50"
  [nst]="-c 1 -d 0 -b 50"
  [kdsvd]="-c 1 -d 0 -b 1"
  [crd]="-c 1 -d 0 -b 0.8"
  [semckd]="-c 1 -d 1 -b 400"
  [srrl]="-c 1 -d 1 -b 1"
  [simkd]="-c 0 -d 0 -b 1"
  [cosine]="-c 0.5 -d 0 -b 0.5"
  [cka_group]="-c 1 -d 1 -b 1"
  [crd_kd]="-c 1 -d 1 -b 0.8"
  [reviewkd]="-c 1 -d 0 -b 5"
  [ofd]="-c 1 -d 0 -b 0.001"
  [rcka]="-c 1 -d 0 -b 15"
  [dkd]="-c 1 -d 0 -b 1"
  [dist]="-c 1 -d 0 -b 2"
  [mlkd]="-c 0.1 -d 0 -b 0.9"
  [ctkd]="-c 0.1 -d 0.9 -b 0"
  [kd_ls]="-c 0.1 -d 9 -b 0"
  [dkd_ls]="-c 1 -d 0 -b 9"
  [mlkd_ls]="-c 0.1 -d 0 -b 9"
  [kd_dot]="-c 0.1 -d 0.9 -b 0"
)
# extra flags of a row
declare -A FLAGS=(
  [hint]="--hint_layer 2 --init_epochs 0"
  [dkd]="--dkd_beta 8"
  [mlkd]="--learning_rate 0.025"
  [kd_ls]="--logit_stand --kd_T 2"
  [dkd_ls]="--logit_stand --kd_T 2 --dkd_beta 8"
  [mlkd_ls]="--logit_stand --kd_T 2 --learning_rate 0.025"
  [kd_dot]="--optimizer dot --dot_delta 0.075"
)
# per-pair weights where a method's own script sets them (key method:teacher:student, or method:*:student)
declare -A PAIR_WEIGHTS=(
  [reviewkd:resnet56:resnet20]="-c 1 -d 0 -b 0.6"     # ReviewKD's CIFAR-100/script/reviewKD.sh
  [reviewkd:resnet110:resnet32]="-c 1 -d 0 -b 1"
  [reviewkd:*:ShuffleV2]="-c 1 -d 0 -b 8"
  [dkd_ls:vgg13:vgg8]="-c 1 -d 0 -b 15"                 # the LS README's per-pair (T, weight[, beta])
  [dkd_ls:wrn_40_2:wrn_16_2]="-c 1 -d 0 -b 12"
  [mlkd_ls:vgg13:vgg8]="-c 0.1 -d 0 -b 6"
)
# per-pair extra flags, same keys (they replace the row's FLAGS)
declare -A PAIR_FLAGS=(
  [dkd:wrn_40_2:wrn_16_2]="--dkd_beta 6"                # mdistiller's DKD configs
  [dkd:wrn_40_2:wrn_40_1]="--dkd_beta 6"
  [dkd:vgg13:vgg8]="--dkd_beta 6"
  [dkd:vgg13:MobileNetV2]="--dkd_beta 6"
  [dkd:resnet56:resnet20]="--dkd_beta 2"
  [dkd:resnet110:resnet32]="--dkd_beta 2"
  [kd_ls:vgg13:vgg8]="--logit_stand --kd_T 3"
  [dkd_ls:vgg13:vgg8]="--logit_stand --kd_T 2 --dkd_beta 2"
  [dkd_ls:wrn_40_2:wrn_16_2]="--logit_stand --kd_T 2 --dkd_beta 2"
  [mlkd:*:MobileNetV2]="--learning_rate 0.01"            # MLKD's ShuffleNet/MobileNet configs
  [mlkd:*:ShuffleV1]="--learning_rate 0.01"
  [mlkd:*:ShuffleV2]="--learning_rate 0.01"
  [mlkd_ls:*:MobileNetV2]="--logit_stand --kd_T 2 --learning_rate 0.01"
  [mlkd_ls:*:ShuffleV1]="--logit_stand --kd_T 2 --learning_rate 0.01"
  [mlkd_ls:*:ShuffleV2]="--logit_stand --kd_T 2 --learning_rate 0.01"
)

pair_value() {  # table method teacher student -> the per-pair entry, or the default given as $5
  local -n tab=$1
  local k
  for k in "$2:$3:$4" "$2:*:$4" "$2:$3:*"; do
    if [[ -n ${tab[$k]+x} ]]; then echo "${tab[$k]}"; return; fi
  done
  echo "$5"
}
# the --distill name of a row key (crd_kd is a row of crd)
declare -A DISTILL=(
  [crd_kd]=crd [kd_ls]=kd [dkd_ls]=dkd [mlkd_ls]=mlkd [kd_dot]=kd
)

# channel widths of feats[:-1] (stem and stages) and C*H*W of feats[-2] at 32x32, from models/
declare -A WIDTHS=(
  [resnet20]="16 16 32 64" [resnet32]="16 16 32 64" [resnet56]="16 16 32 64" [resnet110]="16 16 32 64"
  [resnet8x4]="32 64 128 256" [resnet32x4]="32 64 128 256"
  [wrn_16_2]="16 32 64 128" [wrn_40_2]="16 32 64 128" [wrn_40_1]="16 16 32 64"
  [vgg8]="64 128 256 512 512" [vgg13]="64 128 256 512 512"
  [ResNet50]="64 256 512 1024 2048" [MobileNetV2]="16 12 16 48 160"
  [ShuffleV1]="24 240 480 960" [ShuffleV2]="24 116 232 464"
)
declare -A LAST_MAP=(
  [resnet20]=4096 [resnet32]=4096 [resnet56]=4096 [resnet110]=4096
  [resnet8x4]=16384 [resnet32x4]=16384
  [wrn_16_2]=8192 [wrn_40_2]=8192 [wrn_40_1]=4096
  [vgg8]=8192 [vgg13]=8192
  [ResNet50]=32768 [MobileNetV2]=640
  [ShuffleV1]=15360 [ShuffleV2]=7424
)

# why METHOD cannot run on TEACHER -> STUDENT (empty: it can)
skip_reason() {
  local method=$1 t=$2 s=$3
  case ${DISTILL[$method]:-$method} in
    fsp | kdsvd)
      if [[ -n ${WIDTHS[$t]:-} && -n ${WIDTHS[$s]:-} && ${WIDTHS[$t]} != "${WIDTHS[$s]}" ]]; then
        echo "channel widths differ (teacher ${WIDTHS[$t]// /,} vs student ${WIDTHS[$s]// /,})"
      fi ;;
    cosine)
      local a=${LAST_MAP[$t]:-} b=${LAST_MAP[$s]:-}
      if [[ -n $a && -n $b ]] && (((a > b ? a % b : b % a) != 0)); then
        echo "flattened last stage maps of $a and $b values are not in an integer ratio"
      fi ;;
  esac
}

for m in $METHODS; do
  [[ -n ${WEIGHTS[$m]:-} ]] || die "METHODS: unknown method '$m'; choose from: $ALL_METHODS crd_kd"
done

note "FitNet (hint) runs as RepDistiller's joint FitNet: --hint_layer 2 --init_epochs 0"
missing=()
for ((trial = 0; trial < TRIALS; trial++)); do
  for pair in $PAIRS; do
    [[ $pair == *:* ]] || die "PAIRS entry '$pair': write teacher:student"
    t=${pair%%:*} s=${pair#*:}
    path_t=${TEACHER_PATH//"{t}"/$t}
    if [[ ! -f $path_t ]]; then
      [[ " ${missing[*]} " == *" $path_t "* ]] || missing+=("$path_t")
    fi
    for m in $METHODS; do
      distill=${DISTILL[$m]:-$m}
      why=$(skip_reason "$m" "$t" "$s")
      if [[ -n $why ]]; then
        ((trial > 0)) || note "skip $m on $t -> $s: $why"
        continue
      fi
      w=$(pair_value PAIR_WEIGHTS "$m" "$t" "$s" "${WEIGHTS[$m]}")
      f=$(pair_value PAIR_FLAGS "$m" "$t" "$s" "${FLAGS[$m]:-}")
      read -r -a wargs <<< "$w"
      read -r -a fargs <<< "$f"
      read -r -a xargs_ <<< "$EXTRA_ARGS"
      enqueue "S-${s}_T-${t}_${m}_trial_${trial}" \
        "$(student_folder "$s" "$t" "$DATASET" "$(method_tag "$distill" "${fargs[@]}" "${xargs_[@]}")" "$w" "$trial")" "$s" \
        "$PYTHON" train_student.py --path_t "$path_t" --model_s "$s" --distill "$distill" "${wargs[@]}" \
        "${fargs[@]}" --dataset "$DATASET" --data_folder "$DATA" --trial "$trial" --save_dir "$SAVE"
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
run_queue run_cifar_distill
