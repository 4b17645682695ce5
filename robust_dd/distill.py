"""The one distillation loop: init -> (sample a real batch -> jitted step)* -> save.

A method plugs in as a `loss_fn`, where `params = {'images', 'labels', ...}` is the synthetic set
(plus any parameters the method learns with it, e.g. KIP's Platt log-scale) and
`batch` a real batch drawn on device inside the step:

- kernel methods (KIP): `loss_fn(params, batch, key) -> scalar`; one step = one update of the set
  (the key draws, e.g., the step's random-feature kernel).
- network methods (DC, DSA, LCMat): `loss_fn(params, batch, net_params, key) -> scalar` plus a
  `Network(init, train)`; one step = one outer iteration of DC: a fresh network, then
  `updates_per_network` updates of the set, with `network.train` (the inner loop) between them.

`run_distillation` drives the jitted step, which derives its key as `fold_in(key, step)`, so a run
resumed
from a checkpoint continues exactly as an uninterrupted run would. The methods' losses are built
in `robust_dd.methods`; `robust_dd.experiment` composes data, method, loop and evaluation.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np
import optax

from robust_dd import data as data_lib
from robust_dd import interrupt
from robust_dd import io
from robust_dd import names
from robust_dd import parallel
from robust_dd import progress
from robust_dd import risk
from robust_dd import sensitivity

Params = dict[str, jax.Array]
Batch = dict[str, jax.Array]
LossFn = Callable[..., jax.Array]  # (params, batch, key) or (params, batch, net_params, key)


class DistillState(NamedTuple):
  """The synthetic set, its optimiser state, the number of steps taken and the real-batch
  sampler's state (None: uniform batches; importance sampling: (n,) per-sample probabilities)."""
  params: Params
  opt_state: optax.OptState
  step: jax.Array
  sampler: Any = None


OPTIMIZERS = names.OPTIMIZERS


def make_optimizer(*, learning_rate: float = 0.01, learn_labels: bool = True,
                   name: str = "adam", momentum: float = 0.5,
                   learning_rates: Optional[Mapping[str, float]] = None
                   ) -> optax.GradientTransformation:
  """Adam (KIP) or SGD with momentum (DC) on every parameter of the set (images and any extras),
  and on the labels too when `learn_labels`. `learning_rates` gives named parameters their own
  rate (the same optimiser kind; MTT's learnable step size: {'log_syn_lr': 0.01})."""
  if name not in OPTIMIZERS:
    raise ValueError(f"Unknown optimizer {name!r}; choose one of {OPTIMIZERS}.")

  def make(lr):
    return optax.adam(lr) if name == "adam" else optax.sgd(lr, momentum=momentum or None)

  own = dict(learning_rates or {})
  if learn_labels and not own:
    return make(learning_rate)
  transforms = {"learn": make(learning_rate), "fixed": optax.set_to_zero(),
                **{f"own:{k}": make(lr) for k, lr in own.items()}}

  def label(params):
    return {k: "fixed" if k == "labels" and not learn_labels
            else f"own:{k}" if k in own else "learn" for k in params}

  return optax.multi_transform(transforms, label)


def init_state(images, labels, optimizer: optax.GradientTransformation, *,
               num_real: Optional[int] = None,
               extra_params: Optional[dict[str, Any]] = None) -> DistillState:
  """The initial state; `num_real` (the number of real training samples) gives an importance
  sampler's state, uniform probabilities until the first scoring. `extra_params` are learned with
  the set (`methods.Method.extra_params`)."""
  params = {"images": jnp.asarray(images, jnp.float32), "labels": jnp.asarray(labels, jnp.float32),
            **{k: jnp.asarray(v, jnp.float32) for k, v in (extra_params or {}).items()}}
  sampler = None if num_real is None else jnp.ones(num_real, jnp.float32)
  return DistillState(params, optimizer.init(params), jnp.zeros((), jnp.int32), sampler)


def _log_probs(probs: Optional[jax.Array], table: jax.Array) -> Optional[jax.Array]:
  return None if probs is None else jnp.log(jnp.maximum(probs[table], 1e-30))


