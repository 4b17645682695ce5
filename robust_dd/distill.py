"""The one distillation loop: init -> (sample a real batch -> jitted step)* -> save.

A method plugs in as a `loss_fn`, where `params = {'images', 'labels'}` is the synthetic set and
`batch` a real batch drawn on device inside the step:

- kernel methods (KIP): `loss_fn(params, batch) -> scalar`; one step = one update of the set.
- network methods (DC, DSA, LCMat): `loss_fn(params, batch, net_params, key) -> scalar` plus a
  `Network(init, train)`; one step = one outer iteration of DC: a fresh network, then
  `updates_per_network` updates of the set, with `network.train` (the inner loop) between them.

`run_distillation`
drives the jitted step with per-step keys `fold_in(key, step)`, so a run resumed from a checkpoint
continues exactly as an uninterrupted run would. `distill_experiment` is what `experiments.distill`
calls: data, preprocessing, method, loop, evaluation and outputs in `workdir`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from robust_dd import augment as augment_lib
from robust_dd import cluster
from robust_dd import curvature
from robust_dd import data as data_lib
from robust_dd import evaluate
from robust_dd import io
from robust_dd import kernels
from robust_dd import krr
from robust_dd import matching
from robust_dd import models
from robust_dd import risk
from robust_dd import select
from robust_dd import sensitivity
from robust_dd import training

Params = dict[str, jax.Array]
Batch = dict[str, jax.Array]
LossFn = Callable[[Params, Batch], jax.Array]


class DistillState(NamedTuple):
  """The synthetic set, its optimiser state, the number of steps taken and the real-batch
  sampler's state (None: uniform batches; importance sampling: (n,) per-sample probabilities)."""
  params: Params
  opt_state: optax.OptState
  step: jax.Array
  sampler: Any = None


OPTIMIZERS = ("adam", "sgd")


def make_optimizer(*, learning_rate: float = 0.01, learn_labels: bool = True,
                   name: str = "adam", momentum: float = 0.5) -> optax.GradientTransformation:
  """Adam (KIP) or SGD with momentum (DC) on the images, and on the labels when `learn_labels`."""
  if name not in OPTIMIZERS:
    raise ValueError(f"Unknown optimizer {name!r}; choose one of {OPTIMIZERS}.")
  opt = (optax.adam(learning_rate) if name == "adam"
         else optax.sgd(learning_rate, momentum=momentum or None))
  if learn_labels:
    return opt
  return optax.multi_transform({"learn": opt, "fixed": optax.set_to_zero()},
                               {"images": "learn", "labels": "fixed"})


def init_state(images, labels, optimizer: optax.GradientTransformation, *,
               num_real: Optional[int] = None) -> DistillState:
  """The initial state; `num_real` (the number of real training samples) gives an importance
  sampler's state, uniform probabilities until the first scoring."""
  params = {"images": jnp.asarray(images, jnp.float32), "labels": jnp.asarray(labels, jnp.float32)}
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
  train: `(net_params, params, key) -> net_params`, the inner loop on the synthetic set.
  """
  init: Callable[[jax.Array], Any]
  train: Callable[[Any, Params, jax.Array], Any]


def cluster_batch(key: jax.Array, real: dict[str, jax.Array], *, per_cluster: int,
                  probs: Optional[jax.Array] = None, unbiased: bool = False) -> Batch:
  """Draws up to `per_cluster` real samples of every cluster, on device.

  `real` holds `cluster_table`, `cluster_counts` and `cluster_class` (see `cluster_real`).
  Returns images (K, S, ...), labels (K, S, C), mask (K, S), cluster_class (K,) and weights (K,):
  uniform masses over the non-empty clusters. With `probs` (n,), each cluster's members are drawn
  ∝ probs (importance sampling); `unbiased` multiplies the mask by 1 / (n_k · p_i), p_i the
  probability within the cluster, so the masked cluster means become self-normalised estimates.
  """
  table, counts = real["cluster_table"], real["cluster_counts"]
  idx, mask = risk.sample_cluster_batch(key, table, counts, per_cluster=per_cluster,
                                        logits=_log_probs(probs, table))
  if unbiased and probs is not None:
    mask = mask * sensitivity.group_unbiasing_weights(probs, idx, table, counts)
  return {"images": real["images"][idx], "labels": real["labels"][idx], "mask": mask,
          "cluster_class": real["cluster_class"],
          "weights": (real["cluster_counts"] > 0).astype(jnp.float32)}


def make_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
              per_class: Optional[int] = None,
              sample_batch: Optional[Callable[..., Batch]] = None,
              network: Optional[Network] = None, updates_per_network: int = 1,
              rescore: Optional[Callable[[Params, dict, jax.Array], jax.Array]] = None,
              rescore_every: int = 50):
  """Returns the jitted `step(state, real, key) -> (state, metrics)`; `state` is donated.

  Each update draws its real batch with `sample_batch(key, real, probs=state.sampler)` (default:
  `per_class` samples of each class, `class_balanced_batch`; robust methods pass
  `cluster_batch`). Without `network`: one update of the set on `loss_fn(params, batch)`. With
  `network`: a fresh network, then `updates_per_network` updates on
  `loss_fn(params, batch, net_params, key)`, each on a new real batch, with `network.train`
  between consecutive updates. `metrics['loss']` is the mean loss of the step's updates.

  Importance sampling: with `rescore(params, real, key) -> probs (n,)`, the sampler state
  `state.sampler` is recomputed from the current synthetic set at every step that is a multiple of
  `rescore_every` (step 0 included; `lax.cond`, so other steps skip it) and carried in the state,
  so a resumed run samples exactly as an uninterrupted one.
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
    extra = (net[0], k_loss) if net else ()
    loss, grads = jax.value_and_grad(loss_fn)(params, batch, *extra)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def step(state: DistillState, real: dict[str, jax.Array], key: jax.Array):
    probs = state.sampler
    if rescore is not None:
      k_score, key = jax.random.split(key)
      probs = jax.lax.cond(state.step % rescore_every == 0,
                           lambda: rescore(state.params, real, k_score).astype(probs.dtype),
                           lambda: probs)
    if network is None:
      params, opt_state, loss = update(state.params, state.opt_state, real, key, probs)
      return DistillState(params, opt_state, state.step + 1, probs), {"loss": loss}
    k_net, k_loop = jax.random.split(key)
    net = network.init(k_net)
    params, opt_state, loss = update(state.params, state.opt_state, real,
                                     jax.random.fold_in(k_loop, 0), probs, net)

    def body(i, carry):
      params, opt_state, net, total = carry
      k_train, k_update = jax.random.split(jax.random.fold_in(k_loop, i))
      net = network.train(net, params, k_train)
      params, opt_state, loss = update(params, opt_state, real, k_update, probs, net)
      return params, opt_state, net, total + loss

    params, opt_state, _, total = jax.lax.fori_loop(1, updates_per_network, body,
                                                    (params, opt_state, net, loss))
    return (DistillState(params, opt_state, state.step + 1, probs),
            {"loss": total / updates_per_network})

  return jax.jit(step, donate_argnums=0)


