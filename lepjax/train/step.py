"""Loss and the jitted train / eval steps.

The loss is cross-entropy in float32 over `loss_mask`, summed over tokens and divided by the
number of trained tokens of the whole (global) batch, plus optional z-loss
(`z_loss * logsumexp²`) and an optional multi-token-prediction head (an extra [embed, vocab]
head predicting token t+2 from the same hidden state; its loss is added). The LM head and the
loss run in chunks of `loss_chunk` positions under `jax.checkpoint`, so float32 logits of the
whole batch never exist at once (`lepjax.models.loss.token_scores`, shared with scoring); head
rows at or beyond `vocab_limit` (embedding padding) get -inf logits.

Gradient accumulation splits the global batch into `micro_batches` and sums gradients of the
summed loss over a `jax.lax.scan`, then divides by the total token count: the result equals the
full-batch gradient up to summation order.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lepjax import parallel
from lepjax.models import io as model_io
from lepjax.models.loss import TokenScores, token_scores
from lepjax.train import lora as lora_lib
from lepjax.train import params as P


def masked_sums(scores: TokenScores, mask: jax.Array, z_loss: float = 0.0):
    """(sum of cross-entropy, weighted sum of z-loss terms, correct predictions) over `mask`."""
    ce = (-scores.logprob * mask).sum()
    z = (scores.logsumexp ** 2 * mask).sum() * z_loss
    correct = (scores.greedy * mask).sum()
    return ce, z, correct


def second_targets(batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Targets and mask for predicting token t+2 (multi-token prediction)."""
    targets, mask = batch["targets"], batch["loss_mask"]
    t2 = jnp.concatenate([targets[:, 1:], jnp.zeros_like(targets[:, :1])], axis=1)
    m2 = jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], axis=1) * mask
    return t2, m2


class StepBuilder:
    """Builds the pure loss / train / eval functions for one model, selection and optimiser.

    `vocab_limit`: LM-head rows at or beyond it are embedding padding (excluded from the loss).
    """

    def __init__(self, graphdef, treedef, paths: list[str], selection: P.Selection,
                 tx: optax.GradientTransformation | None, schedule, train_cfg: Any,
                 mesh=None, rules=parallel.DEFAULT_RULES, lora=None, num_layers: int = 0,
                 vocab_limit: int | None = None):
        self.lora, self.num_layers, self.vocab_limit = lora, num_layers, vocab_limit
        self.graphdef, self.treedef, self.paths = graphdef, treedef, paths
        self.selection, self.tx, self.schedule, self.cfg = selection, tx, schedule, train_cfg
        self.mesh, self.rules = mesh, rules

    def model(self, trainable, frozen):
        full = P.merge(trainable, frozen, self.selection)
        if self.lora is not None:
            full = lora_lib.apply(full, self.lora, self.num_layers)
        return nnx.merge(self.graphdef, model_io.unflatten_tree(self.treedef, full, self.paths))

    def scores(self, head, hidden, targets) -> TokenScores:
        return token_scores(hidden, head, targets, chunk=self.cfg.loss_chunk,
                            vocab_limit=self.vocab_limit)

    def summed_loss(self, trainable, frozen, batch):
        """(sum CE [+ MTP CE] + z terms, metrics) for one (micro-)batch; not normalised.

        With a `score_mask` in the batch (evaluation), metrics also hold `score_nats`, the summed
        negative log-likelihood over it, and `scored`, its token count.
        """
        with parallel.activation_sharding(self.mesh, self.rules):
            model = self.model(trainable, frozen)
            hidden = model.hidden_states(batch["tokens"], batch["segment_ids"], batch["positions"])
            mask = batch["loss_mask"].astype(jnp.float32)
            scores = self.scores(model.lm_head_weight(), hidden, batch["targets"])
            ce, z, correct = masked_sums(scores, mask, self.cfg.z_loss)
            total = ce + z
            metrics = {"ce_sum": ce, "tokens": mask.sum(), "correct": correct}
            if "score_mask" in batch:
                score_mask = batch["score_mask"].astype(jnp.float32)
                metrics["score_nats"] = (-scores.logprob * score_mask).sum()
                metrics["scored"] = score_mask.sum()
            if "mtp_head" in trainable or "mtp_head" in frozen:
                head = trainable.get("mtp_head", frozen.get("mtp_head"))
                t2, m2 = second_targets({"targets": batch["targets"], "loss_mask": mask})
                ce2, z2, _ = masked_sums(self.scores(head, hidden, t2), m2, self.cfg.z_loss)
                total = total + ce2 + z2
                metrics["mtp_ce_sum"] = ce2
        return total, metrics

    def grads(self, trainable, frozen, batch):
        """Gradients of the mean loss over the batch, accumulated over micro-batches."""
        m = self.cfg.micro_batches
        grad_fn = jax.grad(self.summed_loss, has_aux=True)
        if m <= 1:
            g, metrics = grad_fn(trainable, frozen, batch)
        else:
            def micro(x):
                x = x.reshape(m, x.shape[0] // m, *x.shape[1:])
                if self.mesh is not None:
                    spec = parallel.logical_to_spec((None, "batch", "length"), self.rules,
                                                    self.mesh, x.shape)
                    x = jax.lax.with_sharding_constraint(
                        x, jax.sharding.NamedSharding(self.mesh, spec))
                return x

            def body(carry, mb):
                g, met = grad_fn(trainable, frozen, mb)
                return jax.tree.map(jnp.add, carry, (g, met)), None

            zeros_g = jax.tree.map(jnp.zeros_like, trainable)
            _, met_shape = jax.eval_shape(grad_fn, trainable, frozen,
                                          jax.tree.map(lambda x: x[: x.shape[0] // m], batch))
            zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), met_shape)
            (g, metrics), _ = jax.lax.scan(body, (zeros_g, zeros_m),
                                           jax.tree.map(micro, batch))
        n = jnp.maximum(metrics["tokens"], 1.0)
        g = jax.tree.map(lambda x: (x / n).astype(x.dtype), g)
        return g, metrics

    def train_step(self, state, frozen, batch):
        """One optimiser step. A non-finite loss or gradient leaves the state unchanged."""
        g, metrics = self.grads(state["trainable"], frozen, batch)
        n = jnp.maximum(metrics["tokens"], 1.0)
        loss = metrics["ce_sum"] / n
        grad_norm = optax.tree.norm(g)
        updates, opt_state = self.tx.update(g, state["opt_state"], state["trainable"])
        new = {"step": state["step"] + 1,
               "trainable": optax.apply_updates(state["trainable"], updates),
               "opt_state": opt_state}
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
        out = {"loss": loss, "grad_norm": grad_norm, "lr": self.schedule(state["step"]),
               "tokens": metrics["tokens"], "accuracy": metrics["correct"] / n,
               "finite": finite}
        if "mtp_ce_sum" in metrics:
            out["mtp_loss"] = metrics["mtp_ce_sum"] / n
        return new, out

    def eval_step(self, trainable, frozen, batch):
        """Summed CE, trained-token count and top-1 hits (`correct`) over `loss_mask`, and (with
        a `score_mask`, the tokens bits per byte scores) `score_nats` / `scored` over it; no
        gradients."""
        _, metrics = self.summed_loss(trainable, frozen, batch)
        return {k: v for k, v in metrics.items() if k in ("ce_sum", "tokens", "correct",
                                                          "score_nats", "scored")}
