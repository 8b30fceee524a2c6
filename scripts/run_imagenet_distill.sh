#!/usr/bin/env bash
# ImageNet ResNet34 -> ResNet18 (CRD paper Table 3, SemCKD's ImageNet table) with SemCKD's recipe:
# 90 epochs, SGD lr 0.1, x0.1 at epochs 30 and 60, wd 1e-4, global batch 256, DALI on the GPU, DDP over
# every GPU of every node, launched by torchrun (one process per GPU). Runs go one after another; each
# uses all nodes. Run the same command on every node with its NODE_RANK.
#
#   # one node, 8 GPUs, torchvision's ResNet34 as the teacher (the default)
#   DATA=/data/imagenet bash scripts/run_imagenet_distill.sh
#   # two nodes (run on both; MASTER_ADDR = node 0's address)
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 DATA=/data/imagenet bash scripts/run_imagenet_distill.sh
#   DRY_RUN=1 bash scripts/run_imagenet_distill.sh          # print the commands only
#
# Environment:
#   DATA          ImageNet root with train/ and val/ class folders (default ./data/imagenet)
#   TEACHER       the ResNet34 teacher (--path_t). Default torchvision:resnet34: torchvision's published
#                 IMAGENET1K_V1 weights (73.31 top-1), read from torchvision's cache ($TORCH_HOME/hub/checkpoints/
#                 resnet34-b627a593.pth), downloaded there once if missing; offline, put the file there first.
#                 With "teacher" in METHODS the default is the teacher that run trains with the same recipe,
#                 $SAVE/teachers/models/ResNet34_imagenet_vanilla_imagenet_trial_0/ResNet34_imagenet_last.pth.
#                 Any checkpoint works too: ours, RepDistiller-style {'model': sd}, a bare state_dict.
#   METHODS       space-separated, run in this order (default "vanilla kd attention similarity correlation crd
#                 semckd cka_group dkd dist reviewkd kd_ls rcka"): "teacher" trains ResNet34_imagenet,
#                 "vanilla" the ResNet18 baseline, any other word is a row of the weights below
#   TRIALS        trials per method (default 1), --trial 0 .. TRIALS-1
#   NNODES        nodes (default 1); NODE_RANK this node (default 0); MASTER_ADDR (default 127.0.0.1),
#                 MASTER_PORT (default 29500)
#   GPUS_PER_NODE processes per node (default: GPUs visible on this node, else 8)
#   BATCH         GLOBAL batch size (default 256: 32 per GPU on 8 GPUs)
#   DALI          gpu (default), cpu, or none (torchvision loader)
#   WORKERS       loader workers per process (default 8)
#   SAVE, DRY_RUN, SKIP_DONE, RESUME, EXTRA_ARGS, PYTHON: see scripts/lib_runs.sh (GPUS is not used:
#   torchrun sees every GPU of the node). With NNODES > 1, SKIP_DONE and RESUME default to 0, since
#   every node must run the same commands; set both to 1 when SAVE is on a shared file system.
#
# Weights: SemCKD's ImageNet protocol (-c 1 -d 1 for every method), with SemCKD's ImageNet beta 50 for
# semckd; the other betas are the CIFAR ones (no published ImageNet value); simkd uses SimKD's -c 0 -d 0 -b 1.
# Only SemCKD's command is published for those; treat the others as our choice. The 2022-2024 rows use
# their own ImageNet loss settings (FLAGS): dkd beta 0.5, T 1, 1-epoch warm-up; dist tau 1; mlkd CE 0.5
# KD 0.5, T 1; ctkd CE 1 KD 1 (5 curriculum loops); reviewkd weight 1, 1-epoch warm-up, pre-activation
# student features; ofd 1e-4; kd_ls (KD+LS) CE 1 KD 9 T 2; kd_dot (KD+DOT) CE 0.5 KD 0.5 T 1, delta 0.09.
# Their published numbers used their own schedules (mdistiller: 100 epochs, batch 512, lr 0.2 for DKD;
# CTKD 120 epochs): this script runs every row on the one recipe below, so compare rows with each other
# and say so beside a published number.
set -euo pipefail
cd "$(dirname "$0")/.."
if ((${NNODES:-1} > 1)); then
  # every node must queue the same commands: only look at finished runs when SAVE is shared (set both to 1)
  : "${SKIP_DONE:=0}" "${RESUME:=0}"