def kip_loss_fn(*, kernel_fn, diag_reg: float = 1e-6) -> LossFn:
  """KIP as a distillation method: the KRR loss of the synthetic set on the real batch."""

  def loss_fn(params: Params, batch: Batch) -> jax.Array:
    return krr.kip_loss(params["images"], params["labels"], batch["images"], batch["labels"],
                        kernel_fn=kernel_fn, diag_reg=diag_reg,
                        target_weights=batch.get("weights"))

  return loss_fn


def matching_loss_fn(class_loss: matching.ClassLoss, *, num_classes: int,
                     augment: Optional[matching.AugmentFn] = None, use_vmap: bool = True,
                     class_batch: Optional[int] = None):
  """A matching method (DC, DSA, LCMat) as `loss_fn(params, batch, net_params, key)`.

  The synthetic images and the real batch are class-major (class c in the c-th block of rows);
  `class_loss` is vmapped over classes (`matching.per_class_losses`; `use_vmap=False` loops over
  them instead, for benchmarks; `class_batch` bounds how many classes are vmapped at once) and
  the losses summed. A batch's `weights` (importance weights) weight the real cross-entropies.
  """

  def loss_fn(params: Params, batch: Batch, net_params, key: jax.Array) -> jax.Array:
    syn, real = params["images"], batch["images"]
    syn = syn.reshape(num_classes, -1, *syn.shape[1:])
    real = real.reshape(num_classes, -1, *real.shape[1:])
    return matching.per_class_losses(class_loss, net_params, syn, real, key=key,
                                     augment=augment, use_vmap=use_vmap,
                                     class_batch=class_batch,
                                     real_weights=batch.get("weights")).sum()

  return loss_fn


def robust_kip_loss_fn(*, kernel_fn, diag_reg: float = 1e-6, tail_fraction: float = 0.2,
                       robust_weight: float = 0.5, use_vmap: bool = True) -> LossFn:
  """Robust KIP: `risk.robust_objective` of the per-cluster KIP losses of a `cluster_batch`
  (clusters vmapped; `use_vmap=False` loops over them, for benchmarks).

  With one cluster per class, equal cluster batches and robust_weight 0 this is the plain KIP loss.
  """

  def loss_fn(params: Params, batch: Batch) -> jax.Array:
    losses = krr.kip_cluster_losses(params["images"], params["labels"], batch["images"],
                                    batch["labels"], batch["mask"], kernel_fn=kernel_fn,
                                    diag_reg=diag_reg, use_vmap=use_vmap)
    return risk.robust_objective(losses, tail_fraction=tail_fraction,
                                 robust_weight=robust_weight, weights=batch["weights"])

  return loss_fn


def robust_matching_loss_fn(class_loss: matching.ClassLoss, *, num_classes: int,
                            tail_fraction: float = 0.2, robust_weight: float = 0.5,
                            augment: Optional[matching.AugmentFn] = None, use_vmap: bool = True,
                            class_batch: Optional[int] = None):
  """Robust DC/DSA/LCMat: C · `risk.robust_objective` of the per-cluster matching losses
  (`matching.per_cluster_match_losses`, clusters vmapped, `class_batch` clusters at a time).

  The factor C keeps the plain loss's scale (a sum over classes): with one cluster per class and
  robust_weight 0 this equals `matching_loss_fn`'s loss.
  """

  def loss_fn(params: Params, batch: Batch, net_params, key: jax.Array) -> jax.Array:
    syn = params["images"]
    syn = syn.reshape(num_classes, -1, *syn.shape[1:])
    losses = matching.per_cluster_match_losses(class_loss, net_params, syn, batch["images"],
                                         batch["mask"], batch["cluster_class"], key=key,
                                         augment=augment, use_vmap=use_vmap,
                                         cluster_batch=class_batch)
    return num_classes * risk.robust_objective(losses, tail_fraction=tail_fraction,
                                               robust_weight=robust_weight,
                                               weights=batch["weights"])

  return loss_fn


def inner_loop_network(model, *, input_shape, steps: int, learning_rate: float,
                       augment: Optional[matching.AugmentFn] = None) -> Network:
  """DC's network: fresh `model` parameters, trained between updates by `steps` full-batch SGD
  steps on the synthetic set (labels: argmax of the synthetic label vectors)."""
  apply_fn = models.logits_fn(model)

  def train(net_params, params, key):
    labels = jnp.argmax(params["labels"], axis=-1)
    return training.sgd_steps(apply_fn, net_params, jax.lax.stop_gradient(params["images"]),
                              labels, key=key, steps=steps, learning_rate=learning_rate,
                              augment=augment)

  return Network(init=models.init_fn(model, tuple(input_shape)), train=train)


def importance_rescorer(sample_losses: Callable[[Params, dict, jax.Array], jax.Array], *,
                        beta: float = 0.5) -> Callable[[Params, dict, jax.Array], jax.Array]:
  """`rescore(params, real, key) -> (n,) probabilities` for `make_step`: every real sample's loss
  `sample_losses(params, real, key)` under the model the synthetic set defines, made per-class
  probabilities p_i = (1 − β) ℓ_i / Σ_c ℓ + β / n_c (`sensitivity.importance_probabilities`)."""

  def rescore(params, real, key):
    return sensitivity.importance_probabilities(sample_losses(params, real, key), real["table"],
                                                real["counts"], beta=beta)

  return rescore


def kip_sample_losses(*, kernel_fn, diag_reg: float = 1e-6):
  """Per-real-sample squared errors of the KRR predictor of the synthetic set."""

  def sample_losses(params, real, key):
    del key
    return krr.krr_sample_losses(params["images"], params["labels"], real["images"],
                                 real["labels"], kernel_fn=kernel_fn, diag_reg=diag_reg)

  return sample_losses


def network_sample_losses(network: Network, apply_fn, *, train_steps: int,
                          learning_rate: float):
  """Per-real-sample cross-entropy of a network defined by the synthetic set: a fresh network
  trained by `train_steps` full-batch SGD steps on it (the current synthetic set's network)."""

  def sample_losses(params, real, key):
    k_init, k_train = jax.random.split(key)
    net = training.sgd_steps(apply_fn, network.init(k_init),
                             jax.lax.stop_gradient(params["images"]),
                             jnp.argmax(params["labels"], -1), key=k_train, steps=train_steps,
                             learning_rate=learning_rate)
    return training.sample_cross_entropy(apply_fn, net, real["images"],
                                         jnp.argmax(real["labels"], -1))

  return sample_losses


