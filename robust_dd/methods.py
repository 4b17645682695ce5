"""The distillation methods: one `Method` record each in `METHODS`.

`METHODS` is the only place a method is named.

A record holds what the rest of the package asks of a method: its presets (config fields by flag
name), its evaluator, and builders of its losses from a config:

- `loss(config, ctx)`: the loss of one update, `loss_fn(params, batch)` for kernel methods or
  `loss_fn(params, batch, net_params, key)` for methods that differentiate through a network;
- `cluster_loss(config, ctx)`: the group-robust loss, `risk.robust_objective` of the per-cluster
  losses of a `distill.cluster_batch`;
- `sample_losses(config, ctx)`: `(params, real, key) -> (n,)` per-real-sample losses under the
  model the synthetic set defines (importance rescoring, `distill.importance_rescorer`);
- `network(config, ctx)`: the network a matching method trains between updates (None: KIP).

`build_step` reads the record and the robust/sampler settings and returns the one jitted step of
`distill.make_step`. Adding a method is adding a record (and its loss module).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
from jax.sharding import Mesh

from robust_dd import augment as augment_lib
from robust_dd import curvature
from robust_dd import distill
from robust_dd import empirical_ntk as entk_lib
from robust_dd import evaluate
from robust_dd import expert_buffer
from robust_dd import kernels
from robust_dd import krr
from robust_dd import matching
from robust_dd import models
from robust_dd import parallel
from robust_dd import random_features as rf_lib
from robust_dd import risk
from robust_dd import training
from robust_dd import trajectory

Params = distill.Params
Batch = distill.Batch


class Context(NamedTuple):
  """What loss builders know of the data and devices besides the config."""
  num_classes: int
  input_shape: tuple[int, ...]
  mesh: Optional[Mesh] = None  # The devices (`parallel.make_mesh`); None: the default device.


# ------------------------------------------------------------------------------- loss adapters


def _krr_loss_kw(params: Params, loss: str) -> dict[str, Any]:
  """The KRR loss and, for 'platt', the set's learned log-scale (`kip_params`)."""
  return dict(loss=loss, log_scale=params["log_scale"] if loss == "platt" else 0.0)


def kip_params(loss: str = "mse") -> dict[str, jax.Array]:
  """Parameters KIP learns besides images and labels: Platt scaling's log-scale (init 0)."""
  return {"log_scale": jnp.zeros((), jnp.float32)} if loss == "platt" else {}


def kip_loss_fn(*, kernel_fn: rf_lib.Kernel, diag_reg: float = 1e-6, loss: str = "mse",
                mesh: Optional[Mesh] = None) -> distill.LossFn:
  """KIP as a distillation method: the KRR loss of the synthetic set on the real batch.

  `kernel_fn` is a kernel function or a `RandomFeatureKernel`, drawn anew from each step's key.
  `loss` is 'mse' or 'platt' (`krr.target_losses`; params then hold `kip_params('platt')`).
  On a `mesh` the real batch's rows, and so the target-support kernel block, are split over the
  devices; the support set and its Gram matrix are replicated.
  """

  def loss_fn(params: Params, batch: Batch, key: Optional[jax.Array] = None) -> jax.Array:
    batch = {k: parallel.constrain_rows(v, mesh) for k, v in batch.items()}
    return krr.kip_loss(params["images"], params["labels"], batch["images"], batch["labels"],
                        kernel_fn=rf_lib.bind(kernel_fn, key), diag_reg=diag_reg,
                        target_weights=batch.get("weights"), **_krr_loss_kw(params, loss))

  return loss_fn


def matching_loss_fn(class_loss: matching.ClassLoss, *, num_classes: int,
                     augment: Optional[matching.AugmentFn] = None,
                     class_batch: Optional[int] = None, mesh: Optional[Mesh] = None):
  """A matching method (DC, DSA, LCMat) as `loss_fn(params, batch, net_params, key)`.

  The synthetic images and the real batch are class-major (class c in the c-th block of rows);
  `class_loss` is vmapped over classes (`matching.per_class_losses`; `class_batch` bounds how many
  classes are vmapped at once; on a `mesh` the classes are split over its devices) and the
  losses summed. A batch's `weights` (importance weights) weight the real cross-entropies.
  """

  def loss_fn(params: Params, batch: Batch, net_params, key: jax.Array) -> jax.Array:
    syn, real = params["images"], batch["images"]
    syn = syn.reshape(num_classes, -1, *syn.shape[1:])
    real = real.reshape(num_classes, -1, *real.shape[1:])
    return matching.per_class_losses(class_loss, net_params, syn, real, key=key,
                                     augment=augment, class_batch=class_batch,
                                     real_weights=batch.get("weights"), mesh=mesh).sum()

  return loss_fn


