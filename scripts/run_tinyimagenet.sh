#!/usr/bin/env bash
# Tiny-ImageNet (200 classes, 64x64) with mdistiller's recipe (its configs/tiny_imagenet: SGD lr 0.2,
# momentum 0.9, wd 5e-4, global batch 256, 200 epochs, x0.1 at 60/120/160; KD at -c 0.1 -d 0.9, T 4;
# augmentation = rotation up to 20 degrees + flip, its normalisation, built into --dataset tinyimagenet).
# The CIFAR scripts do the work with DATASET=tinyimagenet and this recipe: run_cifar_vanilla.sh trains
# the teachers (and the vanilla students), run_cifar_distill.sh distils every method with its published
# weights.
#
#   DATA=/data bash scripts/run_tinyimagenet.sh                # teachers, vanilla students, distillation
#   ROLE=students METHODS="kd cka_group" bash scripts/run_tinyimagenet.sh
#   DRY_RUN=1 bash scripts/run_tinyimagenet.sh                 # print the commands only
#
# Environment:
#   DATA      folder holding tiny-imagenet-200/ (train/, val/ with val_annotations.txt), as unzipped from
#             http://cs231n.stanford.edu/tiny-imagenet-200.zip (default ./data)
#   PAIRS     teacher:student pairs (default "ResNet18:vgg8 ResNet34:ResNet18"). mdistiller's teacher is
#             ResNet18; its MobileNetV2/ShuffleV2 students are Tiny-ImageNet variants, while model_dict's
#             MobileNetV2/ShuffleV2 are the CIFAR ones, which take 32x32 only (a pair with them is refused
#             with one line at 64x64; EXTRA_ARGS="--image_size 32" serves every model 32x32 images)
#   ROLE      all (default): teachers, then vanilla students, then distillation; teachers, vanilla
#             (students without a teacher) or students (distillation)
#   TRIALS, METHODS, GPUS, PER_GPU, TEACHER_TRIAL, SAVE, DRY_RUN, SKIP_DONE, RESUME, EXTRA_ARGS, PYTHON:
#             as in scripts/run_cifar_distill.sh (EXTRA_ARGS go after the recipe and override it)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATA:=./data}"
: "${PAIRS:=ResNet18:vgg8 ResNet34:ResNet18}"
: "${ROLE:=all}"
RECIPE="--batch_size 256 --epochs 200 --learning_rate 0.2 --lr_decay_epochs 60,120,160 --lr_decay_rate 0.1"
RECIPE+=" --weight_decay 5e-4 --momentum 0.9"
export DATASET=tinyimagenet DATA PAIRS EXTRA_ARGS="$RECIPE ${EXTRA_ARGS:-}"
case $ROLE in
  teachers) bash scripts/run_cifar_vanilla.sh ;;
  vanilla) ROLE=students bash scripts/run_cifar_vanilla.sh ;;
  students) bash scripts/run_cifar_distill.sh ;;
  all)  # teachers first, then the vanilla students, then distillation
    ROLE=all bash scripts/run_cifar_vanilla.sh
    bash scripts/run_cifar_distill.sh ;;
  *) echo "error: ROLE=$ROLE: use all, teachers, vanilla or students" >&2; exit 2 ;;
esac