def _format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def run_distillation(step_fn, state: DistillState, real: dict[str, jax.Array], *, key: jax.Array,
                     num_steps: int, log_every: int = 100,
                     eval_fn: Optional[Callable[[Params], dict[str, float]]] = None,
                     checkpoint_dir: Optional[str] = None, checkpoint_every: int = 0,
                     on_log: Optional[Callable[[list[dict[str, Any]]], None]] = None,
                     history: Optional[list[dict[str, Any]]] = None,
                     refresh_real: Optional[Callable[[DistillState, int], dict]] = None,
                     refresh_every: int = 0,
                     log: Callable[[str], None] = print) -> tuple[DistillState, list[dict]]:
  """Runs `step_fn` from `state.step` up to `num_steps`, logging and checkpointing.

  `refresh_real(state, step) -> real` (e.g. reclustering) replaces the real data before every
  later step that is a multiple of `refresh_every` (0: never); the caller passes `real` for the
  first step (e.g. `refresh_real(state, state.step)`).

  Every `log_every` steps (and at the end) it records the loss and `eval_fn(params)`, prints a
  progress line with the time left, and calls `on_log(history)`. Every `checkpoint_every` steps
  (0: never) and at the end it saves `state` atomically in `checkpoint_dir`.

  Raises:
    FloatingPointError: the loss became NaN or infinite (lower the learning rate, raise diag_reg).
  """
  history = list(history or [])
  start = int(state.step)
  t_start, steps_timed, t_first = time.time(), 0, None
  for step in range(start, num_steps):
    if refresh_real is not None and refresh_every and step > start and step % refresh_every == 0:
      real = refresh_real(state, step)
    state, metrics = step_fn(state, real, jax.random.fold_in(key, step))
    done = step + 1
    if t_first is None:
      jax.block_until_ready(state)
      t_first = time.time()  # Excludes compilation from the time-left estimate.
    else:
      steps_timed += 1
    if done % max(log_every, 1) == 0 or done == num_steps:
      loss = float(metrics["loss"])
      if not np.isfinite(loss):
        raise FloatingPointError(
            f"Loss is {loss} at step {done}. Lower --learning_rate or raise --diag_reg.")
      record = {"step": done, "loss": loss, "elapsed_s": round(time.time() - t_start, 2)}
      if eval_fn is not None:
        record.update(eval_fn(state.params))
      history.append(record)
      per_step = (time.time() - t_first) / steps_timed if steps_timed else 0.0
      extras = " ".join(f"{k}={v:.4f}" for k, v in record.items()
                        if k not in ("step", "loss", "elapsed_s"))
      log(f"step {done:>6d}/{num_steps}  loss={loss:.5f}  {extras}  "
          f"elapsed={_format_seconds(time.time() - t_start)}  "
          f"left≈{_format_seconds(per_step * (num_steps - done))}")
      if on_log is not None:
        on_log(history)
    if checkpoint_dir and ((checkpoint_every and done % checkpoint_every == 0)
                           or done == num_steps):
      io.save_checkpoint(checkpoint_dir, state, step=done)
  return state, history


# ----------------------------------------------------------------------------- experiments


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  """Everything that determines a distillation run's result (plus run-length and logging).

  Fields left None take the method's default in `resolve_config` (see `METHOD_DEFAULTS` and
  `dc_loops`); the resolved config is what a run saves and reports.
  """
  method: str = "kip"
  dataset: str = "mnist5k"
  data_dir: Optional[str] = None
  data_path: Optional[str] = None
  split_seed: int = 0
  ipc: int = 10
  # Kernel (KIP; and KRR evaluation).
  arch: str = "fc"
  kernel: str = "ntk"
  depth: int = 1
  w_std: float = float(np.sqrt(2.0))
  b_std: float = 0.1
  pool: bool = False
  zca: bool = False
  zca_reg: float = 0.1
  diag_reg: float = 1e-6
  # Network (DC, DSA, LCMat; and finite-network evaluation).
  net: str = "auto"
  net_depth: int = 3
  net_width: int = 128
  conv_impl: str = "patches"
  outer_loop: Optional[int] = None
  inner_loop: Optional[int] = None
  net_learning_rate: float = 0.01
  metric: str = "ours"
  augment: Optional[bool] = None
  rho: float = 0.05
  gamma: float = 1.0
  hvp: str = "exact"
  class_batch: int = 0
  # Group robustness (METHODS.md §5): CVaR over clusters of the real data.
  robust: str = "none"
  tail_fraction: float = 0.2
  robust_weight: float = 0.5
  num_clusters: int = 5
  cluster_features: str = "pixels"
  cluster_assignment: str = "kmeans"
  cluster_scope: str = "class"
  recluster_every: Optional[int] = None
  # Rare-subgroup benchmark (data.make_rare_subgroup): transform a rare part of every class.
  subgroup: str = "none"
  subgroup_train_fraction: float = 0.05
  subgroup_test_fraction: float = 0.5
  # Optimisation of the synthetic set.
  optimizer: Optional[str] = None
  learning_rate: Optional[float] = None
  momentum: float = 0.5
  learn_labels: Optional[bool] = None
  target_batch: Optional[int] = None
  steps: Optional[int] = None
  seed: int = 0
  # Evaluation.
  baseline_draws: int = 5
  kernel_batch: int = 250
  eval_seeds: int = 3
  eval_epochs: int = 300
  eval_batch: int = 256
  eval_augment: bool = True
  robust_eval: bool = True
  # Provable subset selection (METHODS.md §4): initialisation and importance-sampled batches.
  init: str = "random"
  init_ridge: float = 1e-2
  init_rank: int = 0
  dedup_quantile: Optional[float] = None
  sampler: str = "uniform"
  sampler_every: int = 50
  sampler_beta: float = 0.5
  sampler_unbiased: bool = False
  sampler_train_steps: int = 100
  # Run length and logging.
  log_every: Optional[int] = None
  checkpoint_every: Optional[int] = None
  eval_during: Optional[bool] = None


METHODS = ("kip", "dc", "dsa", "lcmat")
ROBUST = ("none", "cvar")
CLUSTER_ASSIGNMENTS = ("kmeans", "prototype")
CLUSTER_SCOPES = ("class", "global")
SAMPLERS = ("uniform", "importance")
# --init choices and the `select` method each runs (random keeps the original class-balanced draw).
INIT_METHODS = {"random": None, "kmeans_centers": "kmeans_centers",
                "sensitivity_kmeans": "sensitivity", "sensitivity_krr": "sensitivity_krr"}
NETWORK_METHODS = ("dc", "dsa", "lcmat")
# Per-method defaults of the fields left None. target_batch of network methods is per class here
# (DC: 256 real images per class) and becomes 256 * C in `resolve_config`.
METHOD_DEFAULTS = {
    "kip": dict(optimizer="adam", learning_rate=0.01, learn_labels=True, target_batch=500,
                steps=2000, log_every=100, checkpoint_every=200, eval_during=True,
                augment=False),
    "dc": dict(optimizer="sgd", learning_rate=0.1, learn_labels=False, target_batch=256,
               steps=1000, log_every=10, checkpoint_every=10, eval_during=False, augment=False),
}
METHOD_DEFAULTS["dsa"] = dict(METHOD_DEFAULTS["dc"], augment=True)
METHOD_DEFAULTS["lcmat"] = dict(METHOD_DEFAULTS["dc"], augment=True)
# (outer_loop, inner_loop) of the DC code, by IPC.
DC_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
# Keys that may change between a run and its resumption without changing its result.
RESUMABLE_KEYS = ("steps", "log_every", "checkpoint_every", "eval_during", "data_dir",
                  "eval_seeds", "eval_epochs", "eval_batch", "eval_augment", "baseline_draws",
                  "robust_eval")