def class_balanced_batch(key: jax.Array, real: dict[str, jax.Array], *, per_class: int,
                         probs: Optional[jax.Array] = None, unbiased: bool = False) -> Batch:
  """Draws a class-balanced real batch from `real = {images, labels, table, counts}` on device.

  With `probs` (n,) each class's samples are drawn ∝ probs without replacement (importance
  sampling); `unbiased` adds `weights` (b,), 1 / (n_c · p_i) with p_i the probability within the
  class, for a self-normalised weighted loss.
  """
  idx = data_lib.sample_class_balanced(key, real["table"], real["counts"], per_class=per_class,
                                       logits=_log_probs(probs, real["table"]))
  batch = {"images": real["images"][idx], "labels": real["labels"][idx]}
  if unbiased and probs is not None:
    batch["weights"] = sensitivity.group_unbiasing_weights(
        probs, idx.reshape(real["table"].shape[0], per_class), real["table"],
        real["counts"]).reshape(-1)
  return batch


class Network(NamedTuple):
  """The network a matching method differentiates through.

  init: `key -> net_params`, a fresh network (one per outer iteration).
  train: `(net_params, params, real, key) -> net_params`, the inner loop: DC's trains on the
    synthetic set `params`; the paper's robust placement on batches of the real data `real`.
  train_first: also train the fresh network before the first update of the outer iteration (DC
    trains only between updates, so at outer_loop 1 its network is never trained).
  """
  init: Callable[[jax.Array], Any]
  train: Callable[[Any, Params, dict, jax.Array], Any]
  train_first: bool = False


CLUSTER_MASSES = names.CLUSTER_MASSES


def cluster_batch(key: jax.Array, real: dict[str, jax.Array], *, per_cluster: int,
                  probs: Optional[jax.Array] = None, unbiased: bool = False,
                  masses: str = "uniform") -> Batch:
  """Draws up to `per_cluster` real samples of every cluster, on device.

  `real` holds `cluster_table`, `cluster_counts` and `cluster_class` (see `cluster_real`).
  Returns images (K, S, ...), labels (K, S, C), mask (K, S), cluster_class (K,) and weights (K,),
  the clusters' masses in the robust objective: with `masses='uniform'` every non-empty cluster
  counts equally (the paper's); with 'size' in proportion to its number of real samples, so the
  objective's mean term is the data's average. With `probs` (n,), each cluster's members are drawn
  ∝ probs (importance sampling); `unbiased` multiplies the mask by 1 / (n_k · p_i), p_i the
  probability within the cluster, so the masked cluster means become self-normalised estimates.
  """
  if masses not in CLUSTER_MASSES:
    raise ValueError(f"Unknown cluster masses {masses!r}; choose one of {CLUSTER_MASSES}.")
  table, counts = real["cluster_table"], real["cluster_counts"]
  idx, mask = risk.sample_cluster_batch(key, table, counts, per_cluster=per_cluster,
                                        logits=_log_probs(probs, table))
  if unbiased and probs is not None:
    mask = mask * sensitivity.group_unbiasing_weights(probs, idx, table, counts)
  weights = counts if masses == "size" else counts > 0
  return {"images": real["images"][idx], "labels": real["labels"][idx], "mask": mask,
          "cluster_class": real["cluster_class"], "weights": weights.astype(jnp.float32)}


