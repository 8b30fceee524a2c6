"""Small shared utilities: meters, accuracy, seeding, RNG state capture."""
from __future__ import annotations

import os
import random
import zlib

import numpy as np
import torch


class AverageMeter:
    """Running average of a scalar; accepts tensors without forcing a host sync per update."""

    def __init__(self):
        self.sum = 0.0
        self.count = 0

    def update(self, value, n: int = 1):
        self.sum = self.sum + (value.detach() * n if torch.is_tensor(value) else value * n)
        self.count += n

    @property
    def avg(self) -> float:
        s = self.sum.item() if torch.is_tensor(self.sum) else self.sum
        return s / max(self.count, 1)


def accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list:
    """Top-k accuracies in percent, as 0-d tensors (no host sync)."""
    maxk = min(max(topk), output.size(1))
    _, pred = output.topk(maxk, 1, True, True)
    correct = pred.eq(target.view(-1, 1))
    return [correct[:, :min(k, maxk)].any(dim=1).float().mean() * 100.0 for k in topk]


def seed_from_trial(trial: str) -> int:
    """Different trials get different seeds: the trial number itself, or a stable hash of its name."""
    try:
        return int(trial)
    except ValueError:
        return zlib.crc32(trial.encode()) % (2 ** 31)


def set_seed(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True


def get_rng_state() -> dict:
    """Every RNG the run draws from, in a form torch.load(weights_only=True) accepts."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def parse_int_list(text: str) -> list:
    return [int(x) for x in str(text).split(",") if x.strip()]


class RNGStream:
    """A private stream of torch's global generators (the CPU one and, on CUDA, the device's), swapped in
    while its owner works (``with stream:``).

    Several networks trained in one process (a group of students) each draw from their own stream for
    their initialisation and every training step (dropout, mixup-free randomness of methods, init probes),
    so a student's run does not depend on what the others draw: it is the experiment a separate process
    with the same seed would run. Re-entering an active stream is a no-op.
    """

    def __init__(self, seed: int, device="cpu"):
        self.device = torch.device(device)
        self._depth = 0
        outer = self._get()
        torch.manual_seed(int(seed))
        self._state = self._get()
        self._set(outer)

    def _get(self):
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    def _set(self, state) -> None:
        cpu, cuda = state
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, self.device)

    def __enter__(self):
        if self._depth == 0:
            self._outer = self._get()
            self._set(self._state)
        self._depth += 1
        return self

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            self._state = self._get()
            self._set(self._outer)
        return False
