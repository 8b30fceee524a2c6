#!/usr/bin/env bash
# Fetch the public CIFAR-100 teachers: RepDistiller's (its own host is gone), mirrored as
# cifar_teachers.tar in mdistiller's GitHub release (tag "checkpoints"). Each teacher lands in
# $SAVE/teachers/models/<model>_vanilla_cifar100_trial_0/ as <model>_last.pth and ckpt_epoch_240.pth,
# the names this codebase's own teachers have, so scripts/run_cifar_distill.sh finds them as they are.
#
#   bash scripts/fetch_pretrained_teachers.sh                                        # download, install
#   TEACHERS_TAR=~/Downloads/cifar_teachers.tar bash scripts/fetch_pretrained_teachers.sh   # offline
#
# Environment:
#   TEACHERS_URL  the archive (default: mdistiller's release asset below); it is kept as
#                 $SAVE/teachers/cifar_teachers.tar and not downloaded again
#   TEACHERS_TAR  a cifar_teachers.tar already on disk: no network
#   SAVE          root of save/teachers (default ./save); PYTHON interpreter (default python)
#
# Every file is checked before anything is installed (scripts/fetch_teachers.py): the archive is never
# extracted by its own paths (absolute paths, '..' and links refuse it), and each checkpoint must load
# with the safe, weights-only loader and fit its model_dict architecture with 100 classes. A folder that
# holds another <model>_last.pth (your own run) is left as it is. train_student.py then compares each
# teacher's measured accuracy with RepDistiller's table and warns beyond one point.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${SAVE:=./save}"
: "${PYTHON:=python}"
: "${TEACHERS_URL:=https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar}"
if [[ -n ${TEACHERS_TAR:-} ]]; then
  exec "$PYTHON" scripts/fetch_teachers.py --tar "$TEACHERS_TAR" --save_dir "$SAVE"
fi
exec "$PYTHON" scripts/fetch_teachers.py --url "$TEACHERS_URL" --save_dir "$SAVE"
