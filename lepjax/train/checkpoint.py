"""Training checkpoints: orbax `CheckpointManager` with the train state and the data position.

A run directory holds `checkpoints/<step>/` with two items, `state` (step, trained parameters,
optimiser state) and `data` (the loader's position, JSON), plus `frozen/` (the frozen parameters,
written once at the start). Orbax writes each checkpoint to a temporary directory and renames it
when complete, so a save interrupted by a kill leaves the previous checkpoints as they were, and
`latest_step()` only ever names complete ones.

A complete checkpoint can still be damaged later (a disk error, a half-copied run directory).
`restore_intact` restores the newest one that reads back, reporting each one that does not in
one line naming its step, or the step asked for (`train.resume_step`). Checkpoints newer than the
one resumed from are moved aside to `checkpoints_set_aside/<step>/` (never deleted), since the
resumed run saves those steps again.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger("lepjax.train")

SET_ASIDE = "checkpoints_set_aside"


class CheckpointError(ValueError):
    """No checkpoint of a run restores, or the one asked for does not exist."""


def _reason(e: BaseException) -> str:
    """The innermost cause of a failed restore, in one short line."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= 240 else text[:237] + "..."


class Checkpointer:
    """Saves and restores (state, data position) in `run_dir/checkpoints`, keeping the last N."""

    def __init__(self, run_dir: str, keep: int = 3, async_save: bool = True):
        self.directory = os.path.join(os.path.abspath(run_dir), "checkpoints")
        # The last `keep` checkpoints, and the one saved with the lowest eval_loss (evaluations
        # save with metrics; others have none).
        keeping = ocp.checkpoint_managers.AnyPreservationPolicy([
            ocp.checkpoint_managers.LatestN(keep),
            ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: -m["eval_loss"], n=1,
                                          keep_checkpoints_without_metrics=False)])
        options = ocp.CheckpointManagerOptions(create=True, preservation_policy=keeping,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict[str, Any], wait: bool = False,
             metrics: dict[str, float] | None = None) -> None:
        """Save step `step`; `metrics` ({"eval_loss": ...}) rank it for keeping the best."""
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
            metrics=metrics, force=True)
        if wait:
            self.manager.wait_until_finished()

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return out["state"], out["data"]

    def restore_intact(self, abstract_state: Any, step: int = 0
                       ) -> tuple[int, Any, dict[str, Any]] | None:
        """(step, state, data position) of checkpoint `step`, or with `step=0` of the newest
        checkpoint that restores (each one that does not is reported and skipped); None when
        there is no checkpoint. Raises `CheckpointError` naming the directory and the steps
        tried when none restores, or when `step` is not one of them. Newer checkpoints than the
        one restored are moved to `checkpoints_set_aside/`."""
        from lepjax.parallel import allgather_json

        steps = sorted(self.manager.all_steps(), reverse=True)
        if step and step not in steps:
            raise CheckpointError(f"train.resume_step={step}: {self.directory} has no checkpoint "
                                  f"at step {step} (it has steps {sorted(steps) or 'none'})")
        if not steps:
            return None
        tried = []
        for s in [step] if step else steps:
            error = None
            try:
                state, data = self.restore(s, abstract_state)
            except Exception as e:  # orbax / tensorstore raise plain Exceptions for bad bytes
                error = _reason(e)
            errors = [e for e in allgather_json(error) if e]  # every process takes one branch
            if errors:
                tried.append(f"step {s} ({errors[0]})")
                log.warning("checkpoint at step %d in %s does not restore: %s", s, self.directory,
                            errors[0])
                continue
            if tried:
                log.warning("resuming from step %d, the newest intact checkpoint in %s "
                            "(skipped: %s)", s, self.directory, ", ".join(tried))
            self._set_aside([t for t in steps if t > s])
            return s, state, data
        raise CheckpointError(f"no checkpoint in {self.directory} restores; tried "
                              + "; ".join(tried))

    def _set_aside(self, steps: list[int]) -> None:
        """Move the checkpoints of `steps` to `run_dir/checkpoints_set_aside/<step>`."""
        from lepjax.parallel import allgather_json

        if not steps:
            return
        aside = os.path.join(os.path.dirname(self.directory), SET_ASIDE)
        if jax.process_index() == 0:
            os.makedirs(aside, exist_ok=True)
            for s in steps:
                dst = os.path.join(aside, str(s))
                n = 0
                while os.path.exists(dst):
                    n += 1
                    dst = os.path.join(aside, f"{s}.{n}")
                os.rename(os.path.join(self.directory, str(s)), dst)
                log.warning("checkpoint at step %d moved to %s (this run saves that step again)",
                            s, dst)
        allgather_json(None)  # every process sees the moves before the manager rereads
        self.manager.reload()

    def state_metadata(self, step: int) -> Any:
        """Shapes and dtypes of the saved train state at `step`."""
        return self.manager.item_metadata(step)["state"]

    def reached_preemption(self, step: int) -> bool:
        """True when the cluster announced a preemption (multi-host sync point)."""
        try:
            return bool(self.manager.reached_preemption(step))
        except Exception:  # no preemption service without jax.distributed
            return False

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def save_frozen(run_dir: str, frozen: dict[str, Any]) -> None:
    """Write the frozen parameters once (they never change during the run)."""
    from lepjax.parallel import broadcast_decision

    path = os.path.join(os.path.abspath(run_dir), "frozen")
    if broadcast_decision(os.path.exists(path)) or not frozen:
        return
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path, frozen)
    ckptr.wait_until_finished()


def restore_frozen(run_dir: str, abstract: dict[str, Any]) -> dict[str, Any] | None:
    """The frozen parameters of a run, or None if it has none saved."""
    path = os.path.join(os.path.abspath(run_dir), "frozen")
    if not os.path.exists(path) or not abstract:
        return None
    return ocp.StandardCheckpointer().restore(path, abstract)


def abstract_of(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a tree of arrays."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
