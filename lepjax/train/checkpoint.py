"""Training checkpoints: orbax `CheckpointManager` with the train state and the data position.

A run directory holds `checkpoints/<step>/` with two items, `state` (step, trained parameters,
optimiser state) and `data` (the loader's position, JSON), plus `frozen/` (the frozen parameters,
written once at the start). Orbax writes each checkpoint to a temporary directory and renames it
when complete, so a save interrupted by a kill leaves the previous checkpoints as they were, and
`latest_step()` only ever names complete ones.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves and restores (state, data position) in `run_dir/checkpoints`, keeping the last N."""

    def __init__(self, run_dir: str, keep: int = 3, async_save: bool = True):
        self.directory = os.path.join(os.path.abspath(run_dir), "checkpoints")
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict[str, Any], wait: bool = False) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)
        if wait:
            self.manager.wait_until_finished()

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return out["state"], out["data"]

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