def dc_loops(ipc: int) -> tuple[int, int]:
  """DC's (outer_loop, inner_loop) for `ipc` (that of the nearest IPC the DC code lists)."""
  nearest = min(DC_LOOPS, key=lambda k: (abs(k - ipc), k))
  return DC_LOOPS[nearest]


def resolve_config(config: DistillConfig, num_classes: int) -> DistillConfig:
  """Fills the fields left None with the method's defaults."""
  if config.method not in METHODS:
    raise ValueError(f"Unknown --method={config.method}; choose one of {METHODS}.")
  defaults = dict(METHOD_DEFAULTS[config.method])
  if config.method in NETWORK_METHODS:
    defaults["target_batch"] *= num_classes
    defaults["outer_loop"], defaults["inner_loop"] = dc_loops(config.ipc)
  else:
    defaults.update(outer_loop=0, inner_loop=0)
  # Prototype clusters follow the synthetic set, so they are recomputed every step by default.
  defaults["recluster_every"] = int(config.cluster_assignment == "prototype")
  changes = {k: v for k, v in defaults.items() if getattr(config, k) is None}
  return dataclasses.replace(config, **changes)


def validate_config(config: DistillConfig) -> None:
  """Raises ValueError, saying what to change, for settings that cannot run."""
  if config.method not in METHODS:
    raise ValueError(f"Unknown --method={config.method}; choose one of {METHODS}.")
  if config.ipc < 1:
    raise ValueError(f"--ipc must be at least 1, got {config.ipc}.")
  if config.steps is not None and config.steps < 0:
    raise ValueError(f"--steps must be >= 0, got {config.steps}.")
  if config.arch not in kernels.ARCHITECTURES:
    raise ValueError(f"Unknown --arch={config.arch}; choose one of {kernels.ARCHITECTURES}.")
  if config.kernel not in kernels.KERNELS:
    raise ValueError(f"Unknown --kernel={config.kernel}; choose one of {kernels.KERNELS}.")
  if (config.learning_rate is not None and config.learning_rate <= 0) or config.diag_reg < 0:
    raise ValueError("--learning_rate must be positive and --diag_reg non-negative.")
  if config.metric not in matching.METRICS:
    raise ValueError(f"Unknown --metric={config.metric}; choose one of {matching.METRICS}.")
  if config.hvp not in curvature.HVP_MODES:
    raise ValueError(f"Unknown --hvp={config.hvp}; choose one of {curvature.HVP_MODES}.")
  if config.optimizer is not None and config.optimizer not in OPTIMIZERS:
    raise ValueError(f"Unknown --optimizer={config.optimizer}; choose one of {OPTIMIZERS}.")
  for name in ("outer_loop", "inner_loop"):
    value = getattr(config, name)
    if config.method in NETWORK_METHODS and value is not None and value < (name == "outer_loop"):
      raise ValueError(f"--{name} must be >= {int(name == 'outer_loop')}, got {value}.")
  if config.eval_seeds < 1 or config.eval_epochs < 1 or config.eval_batch < 1:
    raise ValueError("--eval_seeds, --eval_epochs and --eval_batch must be >= 1.")
  if config.class_batch < 0:
    raise ValueError(f"--class_batch must be >= 0 (0: all classes at once), got "
                     f"{config.class_batch}.")
  if config.rho <= 0 or config.gamma < 0 or config.net_learning_rate <= 0:
    raise ValueError("--rho and --net_learning_rate must be positive, --gamma non-negative.")
  for name, value, choices in (("robust", config.robust, ROBUST),
                               ("cluster_features", config.cluster_features, cluster.FEATURES),
                               ("cluster_assignment", config.cluster_assignment,
                                CLUSTER_ASSIGNMENTS),
                               ("cluster_scope", config.cluster_scope, CLUSTER_SCOPES),
                               ("subgroup", config.subgroup, ("none",) + data_lib.SUBGROUPS),
                               ("init", config.init, tuple(INIT_METHODS)),
                               ("sampler", config.sampler, SAMPLERS)):
    if value not in choices:
      raise ValueError(f"Unknown --{name}={value}; choose one of {choices}.")
  if not 0 < config.tail_fraction <= 1 or not 0 <= config.robust_weight <= 1:
    raise ValueError(f"--tail_fraction must be in (0, 1] and --robust_weight in [0, 1], got "
                     f"{config.tail_fraction} and {config.robust_weight}.")
  if config.num_clusters < 1:
    raise ValueError(f"--num_clusters must be >= 1, got {config.num_clusters}.")
  if config.sampler_every < 1 or not 0 <= config.sampler_beta <= 1:
    raise ValueError(f"--sampler_every must be >= 1 and --sampler_beta in [0, 1], got "
                     f"{config.sampler_every} and {config.sampler_beta}.")
  if config.sampler_train_steps < 0 or config.init_ridge <= 0 or config.init_rank < 0:
    raise ValueError("--sampler_train_steps and --init_rank must be >= 0, --init_ridge > 0.")
  if config.dedup_quantile is not None and not 0 <= config.dedup_quantile <= 1:
    raise ValueError(f"--dedup_quantile must be in [0, 1], got {config.dedup_quantile}.")
  every = config.recluster_every
  if every is not None and every < 0:
    raise ValueError(f"--recluster_every must be >= 0 (0: cluster once), got {every}.")
  if (every and every > 1 and config.checkpoint_every
      and config.checkpoint_every % every):
    raise ValueError(f"--checkpoint_every={config.checkpoint_every} must be a multiple of "
                     f"--recluster_every={every}, so that a resumed run reclusters exactly as an "
                     "uninterrupted one.")