def make_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
              per_class: Optional[int] = None,
              sample_batch: Optional[Callable[..., Batch]] = None,
              network: Optional[Network] = None, updates_per_network: int = 1,
              rescore: Optional[Callable[[Params, dict, jax.Array], jax.Array]] = None,
              rescore_every: int = 50, mesh: Optional[Mesh] = None):
  """Returns the jitted `step(state, real, key) -> (state, metrics)`; `state` is donated.

  `key` is the run's loop key: the step uses `fold_in(key, state.step)`, so every step gets its
  own stream and the host passes the same key each time.

  Each update draws its real batch with `sample_batch(key, real, probs=state.sampler)` (default:
  `per_class` samples of each class, `class_balanced_batch`; robust methods pass
  `cluster_batch`). Without `network`: one update of the set on `loss_fn(params, batch, key)`. With
  `network`: a fresh network, then `updates_per_network` updates on
  `loss_fn(params, batch, net_params, key)`, each on a new real batch, with `network.train`
  between consecutive updates (and before the first with `network.train_first`).
  `metrics['loss']` is the mean loss of the step's updates.

  Importance sampling: with `rescore(params, real, key) -> probs (n,)`, the sampler state
  `state.sampler` is recomputed from the current synthetic set at every step that is a multiple of
  `rescore_every` (step 0 included; `lax.cond`, so other steps skip it) and carried in the state,
  so a resumed run samples exactly as an uninterrupted one.

  On a `mesh` of several devices the returned state is replicated over it (the losses split
  their own work; `parallel`), so every call sees the same input shardings.
  """
  if updates_per_network < 1:
    raise ValueError(f"updates_per_network must be >= 1, got {updates_per_network}.")
  if sample_batch is None:
    if per_class is None:
      raise ValueError("make_step needs per_class or sample_batch.")
    sample_batch = functools.partial(class_balanced_batch, per_class=per_class)

  if rescore is not None and rescore_every < 1:
    raise ValueError(f"rescore_every must be >= 1, got {rescore_every}.")

  def update(params, opt_state, real, key, probs, *net):
    k_batch, k_loss = jax.random.split(key)
    batch = sample_batch(k_batch, real, probs=probs)
    extra = (net[0], k_loss) if net else (k_loss,)
    loss, grads = jax.value_and_grad(loss_fn)(params, batch, *extra)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def step(state: DistillState, real: dict[str, jax.Array], key: jax.Array):
    key = jax.random.fold_in(key, state.step)  # On device: no per-step key work on the host.
    probs = state.sampler
    if rescore is not None:
      k_score, key = jax.random.split(key)
      probs = jax.lax.cond(state.step % rescore_every == 0,
                           lambda: rescore(state.params, real, k_score).astype(probs.dtype),
                           lambda: probs)
    if network is None:
      params, opt_state, loss = update(state.params, state.opt_state, real, key, probs)
      return (parallel.constrain_replicated(DistillState(params, opt_state, state.step + 1,
                                                         probs), mesh), {"loss": loss})
    k_net, k_loop = jax.random.split(key)
    net = network.init(k_net)
    if network.train_first:
      net = network.train(net, state.params, real, jax.random.fold_in(k_net, 1))
    params, opt_state, loss = update(state.params, state.opt_state, real,
                                     jax.random.fold_in(k_loop, 0), probs, net)

    def body(i, carry):
      params, opt_state, net, total = carry
      k_train, k_update = jax.random.split(jax.random.fold_in(k_loop, i))
      net = network.train(net, params, real, k_train)
      params, opt_state, loss = update(params, opt_state, real, k_update, probs, net)
      return params, opt_state, net, total + loss

    params, opt_state, _, total = jax.lax.fori_loop(1, updates_per_network, body,
                                                    (params, opt_state, net, loss))
    return (parallel.constrain_replicated(DistillState(params, opt_state, state.step + 1, probs),
                                          mesh), {"loss": total / updates_per_network})

  return jax.jit(step, donate_argnums=0)


def importance_rescorer(sample_losses: Callable[[Params, dict, jax.Array], jax.Array], *,
                        beta: float = 0.5) -> Callable[[Params, dict, jax.Array], jax.Array]:
  """`rescore(params, real, key) -> (n,) probabilities` for `make_step`: every real sample's loss
  `sample_losses(params, real, key)` under the model the synthetic set defines, made per-class
  probabilities p_i = (1 − β) ℓ_i / Σ_c ℓ + β / n_c (`sensitivity.importance_probabilities`)."""

  def rescore(params, real, key):
    return sensitivity.importance_probabilities(sample_losses(params, real, key), real["table"],
                                                real["counts"], beta=beta)

  return rescore


