#!/usr/bin/env bash
# The README's first command: install what the main job needs, then run it.
#   1. Python dependencies (pip install ., i.e. torch, torchvision, numpy, scipy, tensorboard)
#   2. Fashion-MNIST from Debian/Ubuntu's dataset-fashion-mnist package when apt is usable
#      (root or sudo); elsewhere pass --data_folder to a folder holding the four idx files,
#      or let torchvision download them (python train_teacher.py --download ...)
#   3. scripts/main_job.py: teacher, baseline, KD and cka_group students, then their accuracy table.
# Extra arguments go to scripts/main_job.py (e.g. --device cuda --train_subset 0).
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet .

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
    if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
      ($SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist) \
        || echo "note: could not install dataset-fashion-mnist with apt; the loader will look in ./data"
    fi
  fi
fi

exec python scripts/main_job.py "$@"