def check_workdir_config(workdir: str, config) -> None:
  """Raises ValueError if `workdir` holds a run (config.json) of a different config dataclass
  (RESUMABLE_KEYS may differ)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  saved = io.load_json(path)
  current = json.loads(json.dumps(dataclasses.asdict(config)))  # Tuples as saved: lists.
  diffs = sorted(k for k in set(saved) | set(current)
                 if k not in RESUMABLE_KEYS and saved.get(k) != current.get(k))
  if diffs:
    details = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {current.get(k)!r}" for k in diffs)
    raise ValueError(f"--workdir={workdir} holds a run with a different config ({details}). "
                     "Use a new --workdir, or delete that one to start over.")


def prepare_data(config: DistillConfig):
  """Loads the dataset and fits preprocessing on its training split only.

  Returns (dataset, preprocessing, x_train, x_test, resolved config).
  """
  dataset = load_config_dataset(config)
  config = resolve_config(config, dataset.num_classes)
  if config.method == "kip":
    kernels.check_inputs(config.arch, dataset.x_train)
  else:
    network_model(config, dataset.num_classes, dataset.x_train.shape[1:])
    if config.augment and dataset.x_train.ndim != 4:
      raise ValueError(f"--method={config.method} augments images with DSA, but {config.dataset} "
                       "samples are flat; pass --noaugment.")
  _, counts = data_lib.class_index_table(dataset.y_train, dataset.num_classes)
  data_lib.check_per_class(counts, config.ipc, what=f"--ipc={config.ipc}")
  if config.target_batch % dataset.num_classes:
    raise ValueError(f"--target_batch={config.target_batch} must be a multiple of the "
                     f"{dataset.num_classes} classes.")
  data_lib.check_per_class(counts, config.target_batch // dataset.num_classes,
                           what=f"--target_batch={config.target_batch}")
  prep = data_lib.fit_preprocessing(dataset.x_train, zca=config.zca, zca_reg=config.zca_reg)
  x_train = data_lib.apply_preprocessing(dataset.x_train, prep)
  x_test = data_lib.apply_preprocessing(dataset.x_test, prep)
  return dataset, prep, x_train, x_test, config


def load_config_dataset(config: DistillConfig) -> data_lib.Dataset:
  """The config's dataset and split, made a rare-subgroup benchmark when `config.subgroup` is set
  (the subgroup draw is seeded by `split_seed`)."""
  dataset = data_lib.load_dataset(config.dataset, data_dir=config.data_dir,
                                  data_path=config.data_path, split_seed=config.split_seed)
  if config.subgroup != "none":
    dataset = data_lib.make_rare_subgroup(dataset, transform=config.subgroup,
                                          train_fraction=config.subgroup_train_fraction,
                                          test_fraction=config.subgroup_test_fraction,
                                          seed=config.split_seed)
  return dataset


def cluster_real(config: DistillConfig, key: jax.Array, x_train, y_train, *, num_classes: int,
                 syn_images=None, embed=None) -> tuple[np.ndarray, np.ndarray]:
  """Cluster ids of the real training samples and the class of each cluster: (ids (n,), (K,)).

  - kmeans, scope 'class': `num_clusters` k-means clusters inside each class (K = C · k).
  - kmeans, scope 'global': k-means on all samples (K = k); for matching methods, whose losses are
    per class, each global cluster is split by class (K = C · k, some possibly empty).
  - prototype: each sample joins its nearest synthetic image (of its own class with scope
    'class'), K = C · IPC (split by class for matching methods with scope 'global').
  Features (`cluster_features`): pixels, random ReLU features, or `embed` (network features).
  `cluster_class` is -1 for clusters that mix classes (global KIP clusters).
  """
  k_feat, k_means = jax.random.split(key)
  feats = cluster.features(config.cluster_features, x_train, key=k_feat, embed=embed)
  y = np.asarray(y_train)
  per_class = config.cluster_scope == "class"
  if config.cluster_assignment == "prototype":
    protos = cluster.features(config.cluster_features, np.asarray(syn_images), key=k_feat,
                              embed=embed)
    proto_labels = np.repeat(np.arange(num_classes), config.ipc)
    ids = np.asarray(cluster.nearest_prototype(
        feats, protos, labels=y if per_class else None,
        prototype_labels=proto_labels if per_class else None))
    k = len(protos)
    if per_class:
      return ids, proto_labels
  elif per_class:
    ids = cluster.kmeans_per_class(k_means, feats, y, num_classes=num_classes,
                                   k=config.num_clusters)
    return ids, np.repeat(np.arange(num_classes), config.num_clusters)
  else:
    k = config.num_clusters
    if k > len(y):
      raise ValueError(f"--num_clusters={k} exceeds the {len(y)} training samples.")
    ids = np.asarray(cluster.kmeans(k_means, feats, k=k).assignment)
  if config.method in NETWORK_METHODS:  # Split mixed clusters by class.
    return y * k + ids, np.repeat(np.arange(num_classes), k)
  return ids, np.full(k, -1)


def with_clusters(real: dict[str, jax.Array], ids, cluster_class, *, width: int) -> dict:
  """`real` plus the padded cluster table, counts and classes that `cluster_batch` samples."""
  table, counts = risk.cluster_index_table(jnp.asarray(ids), len(cluster_class), width=width)
  return dict(real, cluster_table=table, cluster_counts=counts,
              cluster_class=jnp.asarray(cluster_class, jnp.int32))


def initial_indices(config: DistillConfig, key: jax.Array, x_train, y_train, *,
                    num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices (class-major) and importance weights of the real samples that initialise the set.

  random: a class-balanced uniform draw. kmeans_centers / sensitivity_kmeans / sensitivity_krr:
  `select.select_indices` with k = IPC per class on the preprocessed inputs (sensitivity_krr with
  the config's kernel, exact or Nyström with `init_rank` landmarks).
  """
  method = INIT_METHODS[config.init]
  if method is None:
    idx = evaluate.random_subset_indices(key, y_train, per_class=config.ipc,
                                         num_classes=num_classes)
    return idx, np.ones(len(idx), np.float32)
  kernel_fn = None
  if method == "sensitivity_krr":
    kernel_fn = config_kernel_fn(config)
  return select.select_indices(method, key, x_train, y_train, num_classes=num_classes,
                               budget=config.ipc, kernel_fn=kernel_fn, ridge=config.init_ridge,
                               rank=config.init_rank, dedup_quantile=config.dedup_quantile)


def config_kernel_fn(config: DistillConfig):
  """The infinite-width kernel of a config (KIP's loss, KRR evaluation, leverage scores)."""
  return kernels.make_kernel_fn(config.arch, kernel=config.kernel, depth=config.depth,
                                w_std=config.w_std, b_std=config.b_std, pool=config.pool)


def network_model(config: DistillConfig, num_classes: int, input_shape):
  """The Flax network of a config (matching and finite-network evaluation)."""
  return models.make_network(config.net, num_classes=num_classes, input_shape=input_shape,
                             depth=config.net_depth, width=config.net_width,
                             conv_impl=config.conv_impl)