def run_distillation(step_fn, state: DistillState, real: dict[str, jax.Array], *, key: jax.Array,
                     num_steps: int, log_every: int = 100,
                     eval_fn: Optional[Callable[[Params], dict[str, float]]] = None,
                     checkpoint_dir: Optional[str] = None, checkpoint_every: int = 0,
                     on_log: Optional[Callable[[list[dict[str, Any]], DistillState], None]] = None,
                     history: Optional[list[dict[str, Any]]] = None,
                     refresh_real: Optional[Callable[[DistillState, int], dict]] = None,
                     refresh_every: int = 0,
                     log: Callable[[str], None] = print) -> tuple[DistillState, list[dict]]:
  """Runs `step_fn` from `state.step` up to `num_steps`, logging and checkpointing.

  `refresh_real(state, step) -> real` (e.g. reclustering) replaces the real data before every
  later step that is a multiple of `refresh_every` (0: never); the caller passes `real` for the
  first step (e.g. `refresh_real(state, state.step)`).

  Every `log_every` steps (and at the end) it records the loss, the time per step and
  `eval_fn(params)`, prints a progress line with the time left, and calls
  `on_log(history, state)`. On a terminal a progress bar (`progress.Progress`) also shows every
  step. Every `checkpoint_every` steps
  (0: never) and at the end it saves `state` in `checkpoint_dir` (`io.Checkpoints`: Orbax,
  atomic, asynchronous; the newest two kept). After `interrupt.install()`, a SIGINT or SIGTERM
  stops the loop at the next step boundary with a checkpoint of that step, unless the real data
  is refreshed every `refresh_every` > 1 steps and the step is not a multiple: a resumed run
  refreshes from its first step's state, so it resumes from the last checkpoint instead.

  Raises:
    FloatingPointError: the loss became NaN or infinite (lower the learning rate, raise diag_reg).
    interrupt.Interrupted: a signal arrived (`.step` is the step checkpointed).
  """
  history = list(history or [])
  start = int(state.step)
  checkpoints = io.Checkpoints(checkpoint_dir) if checkpoint_dir else None
  bar = progress.Progress(num_steps, desc="distillation", initial=start, log=log, lines=False)
  t_start, steps_timed, t_first = time.time(), 0, None
  last_saved = start if start else None  # The step a rerun resumes from.
  with interrupt.deferred():  # A signal waits for the step boundary.
    try:
      for step in range(start, num_steps):
        if (refresh_real is not None and refresh_every and step > start
            and step % refresh_every == 0):
          real = refresh_real(state, step)
        state, metrics = step_fn(state, real, key)  # The step folds in state.step itself.
        done = step + 1
        if t_first is None:
          jax.block_until_ready(state)
          t_first = time.time()  # Excludes compilation from the time-left estimate.
        else:
          steps_timed += 1
        bar.update(1)
        if done % max(log_every, 1) == 0 or done == num_steps:
          loss = float(metrics["loss"])
          if not np.isfinite(loss):
            raise FloatingPointError(
                f"Loss is {loss} at step {done}. Lower --learning_rate or raise --diag_reg.")
          per_step = (time.time() - t_first) / steps_timed if steps_timed else 0.0
          record = {"step": done, "loss": loss, "elapsed_s": round(time.time() - t_start, 2),
                    "step_s": round(per_step, 4)}
          if eval_fn is not None:
            record.update(eval_fn(state.params))
          history.append(record)
          extras = " ".join(f"{k}={v:.4f}" for k, v in record.items()
                            if k not in ("step", "loss", "elapsed_s", "step_s"))
          bar.write(f"step {done:>6d}/{num_steps}  loss={loss:.5f}  {extras}  "
                    f"elapsed={progress.format_seconds(time.time() - t_start)}  "
                    f"left≈{progress.format_seconds(per_step * (num_steps - done))}")
          if on_log is not None:
            on_log(history, state)
        saved = checkpoints and ((checkpoint_every and done % checkpoint_every == 0)
                                 or done == num_steps)
        if saved:
          checkpoints.save(state, step=done)  # In the background; the next step donates `state`.
          last_saved = done
        signum = interrupt.pending()
        if signum is not None:
          mid_refresh = refresh_real is not None and refresh_every > 1 and done % refresh_every
          if checkpoints and not saved and not mid_refresh:
            checkpoints.save(state, step=done)
            last_saved = done
          interrupt.clear()
          raise interrupt.Interrupted(signum, step=last_saved if checkpoints else None)
    finally:
      bar.close()
      if checkpoints:
        checkpoints.close()  # Waits for the last save.
  return state, history
