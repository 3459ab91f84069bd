"""Training metrics: metrics.jsonl (and TensorBoard when tensorboardX is installed), throughput
and MFU, written by process 0 only."""

from __future__ import annotations

import json
import os
import time

import jax


class MetricsWriter:
    """Appends `{"step": n, ...}` lines to `run_dir/metrics.jsonl` and the same scalars to
    `run_dir/tensorboard/`; does nothing on processes other than 0."""

    def __init__(self, run_dir: str):
        self.enabled = jax.process_index() == 0
        self.file = open(os.path.join(run_dir, "metrics.jsonl"), "a") if self.enabled else None
        self.tb = None
        if self.enabled:
            try:
                from tensorboardX import SummaryWriter

                self.tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
            except ImportError:
                pass

    def write(self, step: int, metrics: dict[str, float]) -> None:
        """One line of metrics for `step`."""
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        """Flush and close the files."""
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


class Throughput:
    """Tokens per second (and MFU) since the last report."""

    def __init__(self, flops_per_token: float, peak_flops: float | None, devices: int):
        self.flops_per_token, self.peak, self.devices = flops_per_token, peak_flops, devices
        self.t_last, self.tokens = time.perf_counter(), 0.0

    def add(self, tokens: float) -> None:
        """Count the tokens of one step."""
        self.tokens += tokens

    def report(self) -> dict[str, float]:
        """{"tokens_per_s", "mfu" (when the peak is known)} since the last report; resets."""
        now = time.perf_counter()
        tps = self.tokens / max(now - self.t_last, 1e-9)
        out = {"tokens_per_s": tps}
        if self.peak:
            out["mfu"] = tps * self.flops_per_token / (self.peak * self.devices)
        self.t_last, self.tokens = now, 0.0
        return out