def method_step(config: DistillConfig, optimizer, *, num_classes: int, input_shape,
                use_vmap: bool = True, num_clusters: Optional[int] = None):
  """The jitted step of the config's method (see `make_step`); `use_vmap=False` loops over
  classes (or clusters) inside the losses (for benchmarks). Robust configs (`robust='cvar'`)
  need `num_clusters`, the K of `cluster_real`; their real data must carry the cluster table
  (`with_clusters`) and each update draws target_batch // K samples per cluster.
  `sampler='importance'` rescores every real sample every `sampler_every` steps (the state must
  carry the sampler, `init_state(..., num_real=n)`).
  """
  robust = config.robust != "none"
  importance = config.sampler == "importance"
  draw_kw = dict(unbiased=config.sampler_unbiased)
  if robust:
    if not num_clusters:
      raise ValueError("A robust step needs num_clusters (the K of cluster_real).")
    per_cluster = config.target_batch // num_clusters
    if per_cluster < 1:
      raise ValueError(f"--target_batch={config.target_batch} is smaller than the {num_clusters} "
                       "clusters; raise it or lower --num_clusters.")
    draw = functools.partial(cluster_batch, per_cluster=per_cluster, **draw_kw)
  else:
    draw = functools.partial(class_balanced_batch, per_class=config.target_batch // num_classes,
                             **draw_kw)
  sampler = dict(sample_batch=draw, rescore_every=config.sampler_every)
  risk_kw = dict(tail_fraction=config.tail_fraction, robust_weight=config.robust_weight)
  if config.method == "kip":
    kernel_fn = config_kernel_fn(config)
    loss_fn = (robust_kip_loss_fn(kernel_fn=kernel_fn, diag_reg=config.diag_reg,
                                  use_vmap=use_vmap, **risk_kw)
               if robust else kip_loss_fn(kernel_fn=kernel_fn, diag_reg=config.diag_reg))
    if importance:
      sampler["rescore"] = importance_rescorer(
          kip_sample_losses(kernel_fn=kernel_fn, diag_reg=config.diag_reg),
          beta=config.sampler_beta)
    return make_step(loss_fn, optimizer, **sampler)
  model = network_model(config, num_classes, input_shape)
  apply_fn = models.logits_fn(model)
  if config.method == "lcmat":
    class_loss = curvature.curvature_match_class_loss(apply_fn, rho=config.rho,
                                                      gamma=config.gamma, metric=config.metric,
                                                      hvp_mode=config.hvp)
  else:
    class_loss = matching.gradient_match_class_loss(apply_fn, metric=config.metric)
  match_kw = dict(num_classes=num_classes, augment=augment_lib.dsa if config.augment else None,
                  use_vmap=use_vmap, class_batch=config.class_batch or None)
  loss_fn = (robust_matching_loss_fn(class_loss, **match_kw, **risk_kw) if robust
             else matching_loss_fn(class_loss, **match_kw))
  network = inner_loop_network(model, input_shape=input_shape, steps=config.inner_loop,
                               learning_rate=config.net_learning_rate,
                               augment=evaluate.dsa_per_sample if config.augment else None)
  if importance:
    sampler["rescore"] = importance_rescorer(
        network_sample_losses(network, apply_fn, train_steps=config.sampler_train_steps,
                              learning_rate=config.net_learning_rate),
        beta=config.sampler_beta)
  return make_step(loss_fn, optimizer, network=network, updates_per_network=config.outer_loop,
                   **sampler)


def make_reclusterer(config: DistillConfig, real: dict[str, jax.Array], x_train, y_train, *,
                     num_classes: int, key: jax.Array) -> Callable[[DistillState, int], dict]:
  """`recluster(state, step) -> real` with the cluster table of `cluster_real` at that step.

  Step s uses `fold_in(key, s)` (k-means seeding, random features, the embedding network), so a
  resumed run reclusters exactly as an uninterrupted one.
  """
  embed_model = network_model(config, num_classes, x_train.shape[1:])
  width = int(np.bincount(np.asarray(y_train)).max())

  def recluster(state: DistillState, step: int) -> dict:
    k = jax.random.fold_in(key, step)
    embed = None
    if config.cluster_features == "embed":
      net = models.init_fn(embed_model, tuple(x_train.shape[1:]))(k)
      embed_apply = models.embed_fn(embed_model)
      embed = lambda x: embed_apply(net, x)
    ids, cluster_class = cluster_real(config, k, x_train, y_train, num_classes=num_classes,
                                      syn_images=state.params["images"], embed=embed)
    within_class = bool(np.all(cluster_class >= 0))
    return with_clusters(real, ids, cluster_class, width=width if within_class else len(ids))

  return recluster