def robust_kip_loss_fn(*, kernel_fn: rf_lib.Kernel, diag_reg: float = 1e-6,
                       tail_fraction: float = 0.2, robust_weight: float = 0.5,
                       loss: str = "mse", mesh: Optional[Mesh] = None) -> distill.LossFn:
  """Robust KIP: `risk.robust_objective` of the per-cluster KIP losses of a `cluster_batch`
  (clusters vmapped; on a `mesh`, split over its devices).

  With one cluster per class, equal cluster batches and robust_weight 0 this is the plain KIP loss.
  """

  def loss_fn(params: Params, batch: Batch, key: Optional[jax.Array] = None) -> jax.Array:
    batch = {k: parallel.constrain_rows(v, mesh) for k, v in batch.items()}
    losses = krr.kip_cluster_losses(params["images"], params["labels"], batch["images"],
                                    batch["labels"], batch["mask"],
                                    kernel_fn=rf_lib.bind(kernel_fn, key),
                                    diag_reg=diag_reg, **_krr_loss_kw(params, loss))
    return risk.robust_objective(losses, tail_fraction=tail_fraction,
                                 robust_weight=robust_weight, weights=batch["weights"])

  return loss_fn


def robust_matching_loss_fn(class_loss: matching.ClassLoss, *, num_classes: int,
                            tail_fraction: float = 0.2, robust_weight: float = 0.5,
                            augment: Optional[matching.AugmentFn] = None,
                            class_batch: Optional[int] = None, mesh: Optional[Mesh] = None):
  """Robust DC/DSA/LCMat: C · `risk.robust_objective` of the per-cluster matching losses
  (`matching.per_class_cluster_losses`: each class's synthetic gradient computed once and shared
  by its clusters, `class_batch` classes at a time).

  The batch's K clusters must be class-major, K / C per class (`cluster_batch` of the tables
  `experiment.cluster_real` makes for network methods; `build_step` checks K % C). The factor C
  keeps the plain loss's scale (a sum over classes): with one cluster per class and
  robust_weight 0 this equals `matching_loss_fn`'s loss.
  """

  def loss_fn(params: Params, batch: Batch, net_params, key: jax.Array) -> jax.Array:
    syn = params["images"]
    syn = syn.reshape(num_classes, -1, *syn.shape[1:])
    real, mask = batch["images"], batch["mask"]
    per_class = lambda a: a.reshape(num_classes, -1, *a.shape[1:])
    losses = matching.per_class_cluster_losses(class_loss, net_params, syn, per_class(real),
                                               per_class(mask), key=key, augment=augment,
                                               class_batch=class_batch,
                                               mesh=mesh).reshape(-1)
    return num_classes * risk.robust_objective(losses, tail_fraction=tail_fraction,
                                               robust_weight=robust_weight,
                                               weights=batch["weights"])

  return loss_fn


def inner_loop_network(model, *, input_shape, steps: int, learning_rate: float,
                       augment: Optional[matching.AugmentFn] = None,
                       chunk: int = 0) -> distill.Network:
  """DC's network: fresh `model` parameters, trained between updates by `steps` full-batch SGD
  steps on the synthetic set (labels: argmax of the synthetic label vectors; each step's
  gradient in chunks of at most `chunk` images, `training.loss_and_grad`)."""
  apply_fn = models.logits_fn(model)

  def train(net_params, params, real, key):
    del real
    labels = jnp.argmax(params["labels"], axis=-1)
    return training.sgd_steps(apply_fn, net_params, jax.lax.stop_gradient(params["images"]),
                              labels, key=key, steps=steps, learning_rate=learning_rate,
                              augment=augment, chunk=chunk)

  return distill.Network(init=models.init_fn(model, tuple(input_shape)), train=train)


