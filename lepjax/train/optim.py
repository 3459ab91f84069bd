"""The optimiser: AdamW (optax) with warmup + cosine / linear / constant schedules and clipping.

Weight decay applies to every trained parameter except norm scales. The optimiser only sees the
trained parameters (see `lepjax.train.params`), so frozen ones get no state.
"""

from __future__ import annotations

import difflib
from typing import Any

import optax
from ml_collections import ConfigDict

from lepjax.config import ConfigError

SCHEDULES = ("cosine", "linear", "constant")


def optim_section() -> ConfigDict:
    """The `optim` section.

    Keys:
      lr: peak learning rate.
      schedule: cosine | linear | constant (after warmup).
      warmup_steps: linear warmup from 0 (an int), or warmup_fraction of the steps if 0.
      warmup_fraction: warmup as a fraction of train.steps when warmup_steps is 0.
      end_lr_fraction: final lr as a fraction of lr (cosine / linear).
      b1, b2, eps: Adam moments.
      weight_decay: decoupled weight decay (norm scales excluded).
      grad_clip: global-norm clipping threshold (0 = off).
    """
    return ConfigDict(dict(lr=1e-4, schedule="cosine", warmup_steps=0, warmup_fraction=0.05,
                           end_lr_fraction=0.1, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1,
                           grad_clip=1.0))


def check_section(cfg: Any) -> None:
    """Model-free check of an `optim` section: the schedule name and the numeric ranges."""
    if cfg.schedule not in SCHEDULES:
        close = difflib.get_close_matches(str(cfg.schedule), SCHEDULES, n=3, cutoff=0.3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"optim.schedule={cfg.schedule!r} is not a schedule{hint} (valid: "
                          f"{', '.join(SCHEDULES)})")
    if cfg.warmup_steps < 0 or not 0 <= cfg.warmup_fraction <= 1:
        raise ConfigError(f"optim.warmup_steps={cfg.warmup_steps} / optim.warmup_fraction="
                          f"{cfg.warmup_fraction}: expected steps >= 0 and a fraction in [0, 1]")


def make_schedule(cfg: Any, total_steps: int) -> optax.Schedule:
    """Learning rate by step."""
    check_section(cfg)
    warmup = cfg.warmup_steps or int(round(cfg.warmup_fraction * total_steps))
    warmup = min(warmup, total_steps)
    end = cfg.lr * cfg.end_lr_fraction
    decay_steps = max(total_steps - warmup, 1)
    if cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.end_lr_fraction)
    elif cfg.schedule == "linear":
        after = optax.linear_schedule(cfg.lr, end, decay_steps)
    else:
        after = optax.constant_schedule(cfg.lr)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), after], [warmup])


def decay_mask(trainable: dict[str, Any]) -> dict[str, bool]:
    """True for parameters that get weight decay (everything but norm scales)."""
    return {path: "norm" not in path for path in trainable}


def make_optimizer(cfg: Any, total_steps: int, trainable: dict[str, Any]):
    """(optax transformation, schedule) for the trained parameters."""
    schedule = make_schedule(cfg, total_steps)
    parts = []
    if cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=decay_mask(trainable)))
    return optax.chain(*parts), schedule