def distill_experiment(config: DistillConfig, workdir: str,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
  """Distills, evaluates and writes every output to `workdir`; resumes from its checkpoints.

  Writes: config.json (resolved), distilled.npz (images in the space the method sees, labels,
  and the preprocessing mean/std[/zca]), distilled.png, metrics.json (config, accuracies, split
  recipe, history), progress.json, checkpoints/ckpt_*.npz. Evaluation: KRR with the method's
  kernel for KIP; the finite network (`eval_seeds` seeds) for network methods; in both cases
  beside random real subsets of the same size under the same evaluator. Returns the metrics.
  """
  validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  dataset, prep, x_train, x_test, config = prepare_data(config)
  check_workdir_config(workdir, config)
  io.save_json(os.path.join(workdir, "config.json"), dataclasses.asdict(config))
  num_classes = dataset.num_classes
  log(f"{config.dataset}: {len(x_train)} train / {len(x_test)} test samples of shape "
      f"{x_train.shape[1:]}, {num_classes} classes; preprocessing: standardise"
      f"{' + ZCA' if prep.zca is not None else ''}; method {config.method}"
      + (f" (outer_loop {config.outer_loop}, inner_loop {config.inner_loop}, real batch "
         f"{config.target_batch // num_classes}/class, DSA {'on' if config.augment else 'off'})"
         if config.method in NETWORK_METHODS else ""))

  key = jax.random.key(config.seed)
  init_key, loop_key, baseline_key = jax.random.split(key, 3)
  init_idx, init_weights = initial_indices(config, init_key, x_train, dataset.y_train,
                                           num_classes=num_classes)
  if config.init != "random":
    log(f"Initialised with --init={config.init}: {len(init_idx)} real samples.")
  optimizer = make_optimizer(learning_rate=config.learning_rate, learn_labels=config.learn_labels,
                             name=config.optimizer, momentum=config.momentum)
  state = init_state(x_train[init_idx], data_lib.one_hot_centered(dataset.y_train[init_idx],
                                                                  num_classes), optimizer,
                     num_real=len(x_train) if config.sampler == "importance" else None)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  restored, restored_step = io.restore_checkpoint(ckpt_dir, state)
  progress_path = os.path.join(workdir, "progress.json")
  history = []
  if restored is not None:
    state = jax.tree_util.tree_map(jnp.asarray, restored)
    if os.path.exists(progress_path):
      history = [h for h in io.load_json(progress_path) if h["step"] <= restored_step]
    log(f"Resuming from step {restored_step} ({ckpt_dir}).")

  table, counts = data_lib.class_index_table(dataset.y_train, num_classes)
  real = {"images": jnp.asarray(x_train),
          "labels": data_lib.one_hot_centered(jnp.asarray(dataset.y_train), num_classes),
          "table": jnp.asarray(table), "counts": jnp.asarray(counts)}
  refresh, num_clusters = None, None
  if config.robust != "none":
    refresh = make_reclusterer(config, real, x_train, dataset.y_train, num_classes=num_classes,
                               key=jax.random.fold_in(key, 3))
    real = refresh(state, int(state.step))
    num_clusters = int(real["cluster_class"].shape[0])
    log(f"Robust objective: CVaR(tail_fraction={config.tail_fraction}) with robust_weight "
        f"{config.robust_weight} over {num_clusters} clusters ({config.cluster_assignment} on "
        f"{config.cluster_features}, per {config.cluster_scope}"
        + (f", reclustered every {config.recluster_every} steps" if config.recluster_every
           else "") + f"), {config.target_batch // num_clusters} real samples per cluster.")
  if config.sampler == "importance":
    log(f"Importance-sampled real batches: rescored every {config.sampler_every} steps, "
        f"beta {config.sampler_beta}" + (", unbiased weights" if config.sampler_unbiased else "")
        + ".")
  step_fn = method_step(config, optimizer, num_classes=num_classes, input_shape=x_train.shape[1:],
                        num_clusters=num_clusters)
  evaluator = make_evaluator(config, x_train, dataset.y_train, x_test, dataset.y_test,
                             num_classes=num_classes)

  def monitor(params):  # One evaluation seed: for watching progress, nothing is chosen on it.
    accs = evaluator.accuracies(params["images"], params["labels"], seeds=1)
    return {"test_acc": float(accs[0])}

  t0 = time.time()
  state, history = run_distillation(
      step_fn, state, real, key=loop_key, num_steps=config.steps, log_every=config.log_every,
      eval_fn=monitor if config.eval_during else None, checkpoint_dir=ckpt_dir,
      checkpoint_every=config.checkpoint_every, history=history, log=log,
      on_log=lambda h: io.save_json(progress_path, h), refresh_real=refresh,
      refresh_every=config.recluster_every or 0)
  distill_seconds = time.time() - t0

  images, labels = np.asarray(state.params["images"]), np.asarray(state.params["labels"])
  io.save_npz(os.path.join(workdir, "distilled.npz"), images=images, labels=labels,
              **prep.as_arrays())
  io.save_image_grid(os.path.join(workdir, "distilled.png"), images, rows=num_classes)
  entry = evaluate_support_set(
      evaluator, images, labels, key=baseline_key, per_class=config.ipc,
      robustness=robustness_data(dataset, prep, x_test) if config.robust_eval else None, log=log)
  metrics = {
      "config": dataclasses.asdict(config),
      **entry,
      "final_loss": history[-1]["loss"] if history else None,
      "steps": int(state.step),
      "distill_seconds_this_run": round(distill_seconds, 2),
      "split": dataset.split,
      "init": {"method": config.init, "indices": [int(i) for i in init_idx],
               "weights": [float(w) for w in init_weights]},
      "history": history,
      "jax_version": jax.__version__,
      "backend": jax.default_backend(),
  }
  io.save_json(os.path.join(workdir, "metrics.json"), metrics)
  log(results_table([metrics]))
  return metrics


class RobustnessData(NamedTuple):
  """Extra test data for robustness metrics (`evaluate.robustness_metrics`)."""
  test_sets: dict          # name -> preprocessed corrupted test images
  clusters: np.ndarray     # (n_test,) k-means cluster of each test sample
  num_clusters: int
  groups: Optional[np.ndarray]  # (n_test,) 1 on the rare subgroup, or None


def robustness_data(dataset: data_lib.Dataset, prep: data_lib.Preprocessing, x_test, *,
                    num_clusters: int = 10) -> RobustnessData:
  """Corrupted test sets (from the raw test images), k-means (k = 10) test clusters on the
  preprocessed test inputs, and the rare-subgroup ids when the dataset has them."""
  return RobustnessData(evaluate.corrupted_test_sets(dataset.x_test, prep),
                        evaluate.cluster_test_set(x_test, k=num_clusters), num_clusters,
                        dataset.group_test)


def evaluate_support_set(evaluator: "Evaluator", images, labels, *, key: jax.Array,
                         per_class: int, robustness: Optional[RobustnessData] = None,
                         baseline: bool = True, log: Callable[[str], None] = print
                         ) -> dict[str, Any]:
  """Test accuracy of a support set and of random real subsets of `per_class` per class under
  `evaluator`, plus, with `robustness`, per-cluster, rare-subgroup and corruption accuracy of
  both. Returns the metrics.json fields."""
  test_sets = {"test": evaluator.x_test, **(robustness.test_sets if robustness else {})}

  def summarise(preds, keys):
    list_key, mean_key, std_key, robust_key = keys
    accs = np.mean(preds["test"] == np.asarray(evaluator.y_test)[None], axis=1)  # (runs,)
    out = {list_key: accs.tolist(), mean_key: float(accs.mean()), std_key: float(accs.std())}
    if robustness:
      out[robust_key] = evaluate.robustness_metrics(
          preds, evaluator.y_test, clusters=robustness.clusters,
          num_clusters=robustness.num_clusters, groups=robustness.groups)
    return out

  log(f"Evaluating the distilled set ({evaluator.describe()}) ...")
  entry = {"evaluator": evaluator.describe(),
           **summarise(evaluator.predict(images, labels, test_sets),
                       ("distilled_test_accs", "distilled_test_acc", "distilled_test_acc_std",
                        "distilled_robustness"))}
  if baseline:
    log(f"Evaluating {evaluator.baseline_draws} random real subsets of {per_class} per class ...")
    entry.update(summarise(evaluator.predict_random(key, per_class, test_sets),
                           ("random_subset_test_acc", "random_subset_test_acc_mean",
                            "random_subset_test_acc_std", "random_subset_robustness")))
  return entry


class Evaluator(NamedTuple):
  """Test predictions of a support set, and of random real subsets, under one fixed evaluator.

  predict: `(images, labels, test_sets, seeds=None) -> {name: (runs, n) predicted classes}`.
  predict_random: `(key, per_class, test_sets) -> {name: (draws, n)}`, random real subsets.
  """
  name: str
  describe: Callable[[], str]
  predict: Callable[..., dict]
  predict_random: Callable[..., dict]
  baseline_draws: int
  x_test: np.ndarray
  y_test: np.ndarray

  def accuracies(self, images, labels, seeds=None) -> np.ndarray:
    """(runs,) test accuracies of the support set (images, labels)."""
    preds = self.predict(images, labels, {"test": self.x_test}, seeds)["test"]
    return np.mean(preds == np.asarray(self.y_test)[None], axis=1)


def make_evaluator(config: DistillConfig, x_train, y_train, x_test, y_test, *,
                   num_classes: int, evaluator: Optional[str] = None) -> Evaluator:
  """KRR with the config's kernel ('krr', KIP's default) or the finite network ('network')."""
  evaluator = evaluator or ("krr" if config.method == "kip" else "network")
  if evaluator == "krr":
    kernel_fn = config_kernel_fn(config)
    krr_kw = dict(diag_reg=config.diag_reg, batch_size=config.kernel_batch)

    def krr_predict(images, labels, test_sets, seeds=None):
      return evaluate.krr_label_predictions(kernel_fn, np.asarray(images), np.asarray(labels),
                                            test_sets, **krr_kw)

    def krr_random(key, per_class, test_sets):
      return evaluate.random_subset_predictions(
          key, lambda _, x, y: krr_predict(x, data_lib.one_hot_centered(y, num_classes),
                                           test_sets),
          x_train, y_train, per_class=per_class, num_classes=num_classes,
          draws=config.baseline_draws)

    return Evaluator("krr", lambda: f"KRR, {config.arch}{config.depth} {config.kernel}",
                     krr_predict, krr_random, config.baseline_draws, x_test, y_test)
  if evaluator != "network":
    raise ValueError(f"Unknown evaluator {evaluator!r}; use 'krr' or 'network'.")
  model = network_model(config, num_classes, x_train.shape[1:])
  settings = dict(model=model, epochs=config.eval_epochs, batch_size=config.eval_batch,
                  augment=config.eval_augment and x_train.ndim == 4)

  def net_predict(images, labels, test_sets, seeds=None, key=None):
    key = jax.random.key(config.seed) if key is None else key
    return evaluate.network_predictions(key, images, labels, test_sets,
                                        seeds=seeds or config.eval_seeds, **settings)

  def net_random(key, per_class, test_sets):
    return evaluate.random_subset_predictions(
        key, lambda k, x, y: net_predict(x, y, test_sets, seeds=1, key=k), x_train, y_train,
        per_class=per_class, num_classes=num_classes, draws=config.eval_seeds)

  def describe():
    return (f"{type(model).__name__}-{config.net_depth} w{config.net_width}, "
            f"{config.eval_epochs} epochs, DSA {'on' if settings['augment'] else 'off'}")

  return Evaluator("network", describe, net_predict, net_random, config.eval_seeds, x_test,
                   y_test)


def results_table(runs: list[dict[str, Any]]) -> str:
  """A Markdown table of distilled vs random-subset test accuracy (mean ± std over seeds)."""
  lines = ["| method | dataset | IPC | steps | evaluator | distilled acc | random subset acc |",
           "|---|---|---|---|---|---|---|"]
  for m in runs:
    c = m["config"]
    std = m.get("distilled_test_acc_std", 0.0)
    lines.append(
        f"| {c['method']} | {c['dataset']} | {c['ipc']} | {m['steps']} | "
        f"{m.get('evaluator', 'KRR')} | {100 * m['distilled_test_acc']:.1f}% ± {100 * std:.1f} | "
        f"{100 * m['random_subset_test_acc_mean']:.1f}% ± "
        f"{100 * m['random_subset_test_acc_std']:.1f} |")
  return "\n".join(lines)


def robustness_table(runs: list[dict[str, Any]]) -> str:
  """A Markdown table of robustness metrics, runs grouped by (method, IPC, objective) and each
  number the mean ± std over the group's runs (e.g. seeds): test accuracy, worst and mean test
  cluster, rare subgroup, common samples, and the random real subsets' accuracy and rare-subgroup
  accuracy under the same evaluator. Runs need `distilled_robustness` (`robust_eval`)."""
  groups: dict[tuple, list] = {}
  for m in runs:
    c = m["config"]
    objective = ("plain" if c.get("robust", "none") == "none" else
                 f"CVaR α={c['tail_fraction']} λ={c['robust_weight']}")
    groups.setdefault((c["method"], c["ipc"], objective), []).append(m)

  def cell(values):
    v = 100 * np.asarray([x for x in values if x is not None], np.float64)
    return "-" if v.size == 0 else f"{v.mean():.1f} ± {v.std():.1f}"

  lines = ["| method | IPC | objective | runs | steps | test acc | worst cluster | mean cluster | "
           "rare subgroup | common | random subset acc | random subset rare |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for (method, ipc, objective), ms in sorted(groups.items(),
                                             key=lambda kv: (*kv[0][:2], kv[0][2] != "plain")):
    d = [m["distilled_robustness"] for m in ms]
    r = [m.get("random_subset_robustness", {}) for m in ms]
    lines.append(
        f"| {method} | {ipc} | {objective} | {len(ms)} | {ms[0]['steps']} | "
        f"{cell(x['accuracy'] for x in d)} | {cell(x['worst_cluster_accuracy'] for x in d)} | "
        f"{cell(x['mean_cluster_accuracy'] for x in d)} | "
        f"{cell(x.get('rare_accuracy') for x in d)} | {cell(x.get('common_accuracy') for x in d)} | "
        f"{cell(x.get('accuracy') for x in r)} | {cell(x.get('rare_accuracy') for x in r)} |")
  return "\n".join(lines)


def evaluate_workdir(workdir: str, *, network: bool = True, krr: Optional[bool] = None,
                     baseline: bool = True, output: str = "evaluation.json",
                     log: Callable[[str], None] = print, **overrides) -> dict[str, Any]:
  """Evaluates the distilled set saved in `workdir` (what `experiments.evaluate` runs).

  The dataset and split come from the run's config.json, the preprocessing from distilled.npz.
  `overrides` replace evaluation fields of the config (net, net_depth, net_width, eval_seeds,
  eval_epochs, eval_batch, eval_augment, robust_eval). KRR (with the run's kernel) runs when `krr` is True, or
  by default for KIP runs. Writes `workdir/output` and returns it as a dict.
  """
  config_path, set_path = (os.path.join(workdir, n) for n in ("config.json", "distilled.npz"))
  for path in (config_path, set_path):
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} does not exist: is {workdir} a finished distillation run?")
  saved = io.load_json(config_path)
  fields = {f.name for f in dataclasses.fields(DistillConfig)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"Unknown evaluation settings {unknown}.")
  config = dataclasses.replace(DistillConfig(**{k: v for k, v in saved.items() if k in fields}),
                               **overrides)
  validate_config(config)
  arrays = io.load_npz(set_path)
  prep = data_lib.Preprocessing(arrays["mean"], arrays["std"], arrays.get("zca"))
  dataset = load_config_dataset(config)
  config = resolve_config(config, dataset.num_classes)
  x_train = data_lib.apply_preprocessing(dataset.x_train, prep)
  x_test = data_lib.apply_preprocessing(dataset.x_test, prep)
  images, labels = arrays["images"], arrays["labels"]
  ipc = len(images) // dataset.num_classes
  krr = config.method == "kip" if krr is None else krr
  results = {"workdir": workdir, "config": dataclasses.asdict(config), "ipc": ipc}
  robustness = robustness_data(dataset, prep, x_test) if config.robust_eval else None
  rows = []
  for name in (["network"] if network else []) + (["krr"] if krr else []):
    evaluator = make_evaluator(config, x_train, dataset.y_train, x_test, dataset.y_test,
                               num_classes=dataset.num_classes, evaluator=name)
    log(f"{name}: {evaluator.describe()} ...")
    entry = evaluate_support_set(evaluator, images, labels, key=jax.random.key(config.seed + 1),
                                 per_class=ipc, robustness=robustness, baseline=baseline, log=log)
    results[name] = entry
    rows.append(f"| {config.method} | {config.dataset} | {ipc} | {entry['evaluator']} | "
                f"{100 * entry['distilled_test_acc']:.1f}% ± "
                f"{100 * entry['distilled_test_acc_std']:.1f} | "
                + (f"{100 * entry['random_subset_test_acc_mean']:.1f}% ± "
                   f"{100 * entry['random_subset_test_acc_std']:.1f} |" if baseline else "- |"))
  io.save_json(os.path.join(workdir, output), results)
  log("\n".join(["| method | dataset | IPC | evaluator | distilled acc | random subset acc |",
                 "|---|---|---|---|---|---|"] + rows))
  return results