fi
source scripts/lib_runs.sh

: "${DATA:=./data/imagenet}"
: "${METHODS:=vanilla kd attention similarity correlation crd semckd cka_group dkd dist reviewkd kd_ls rcka}"
: "${TRIALS:=1}"
: "${NNODES:=1}"
: "${NODE_RANK:=0}"
: "${MASTER_ADDR:=127.0.0.1}"
: "${MASTER_PORT:=29500}"
: "${BATCH:=256}"
: "${DALI:=gpu}"
: "${WORKERS:=8}"
if [[ -z ${GPUS_PER_NODE:-} ]]; then
  GPUS_PER_NODE=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  [[ $GPUS_PER_NODE =~ ^[1-9][0-9]*$ ]] || GPUS_PER_NODE=8
fi
TEACHER_DEFAULT=torchvision:resnet34
if [[ " $METHODS " == *" teacher "* ]]; then
  TEACHER_DEFAULT="$SAVE/teachers/models/ResNet34_imagenet_vanilla_imagenet_trial_0/ResNet34_imagenet_last.pth"
fi
: "${TEACHER:=$TEACHER_DEFAULT}"

declare -A WEIGHTS=(
  [kd]="-c 1 -d 1 -b 0"
  [hint]="-c 1 -d 1 -b 100"
  [attention]="-c 1 -d 1 -b 1000"
  [similarity]="-c 1 -d 1 -b 3000"
  [correlation]="-c 1 -d 1 -b 0.02"
  [vid]="-c 1 -d 1 -b 1"
  [rkd]="-c 1 -d 1 -b 1"
  [pkt]="-c 1 -d 1 -b 30000"
  [nst]="-c 1 -d 1 -b 50"
  [crd]="-c 1 -d 1 -b 0.8"
  [semckd]="-c 1 -d 1 -b 50"
  [srrl]="-c 1 -d 1 -b 1"
  [simkd]="-c 0 -d 0 -b 1"
  [cka_group]="-c 1 -d 1 -b 1"
  [dkd]="-c 1 -d 0 -b 1"
  [dist]="-c 1 -d 0 -b 2"
  [mlkd]="-c 0.5 -d 0 -b 0.5"
  [ctkd]="-c 1 -d 1 -b 0"
  [reviewkd]="-c 1 -d 0 -b 1"
  [ofd]="-c 1 -d 0 -b 0.0001"
  [rcka]="-c 1 -d 0 -b 15"
  [kd_ls]="-c 1 -d 9 -b 0"
  [kd_dot]="-c 0.5 -d 0.5 -b 0"
)
# the methods' own ImageNet settings (mdistiller's configs, the LS, DIST, CTKD and ReviewKD repositories)
declare -A FLAGS=(
  [dkd]="--dkd_beta 0.5 --kd_T 1 --beta_warmup 1"
  [dist]="--kd_T 1"
  [mlkd]="--kd_T 1"
  [ctkd]="--ctkd_loops 5"
  [reviewkd]="--beta_warmup 1 --reviewkd_preact"
  [kd_ls]="--logit_stand --kd_T 2"
  [kd_dot]="--kd_T 1 --optimizer dot --dot_delta 0.09"
)
declare -A DISTILL=(
  [kd_ls]=kd [kd_dot]=kd
)