def robust_network(model, *, input_shape, steps: int, learning_rate: float, per_class: int,
                   tail_fraction: float = 0.2, robust_weight: float = 0.5,
                   augment: Optional[matching.AugmentFn] = None) -> distill.Network:
  """The group-robust DD paper's placement (`--robust_on=network`): the matching network is
  trained on REAL data, before every update of the set and between updates, by `steps` SGD steps,
  each on a fresh class-balanced real batch of `per_class` images per class, on
  `training.prototype_robust_loss` (CVaR over clusters of the real batch around the current
  synthetic images in the network's own embedding, recomputed at every step)."""
  apply_fn, embed_fn = models.logits_fn(model), models.embed_fn(model)

  def train(net_params, params, real, key):
    prototypes = jax.lax.stop_gradient(params["images"])

    def body(i, p):
      k_batch, k_aug = jax.random.split(jax.random.fold_in(key, i))
      batch = distill.class_balanced_batch(k_batch, real, per_class=per_class)
      x = batch["images"] if augment is None else augment(k_aug, batch["images"])
      g = jax.grad(lambda q: training.prototype_robust_loss(
          apply_fn, embed_fn, q, x, jnp.argmax(batch["labels"], -1), prototypes,
          tail_fraction=tail_fraction, robust_weight=robust_weight))(p)
      return jax.tree_util.tree_map(lambda a, b: a - learning_rate * b, p, g)

    return jax.lax.fori_loop(0, steps, body, net_params)

  return distill.Network(init=models.init_fn(model, tuple(input_shape)), train=train,
                         train_first=True)


def robust_on_matching(config) -> bool:
  """Whether the CVaR is on the per-cluster losses of the set (`--robust_on=matching|both`)."""
  return config.robust.objective != "none" and config.robust.robust_on in ("matching", "both")


def robust_on_network(config) -> bool:
  """Whether the matching network trains on real data with the CVaR (`--robust_on=network|both`,
  the group-robust DD paper's placement)."""
  return config.robust.objective != "none" and config.robust.robust_on in ("network", "both")


def kip_sample_losses(*, kernel_fn: rf_lib.Kernel, diag_reg: float = 1e-6, loss: str = "mse"):
  """Per-real-sample losses (`krr.target_losses`) of the KRR predictor of the synthetic set (a
  random-feature kernel is drawn from `key`)."""

  def sample_losses(params, real, key):
    return krr.krr_sample_losses(params["images"], params["labels"], real["images"],
                                 real["labels"], kernel_fn=rf_lib.bind(kernel_fn, key),
                                 diag_reg=diag_reg, **_krr_loss_kw(params, loss))

  return sample_losses


