"""Run logging: console, TensorBoard (torch.utils.tensorboard) and a JSON-lines metrics file.

Only rank 0 writes. ``metrics.jsonl`` (one line per epoch) and ``summary.json`` are what
scripts/summarize.py reads to build the paper-shaped tables.
"""
from __future__ import annotations

import json
import os
import sys

from helper import distributed as dist_util


class RunLogger:
    def __init__(self, save_folder: str, tb_folder: str | None, enabled: bool = True):
        self.enabled = enabled and dist_util.is_main()
        self.save_folder = save_folder
        self.tb_folder = tb_folder
        self._writer = None

    @property
    def writer(self):
        """Created on first use: importing tensorboard costs a second."""
        if self._writer is None and self.enabled and self.tb_folder:
            from torch.utils.tensorboard import SummaryWriter
            os.makedirs(self.tb_folder, exist_ok=True)
            self._writer = SummaryWriter(log_dir=self.tb_folder, flush_secs=30)
        return self._writer

    def print(self, msg: str) -> None:
        if self.enabled:
            print(msg, flush=True)

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)):
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def epoch(self, record: dict) -> None:
        """Append one epoch's record to metrics.jsonl."""
        if not self.enabled:
            return
        os.makedirs(self.save_folder, exist_ok=True)
        with open(os.path.join(self.save_folder, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")

    def write_json(self, name: str, obj: dict) -> None:
        if not self.enabled:
            return
        os.makedirs(self.save_folder, exist_ok=True)
        tmp = os.path.join(self.save_folder, f".{name}.tmp")
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
        os.replace(tmp, os.path.join(self.save_folder, name))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        sys.stdout.flush()