[[ $TRIALS =~ ^[0-9]+$ ]] || die "TRIALS=$TRIALS: give a number of trials"
for x in NNODES NODE_RANK GPUS_PER_NODE BATCH; do
  [[ ${!x} =~ ^[0-9]+$ ]] || die "$x=${!x}: give a whole number"
done
((NODE_RANK < NNODES)) || die "NODE_RANK=$NODE_RANK must be below NNODES=$NNODES"
world=$((NNODES * GPUS_PER_NODE))
((BATCH % world == 0)) || die "BATCH=$BATCH is not divisible by the $world processes (NNODES x GPUS_PER_NODE)"

launch=(torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS_PER_NODE"
        --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
recipe=(--dataset imagenet --data_folder "$DATA" --epochs 90 --learning_rate 0.1 --lr_decay_epochs 30,60
        --lr_decay_rate 0.1 --weight_decay 1e-4 --batch_size "$BATCH" --num_workers "$WORKERS")
case $DALI in
  gpu | cpu) recipe+=(--dali "$DALI") ;;
  none | "") ;;
  *) die "DALI=$DALI: use gpu, cpu or none" ;;
esac

note "ImageNet ResNet34_imagenet -> ResNet18_imagenet on $NNODES node(s) x $GPUS_PER_NODE GPUs, global batch $BATCH"
for ((trial = 0; trial < TRIALS; trial++)); do
  for m in $METHODS; do
    case $m in
      teacher)
        enqueue "ResNet34_imagenet_vanilla_imagenet_trial_$trial" \
          "$(teacher_folder ResNet34_imagenet imagenet "$trial")" ResNet34_imagenet \
          "${launch[@]}" train_teacher.py --model ResNet34_imagenet "${recipe[@]}" --trial "$trial" --save_dir "$SAVE" ;;
      vanilla)
        enqueue "ResNet18_imagenet_vanilla_imagenet_trial_$trial" \
          "$(teacher_folder ResNet18_imagenet imagenet "$trial")" ResNet18_imagenet \
          "${launch[@]}" train_teacher.py --model ResNet18_imagenet "${recipe[@]}" --trial "$trial" --save_dir "$SAVE" ;;
      *)
        [[ -n ${WEIGHTS[$m]:-} ]] || die "METHODS: unknown method '$m'; choose teacher, vanilla or one of: ${!WEIGHTS[*]}"
        w=${WEIGHTS[$m]} d=${DISTILL[$m]:-$m}
        read -r -a wargs <<< "$w"
        read -r -a fargs <<< "${FLAGS[$m]:-}"
        read -r -a xargs_ <<< "$EXTRA_ARGS"
        enqueue "S-ResNet18_imagenet_T-ResNet34_imagenet_${m}_trial_$trial" \
          "$(student_folder ResNet18_imagenet ResNet34_imagenet imagenet "$(method_tag "$d" "${fargs[@]}" "${xargs_[@]}")" \
             "$w" "$trial")" ResNet18_imagenet \
          "${launch[@]}" train_student.py --path_t "$TEACHER" --model_t ResNet34_imagenet \
          --model_s ResNet18_imagenet --distill "$d" "${wargs[@]}" "${fargs[@]}" "${recipe[@]}" --trial "$trial" \
          --save_dir "$SAVE" ;;
    esac
  done
done
needs_teacher=0
for m in $METHODS; do [[ $m == teacher || $m == vanilla ]] || needs_teacher=1; done
if [[ $needs_teacher == 1 && $TEACHER != torchvision:* && ! -f $TEACHER && " $METHODS " != *" teacher "* ]]; then
  if [[ $DRY_RUN == 1 ]]; then
    note "teacher checkpoint not found yet: $TEACHER"
  else
    die "teacher checkpoint $TEACHER not found: set TEACHER, or add 'teacher' to METHODS to train it first"
  fi
fi
# one run at a time: each run is a torchrun job over every GPU of every node
GPUS=all PER_GPU=1 run_queue run_imagenet_distill