def network_sample_losses(network: distill.Network, apply_fn, *, train_steps: int,
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


# ------------------------------------------------------------------- from a config to the parts


def _exact_kernel_fn(k) -> kernels.KernelFn:
  return kernels.make_kernel_fn(k.arch, kernel=k.kernel_kind, depth=k.depth, w_std=k.w_std,
                                b_std=k.b_std, pool=k.pool)


def _random_feature_kernel(k, num_features: int) -> rf_lib.RandomFeatureKernel:
  return rf_lib.RandomFeatureKernel(k.arch, num_features=num_features, width=k.rf_width,
                                    depth=k.depth, w_std=k.w_std, b_std=k.b_std, pool=k.pool,
                                    integrate_readout=k.rf_integrate_readout)


def _empirical_ntk_kernel(k) -> entk_lib.EmpiricalNTKKernel:
  return entk_lib.EmpiricalNTKKernel(k.arch, depth=k.depth, width=k.empirical_width,
                                     w_std=k.w_std, b_std=k.b_std, pool=k.pool,
                                     implementation=k.empirical_implementation)


def config_kernel_fn(config) -> rf_lib.Kernel:
  """The kernel of KIP's loss: the exact infinite-width kernel function, or with
  `--random_features=M` a `RandomFeatureKernel`, or with `--kernel=empirical_ntk` an
  `EmpiricalNTKKernel` (both a new draw every step)."""
  k = config.kernel
  if k.kernel_kind == "empirical_ntk":
    return _empirical_ntk_kernel(k)
  if k.random_features:
    return _random_feature_kernel(k, k.random_features)
  return _exact_kernel_fn(k)


def config_eval_kernel_fn(config, *, seed: int = 0) -> kernels.KernelFn:
  """The kernel function of KRR evaluation and leverage scores: the exact kernel, or one fixed
  draw (seed `seed`): of `--eval_random_features` features, or of the empirical NTK's network."""
  k = config.kernel
  if k.kernel_kind == "empirical_ntk":
    return _empirical_ntk_kernel(k).fixed(seed)
  if not k.eval_features:
    return _exact_kernel_fn(k)
  return _random_feature_kernel(k, k.eval_features).fixed(seed)


def network_model(config, num_classes: int, input_shape, *, net: Optional[str] = None):
  """The Flax network of a config (matching and finite-network evaluation); `net` replaces
  `--net` (cross-architecture evaluation: 'convnet' is the config's ConvNet)."""
  n = config.network
  return models.make_network(net or n.net, num_classes=num_classes, input_shape=input_shape,
                             depth=n.net_depth, width=n.net_width, conv_impl=n.conv_impl,
                             padding=n.net_padding)


def _risk_kw(config) -> dict[str, float]:
  return dict(tail_fraction=config.robust.tail_fraction,
              robust_weight=config.robust.robust_weight)


def _kip_kw(config) -> dict[str, Any]:
  return dict(kernel_fn=config_kernel_fn(config), diag_reg=config.kernel.diag_reg,
              loss=config.optim.krr_loss)


def _kip_loss(config, ctx: Context):
  return kip_loss_fn(**_kip_kw(config), mesh=ctx.mesh)


def _kip_cluster_loss(config, ctx: Context):
  return robust_kip_loss_fn(**_kip_kw(config), **_risk_kw(config), mesh=ctx.mesh)


def _kip_sample_losses(config, ctx: Context):
  del ctx
  return kip_sample_losses(**_kip_kw(config))


def _kip_check_inputs(config, x_train) -> None:
  kernels.check_inputs(config.kernel.arch, x_train)


def grad_chunk(config) -> int:
  """The images per gradient chunk a config's network training uses (`--grad_chunk`, unset:
  `training.default_chunk` of the backend)."""
  return training.default_chunk(config.network.grad_chunk)


def _gradient_class_loss(config, apply_fn):
  return matching.gradient_match_class_loss(apply_fn, metric=config.matching.metric,
                                            chunk=grad_chunk(config))


def _curvature_class_loss(config, apply_fn):
  m = config.matching
  return curvature.curvature_match_class_loss(apply_fn, rho=m.rho, gamma=m.gamma,
                                              metric=m.metric, hvp_mode=m.hvp,
                                              chunk=grad_chunk(config))


def _matching_parts(class_loss_fn):
  """The builders of a matching method whose per-class loss is `class_loss_fn(config, apply)`."""

  def match_kw(config, ctx: Context):
    model = network_model(config, ctx.num_classes, ctx.input_shape)
    m = config.matching
    return model, dict(num_classes=ctx.num_classes,
                       augment=augment_lib.dsa if m.augment else None,
                       class_batch=matching.default_class_batch(m.class_batch), mesh=ctx.mesh)

  def loss(config, ctx):
    model, kw = match_kw(config, ctx)
    return matching_loss_fn(class_loss_fn(config, models.logits_fn(model)), **kw)

  def cluster_loss(config, ctx):
    model, kw = match_kw(config, ctx)
    return robust_matching_loss_fn(class_loss_fn(config, models.logits_fn(model)), **kw,
                                   **_risk_kw(config))

  def network(config, ctx):
    m = config.matching
    kw = dict(input_shape=ctx.input_shape, steps=m.inner_loop,
              learning_rate=m.net_learning_rate,
              augment=evaluate.dsa_per_sample if m.augment else None)
    model = network_model(config, ctx.num_classes, ctx.input_shape)
    if robust_on_network(config):
      return robust_network(model, **kw, **_risk_kw(config),
                            per_class=max(1, config.robust.robust_net_batch // ctx.num_classes))
    return inner_loop_network(model, **kw, chunk=grad_chunk(config))

  def sample_losses(config, ctx):
    model = network_model(config, ctx.num_classes, ctx.input_shape)
    return network_sample_losses(network(config, ctx), models.logits_fn(model),
                                 train_steps=config.sampler.sampler_train_steps,
                                 learning_rate=config.matching.net_learning_rate)

  return dict(loss=loss, cluster_loss=cluster_loss, sample_losses=sample_losses,
              network=network)


def _matching_check_inputs(config, x_train) -> None:
  network_model(config, 10, x_train.shape[1:])
  if config.matching.augment and x_train.ndim != 4:
    raise ValueError(f"--method={config.method} augments images with DSA, but "
                     f"{config.data.dataset} samples are flat; pass --noaugment.")


# (outer_loop, inner_loop) of the DC code, by IPC.
DC_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def dc_loops(ipc: int) -> dict[str, int]:
  """DC's outer_loop and inner_loop for `ipc` (those of the nearest IPC the DC code lists)."""
  outer, inner = DC_LOOPS[min(DC_LOOPS, key=lambda k: (abs(k - ipc), k))]
  return {"outer_loop": outer, "inner_loop": inner}


def _describe_matching(config, num_classes: int) -> str:
  del num_classes
  m = config.matching
  return (f" (outer_loop {m.outer_loop}, inner_loop {m.inner_loop}, real batch "
          f"{config.optim.real_per_class}/class, DSA {'on' if m.augment else 'off'})")


# ------------------------------------------------------------------------ trajectory matching


def mtt_loss_fn(model, *, input_shape, steps: int, batch_size: int = 0,
                augment: Optional[matching.AugmentFn] = None,
                remat: bool = True) -> distill.LossFn:
  """MTT as a distillation method: `loss_fn(params, batch, key)`, the `trajectory.mtt_loss` of
  the set (its labels' argmax as classes, its learnable step size exp(`params['log_syn_lr']`)) on
  the
  expert segment `batch = {'start', 'target'}` (`trajectory.sample_expert_segment`)."""
  apply_fn = models.logits_fn(model)
  unravel = ravel_pytree(models.init_fn(model, tuple(input_shape))(jax.random.key(0)))[1]

  def loss_fn(params: Params, batch: Batch, key: jax.Array) -> jax.Array:
    return trajectory.mtt_loss(params["images"], jnp.argmax(params["labels"], -1),
                               params["log_syn_lr"], batch["start"], batch["target"],
                               apply_fn=apply_fn, unravel=unravel, key=key, steps=steps,
                               batch_size=batch_size, augment=augment, remat=remat)

  return loss_fn


def _mtt_loss(config, ctx: Context):
  t = config.trajectory
  return mtt_loss_fn(network_model(config, ctx.num_classes, ctx.input_shape),
                     input_shape=ctx.input_shape, steps=t.syn_steps, batch_size=t.syn_batch,
                     augment=augment_lib.dsa if config.matching.augment else None,
                     remat=t.remat)


def _mtt_sample_batch(config, ctx: Context):
  """Each update's 'real batch': a random expert segment of the buffer `real['experts']`."""
  del ctx
  t = config.trajectory

  def draw(key, real, probs=None):
    del probs
    return trajectory.sample_expert_segment(key, real["experts"],
                                            max_start_epoch=t.max_start_epoch,
                                            expert_epochs=t.expert_epochs)

  return draw


def _mtt_real_extras(config, x_train, *, log) -> dict[str, Any]:
  return {"experts": expert_buffer.load_experts(config, x_train, log=log)}


def _lcmat_validate(config) -> None:
  if config.matching.hvp == "exact" and config.network.conv_impl == "shifted":
    raise ValueError("--method=lcmat --hvp=exact needs forward-mode autodiff, which "
                     "--conv_impl=shifted lacks; pass --hvp=finite_difference or another "
                     "--conv_impl.")


def _mtt_validate(config) -> None:
  refusals = (
      (config.robust.objective != "none", "--robust: MTT has no per-cluster loss (its loss "
       "compares parameter trajectories, not real samples); run it without --robust"),
      (config.sampler.kind != "uniform", "--sampler=importance: MTT draws expert segments, not "
       "real samples; use --sampler=uniform (--init, including sensitivity sampling, applies)"),
      (bool(config.optim.learn_labels), "--learn_labels: MTT trains the student on the set's "
       "hard labels; pass --nolearn_labels"),
      (config.optim.krr_loss != "mse", f"--krr_loss={config.optim.krr_loss} is a KIP loss"),
      (not config.trajectory.expert_dir, "--expert_dir is required: train experts first with "
       "python -m experiments.experts --workdir=DIR (same data and network flags)"))
  for refused, message in refusals:
    if refused:
      raise ValueError(f"--method=mtt: {message}.")


def _refuse(what: str):
  def builder(config, ctx):
    del ctx
    raise ValueError(f"--method={config.method} has no {what}.")
  return builder


def _describe_mtt(config, num_classes: int) -> str:
  del num_classes
  t = config.trajectory
  return (f" (N={t.syn_steps} student steps covering M={t.expert_epochs} expert epochs, start "
          f"epochs < {t.max_start_epoch}, step size from {t.syn_lr_init}, "
          f"DSA {'on' if config.matching.augment else 'off'}, remat {'on' if t.remat else 'off'})")


# ----------------------------------------------------------------------------------- the table


@dataclasses.dataclass(frozen=True, kw_only=True)  # Built by keyword: a record reads as a table.
class Method:
  """One distillation method.

  Attributes:
    name: the `--method` value.
    summary: one line for `--help`.
    defaults: presets of config fields (by flag name) that the user left unset.
    evaluator: 'krr' (the config's kernel) or 'network' (the finite network) by default.
    loss, cluster_loss, sample_losses: builders `(config, Context) -> fn` (module docstring).
    network: builder `(config, Context) -> distill.Network`; None for methods without one.
    check_inputs: `(config, x_train) -> None`, raises ValueError for data it cannot take.
    ipc_defaults: `ipc -> {field: value}`, presets that depend on the IPC, or None.
    describe: `(config, num_classes) -> str` appended to the run's first log line.
    extra_params: `config -> {name: array}`, parameters learned with the set besides its images
      and labels (KIP with --krr_loss=platt: the log-scale of its predictions; MTT: its step
      size, as its log); learning_rates: `config -> {name: rate}`, those with their own
      learning rate.
    validate: `config -> None`, raises ValueError for settings the method refuses.
    sample_batch: builder `(config, Context) -> draw(key, real, probs=None) -> batch` of each
      update's batch, replacing the class-balanced real batch (MTT: an expert segment).
    real_extras: `(config, x_train, log=) -> {name: array}` added to the real data the step
      sees (MTT: the expert buffer, loaded and checked against the config).
  """
  name: str
  summary: str
  defaults: Mapping[str, Any]
  evaluator: str
  loss: Callable[..., Callable]
  cluster_loss: Callable[..., Callable]
  sample_losses: Callable[..., Callable]
  network: Optional[Callable[..., distill.Network]]
  check_inputs: Callable[..., None]
  ipc_defaults: Optional[Callable[[int], dict[str, Any]]] = None
  describe: Callable[..., str] = lambda config, num_classes: ""
  extra_params: Callable[..., dict[str, Any]] = lambda config: {}
  learning_rates: Callable[..., dict[str, float]] = lambda config: {}
  validate: Callable[..., None] = lambda config: None
  sample_batch: Optional[Callable[..., Callable]] = None
  real_extras: Callable[..., dict[str, Any]] = lambda config, x_train, log: {}

  @property
  def trains_network(self) -> bool:
    return self.network is not None


_MATCHING_DEFAULTS = dict(optimizer="sgd", learning_rate=0.1, learn_labels=False,
                          real_per_class=256, steps=1000, log_every=10, checkpoint_every=10,
                          eval_during=False, augment=False)
_GRADIENT = _matching_parts(_gradient_class_loss)

METHODS: dict[str, Method] = {m.name: m for m in (  # In the order of `names.METHODS`.
    Method(name="kip",
           summary="KRR distillation with an infinite-width kernel (Nguyen et al. 2021).",
           defaults=dict(optimizer="adam", learning_rate=0.01, learn_labels=True,
                         real_per_class=50, steps=2000, log_every=100, checkpoint_every=200,
                         eval_during=True, augment=False, outer_loop=0, inner_loop=0),
           evaluator="krr", loss=_kip_loss, cluster_loss=_kip_cluster_loss,
           sample_losses=_kip_sample_losses, network=None, check_inputs=_kip_check_inputs,
           extra_params=lambda config: kip_params(config.optim.krr_loss)),
    Method(name="dc", summary="Gradient matching (Zhao et al. 2021).",
           defaults=_MATCHING_DEFAULTS, evaluator="network", **_GRADIENT,
           check_inputs=_matching_check_inputs, ipc_defaults=dc_loops,
           describe=_describe_matching),
    Method(name="dsa", summary="Gradient matching with siamese augmentation (Zhao & Bilen 2021).",
           defaults=dict(_MATCHING_DEFAULTS, augment=True), evaluator="network", **_GRADIENT,
           check_inputs=_matching_check_inputs, ipc_defaults=dc_loops,
           describe=_describe_matching),
    Method(name="lcmat", summary="Loss-curvature matching (Shin et al. 2023).",
           defaults=dict(_MATCHING_DEFAULTS, augment=True), evaluator="network",
           **_matching_parts(_curvature_class_loss), check_inputs=_matching_check_inputs,
           ipc_defaults=dc_loops, describe=_describe_matching, validate=_lcmat_validate),
    Method(name="mtt", summary="Trajectory matching (Cazenavette et al. 2022).",
           defaults=dict(optimizer="sgd", learning_rate=100.0, learn_labels=False,
                         real_per_class=1, steps=1000, log_every=10, checkpoint_every=50,
                         eval_during=False, augment=True, outer_loop=0, inner_loop=0),
           evaluator="network", loss=_mtt_loss, cluster_loss=_refuse("per-cluster loss"),
           sample_losses=_refuse("per-sample loss"), network=None,
           check_inputs=_matching_check_inputs, describe=_describe_mtt,
           extra_params=lambda config: {
               "log_syn_lr": jnp.log(jnp.float32(config.trajectory.syn_lr_init))},
           learning_rates=lambda config: {"log_syn_lr": config.trajectory.lr_lr},
           validate=_mtt_validate, sample_batch=_mtt_sample_batch,
           real_extras=_mtt_real_extras),
)}


def get(name: str) -> Method:
  """The record of `--method=name`, or a ValueError naming the choices."""
  if name not in METHODS:
    raise ValueError(f"Unknown --method={name}; choose one of {tuple(METHODS)}.")
  return METHODS[name]


def build_step(config, optimizer, *, num_classes: int, input_shape,
               num_clusters: Optional[int] = None, mesh: Optional[Mesh] = None):
  """The jitted step of a resolved config's method (see `distill.make_step`).

  Robust configs with the CVaR on the set's loss (`robust_on_matching`) need `num_clusters`, the
  K of the cluster table the real data carries (`experiment.with_clusters`); each update draws
  real_per_class · C // K samples per cluster. With `robust_on_network` the method's network is
  `robust_network` (trained on real data with the CVaR). `sampler.kind='importance'` rescores
  every real sample every `sampler_every` steps
  (the state must carry the sampler, `distill.init_state(..., num_real=n)`). On a `mesh`
  (`parallel.make_mesh`) the method's groups or real rows are split over its devices; the set,
  its optimiser state and the step's outputs are replicated.
  """
  method = get(config.method)
  ctx = Context(num_classes, tuple(input_shape), mesh)
  draw_kw = dict(unbiased=config.sampler.sampler_unbiased)
  if robust_on_matching(config):
    if not num_clusters:
      raise ValueError("A robust step needs num_clusters (the K of the cluster table).")
    if method.trains_network and num_clusters % num_classes:
      raise ValueError(f"A robust {config.method} step needs the same number of clusters in "
                       f"every class (class-major), got K={num_clusters} for {num_classes} "
                       "classes.")
    total = config.optim.real_per_class * num_classes
    per_cluster = total // num_clusters
    if per_cluster < 1:
      raise ValueError(f"--real_per_class={config.optim.real_per_class} gives {total} real "
                       f"samples per update, fewer than the {num_clusters} clusters; raise it or "
                       "lower --num_clusters.")
    draw = functools.partial(distill.cluster_batch, per_cluster=per_cluster,
                             masses=config.robust.cluster_masses, **draw_kw)
    loss_fn = method.cluster_loss(config, ctx)
  elif method.sample_batch is not None:
    draw, loss_fn = method.sample_batch(config, ctx), method.loss(config, ctx)
  else:
    draw = functools.partial(distill.class_balanced_batch,
                             per_class=config.optim.real_per_class, **draw_kw)
    loss_fn = method.loss(config, ctx)
  kw = dict(sample_batch=draw, rescore_every=config.sampler.sampler_every)
  if config.sampler.kind == "importance":
    kw["rescore"] = distill.importance_rescorer(method.sample_losses(config, ctx),
                                                beta=config.sampler.sampler_beta)
  if method.trains_network:
    kw.update(network=method.network(config, ctx),
              updates_per_network=config.matching.outer_loop)
  return distill.make_step(loss_fn, optimizer, mesh=mesh, **kw)
