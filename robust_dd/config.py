"""Run configurations: nested, frozen dataclasses with per-method presets and validation.

A `DistillConfig` is a few top-level fields (method, ipc, steps, seed, logging) and one section per
concern: `data`, `kernel`, `network`, `matching`, `optim`, `robust`, `sampler`, `evaluation`.
`SelectConfig` (coreset selection) reuses the data, kernel, network and evaluation sections.

Every leaf field is also a command-line flag; its flag name is the field name unless the field's
metadata says otherwise (`kernel.kind` is `--kernel`, `robust.objective` is `--robust`,
`sampler.kind` is `--sampler`). Flag names are unique within a config class, so a config can be
built from, compared as, and saved as a flat dict of flag names (`make`, `replace`, `flat`).

Fields whose default is None take the method's preset (`methods.METHODS[name].defaults`) in
`presets.resolve_config`; the resolved config is what a run saves and reports. This module is a
leaf of the package's imports (it imports `names` only): the method records add their
presets, help and checks (`presets.resolve_config`, `presets.validate_config`,
`presets.preset_help`), so loading a config loads no model or kernel code.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import typing
from typing import Any, Optional

from robust_dd import names

# Flags that may change between a run and its resumption without changing its result.
RESUMABLE = ("steps", "log_every", "checkpoint_every", "eval_during", "data_dir", "eval_seeds",
             "eval_epochs", "eval_batch", "eval_seed_batch", "eval_augment", "baseline_draws",
             "robust_eval", "feature_cluster_epochs", "feature_cluster_cache",
             # Speed knobs of the same computation (tested equal to float tolerance):
             "class_batch", "conv_impl", "grad_chunk",
             # Devices (`parallel.map_groups`: the same set on any count, to float tolerance):
             "mesh",
             # MTT's rematerialisation (the same loss and gradients to float tolerance):
             "remat")
# Choices of string fields (`names`), checked by `validate_fields` and shown by `--help`.
ARCHITECTURES = names.ARCHITECTURES
KERNELS = names.KERNELS
NETS = names.NETWORKS
CONV_IMPLS = names.CONV_IMPLS
PADDINGS = names.PADDINGS
EVAL_NETS = names.EVAL_NETWORKS
METRICS = names.METRICS
HVP_MODES = names.HVP_MODES
OPTIMIZERS = names.OPTIMIZERS
ROBUST = ("none", "cvar")
ROBUST_ON = ("matching", "network", "both")
CLUSTER_FEATURES = names.CLUSTER_FEATURES
CLUSTER_ASSIGNMENTS = ("kmeans", "prototype")
CLUSTER_SCOPES = ("class", "global")
SUBGROUPS = ("none", *names.SUBGROUPS)
SAMPLERS = ("uniform", "importance")
# --init choices and the `select` method each runs (random keeps the class-balanced draw).
INIT_METHODS = {"random": None, "kmeans_centers": "kmeans_centers",
                "sensitivity_kmeans": "sensitivity", "sensitivity_krr": "sensitivity_krr"}


def _field(default, help: str, *, choices=None,  # pylint: disable=redefined-builtin
           flag: Optional[str] = None):
  """A config field: its default, its flag's help text, choices and flag name."""
  return dataclasses.field(default=default,
                           metadata={"help": help, "choices": choices, "flag": flag})


def _section(cls):
  return dataclasses.field(default_factory=cls, metadata={"section": True})


class _Config:
  """Flat access by flag name to a config of sections (mixed into the config dataclasses)."""

  @classmethod
  def make(cls, **fields):
    """A config from flag names (`dataset=...`) and/or whole sections (`data=DataConfig()`)."""
    return cls().replace(**fields)

  def replace(self, **fields):
    """A copy with the given flag-named fields (or whole sections) replaced."""
    where = _flag_paths(type(self))
    unknown = sorted(set(fields) - set(where) - set(_section_names(type(self))))
    if unknown:
      raise ValueError(f"Unknown config fields {unknown} for {type(self).__name__}.")
    # `kernel`, `robust` and `sampler` name both a section and a flag: a dataclass is a section.
    top = {k: v for k, v in fields.items()
           if k in _section_names(type(self)) and dataclasses.is_dataclass(v)}
    by_section: dict[Optional[str], dict[str, Any]] = {}
    for name, value in fields.items():
      if name in where and name not in top:
        section, attr = where[name]
        by_section.setdefault(section, {})[attr] = value
    for section, changes in by_section.items():
      if section is None:
        top.update(changes)
      else:
        top[section] = dataclasses.replace(top.get(section, getattr(self, section)), **changes)
    return dataclasses.replace(self, **top)

  def flat(self) -> dict[str, Any]:
    """{flag name: value} of every leaf field."""
    return {name: self.get(name) for name in _flag_paths(type(self))}

  def get(self, name: str):
    """The value of the field whose flag is `name`."""
    section, attr = _flag_paths(type(self))[name]
    return getattr(self if section is None else getattr(self, section), attr)

  def to_dict(self) -> dict[str, Any]:
    """The nested dict saved as config.json (tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(self)))

  @classmethod
  def from_dict(cls, saved: dict[str, Any]):
    """A config from `to_dict`'s nested dict or from an older flat dict of flag names; keys this
    version does not know are dropped."""
    sections = _section_names(cls)
    flat = {}
    for key, value in saved.items():
      if key in sections and isinstance(value, dict):
        paths = {attr: name for name, (section, attr) in _flag_paths(cls).items()
                 if section == key}
        flat.update({paths[a]: v for a, v in value.items() if a in paths})
      else:
        flat[key] = value
    known = _flag_paths(cls)
    flat = {k: (tuple(v) if isinstance(v, list) else v) for k, v in flat.items() if k in known}
    return cls.make(**flat)


@functools.lru_cache(maxsize=None)
def _section_names(cls) -> tuple[str, ...]:
  return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("section"))


@functools.lru_cache(maxsize=None)
def _flag_paths(cls) -> dict[str, tuple[Optional[str], str]]:
  """{flag name: (section or None, attribute)} of every leaf field of `cls`."""
  paths = {}
  for f in dataclasses.fields(cls):
    if f.metadata.get("section"):
      for g in dataclasses.fields(f.default_factory):
        paths[g.metadata.get("flag") or g.name] = (f.name, g.name)
    else:
      paths[f.metadata.get("flag") or f.name] = (None, f.name)
  return paths


class FlagSpec(typing.NamedTuple):
  """One command-line flag of a config field (what `experiments._flags` defines)."""
  name: str
  kind: str            # bool, int, float, str, enum or list
  default: Any
  help: str
  choices: Optional[tuple[str, ...]]
  section: Optional[str]


def _kind(annotation) -> str:
  args = [a for a in typing.get_args(annotation) if a is not type(None)]
  base = args[0] if args and typing.get_origin(annotation) is typing.Union else annotation
  if typing.get_origin(base) is tuple:
    return "list"
  return {bool: "bool", int: "int", float: "float", str: "str"}[base]


def flag_specs(cls, *, help_suffix=lambda name: "") -> list[FlagSpec]:
  """The flags of every leaf field of `cls`, in field order (top level first); `help_suffix(name)`
  is appended to each help text (the drivers pass `methods.preset_help`)."""
  specs = []
  for f in dataclasses.fields(cls):
    if f.metadata.get("section"):
      continue
    specs.append(_spec(cls, f, None, help_suffix))
  for f in dataclasses.fields(cls):
    if f.metadata.get("section"):
      specs.extend(_spec(f.default_factory, g, f.name, help_suffix)
                   for g in dataclasses.fields(f.default_factory))
  return specs


def _spec(cls, f: dataclasses.Field, section: Optional[str], help_suffix) -> FlagSpec:
  name = f.metadata.get("flag") or f.name
  kind = _kind(typing.get_type_hints(cls)[f.name])
  choices = f.metadata.get("choices")
  if choices is not None:
    kind = "enum" if kind == "str" else kind
    choices = tuple(choices)
  return FlagSpec(name, kind, f.default, f.metadata["help"] + help_suffix(name), choices,
                  section)


# ------------------------------------------------------------------------------- the sections


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The dataset, its split and preprocessing, and the rare-subgroup benchmark."""
  dataset: str = _field(
      "mnist5k", "digits, mnist5k, mnist1d (embedded, no download); mnist, fashion_mnist (IDX "
      "files, else TFDS); cifar10, cifar100, svhn_cropped, or tfds:NAME (TFDS); npz "
      "(--data_path).")
  data_dir: Optional[str] = _field(
      None, "For mnist and fashion_mnist, a directory holding the four IDX files "
      "(train-images-idx3-ubyte[.gz], ...), itself or in a subdirectory named after the dataset "
      "(default: where Debian's dataset packages put them); for TFDS datasets, TFDS's data "
      "directory.")
  data_path: Optional[str] = _field(None, "With --dataset=npz: a .npz with x_train, y_train, "
                                    "x_test, y_test.")
  split_seed: int = _field(0, "Seed of the train/test split we make.")
  zca: bool = _field(False, "ZCA-whiten (fitted on training data) after standardising.")
  zca_reg: float = _field(0.1, "ZCA regularisation (times the mean eigenvalue).")
  subgroup: str = _field("none", "Rare-subgroup benchmark: transform a rare part of every class "
                         "(train) and a larger part (test), reported separately.",
                         choices=SUBGROUPS)
  subgroup_train_fraction: float = _field(0.05, "Fraction of each class's training samples in "
                                          "the subgroup.")
  subgroup_test_fraction: float = _field(0.5, "Fraction of each class's test samples in the "
                                         "subgroup.")


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  """The infinite-width kernel of KIP's loss and of KRR evaluation."""
  arch: str = _field("fc", "Kernel architecture.", choices=ARCHITECTURES)
  kind: Optional[str] = _field(None, "Kernel: the infinite-width ntk or nngp (default: ntk; "
                               "nngp with --random_features, the kernel random features "
                               "estimate), or empirical_ntk: the NTK of a finite network of the "
                               "architecture (--empirical_width) at a random initialisation, "
                               "redrawn every step.", choices=KERNELS + ("empirical_ntk",),
                               flag="kernel")
  depth: int = _field(1, "Hidden layers (fc) or conv blocks (conv).")
  w_std: float = _field(math.sqrt(2.0), "Weight standard deviation.")
  b_std: float = _field(0.1, "Bias standard deviation.")
  pool: bool = _field(False, "conv: AvgPool 2x2 after each block (exact kernel: memory "
                      "O((HW)^2) per pair of images; random features: cheap).")
  diag_reg: float = _field(1e-6, "KRR ridge, relative to the mean kernel diagonal.")
  random_features: int = _field(0, "M > 0: estimate the NNGP by M random features of M/rf_width "
                                "finite networks of the architecture, redrawn every step (RFAD); "
                                "0: the exact kernel.")
  rf_width: int = _field(32, "Random features: width (channels/units and outputs) of each "
                         "network.")
  rf_integrate_readout: bool = _field(True, "Random features: integrate each network's readout "
                                      "layer exactly (its last hidden layer are the features: "
                                      "less noise, same cost); false: the M sampled outputs.")
  empirical_width: int = _field(128, "--kernel=empirical_ntk: width (units/channels) of the "
                                "finite network; KRR evaluation uses one fixed draw.")
  empirical_implementation: str = _field(
      "structured", "--kernel=empirical_ntk: how neural-tangents computes it (all exact): "
      "structured derivatives (fastest KIP step measured on CPU), jacobian contraction, ntvp "
      "(NTK-vector products), or auto (NT picks by XLA's FLOP estimate).",
      choices=("structured", "jacobian", "ntvp", "auto"))
  eval_random_features: Optional[int] = _field(None, "Random features: M of the one fixed draw "
                                               "that KRR evaluation uses (default 4 x "
                                               "--random_features; 0: the exact kernel).")

  @property
  def kernel_kind(self) -> str:
    """'ntk' or 'nngp': `kind`, or its default (nngp with random features)."""
    return self.kind or ("nngp" if self.random_features else "ntk")

  @property
  def eval_features(self) -> int:
    """M of the evaluation kernel's fixed draw (0: exact kernel)."""
    if not self.random_features:
      return 0
    if self.eval_random_features is None:
      return 4 * self.random_features
    return self.eval_random_features


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
  """The finite network of matching methods and of finite-network evaluation."""
  net: str = _field("auto", "Network (auto: ConvNet for images, MLP for flat inputs).",
                    choices=NETS)
  net_depth: int = _field(3, "ConvNet blocks / MLP hidden layers.")
  net_width: int = _field(128, "ConvNet channels / MLP units.")
  conv_impl: str = _field("auto", "ConvNet's convolution: one matmul of patches, lax.conv, "
                          "shifted (lax.conv forward, weight gradients as matmuls of shifted "
                          "slices; no forward-mode autodiff), winograd (Winograd F(2x2,3x3): "
                          "2.25x fewer FLOPs, as matmuls) or winograd4 (F(4x4,3x3): 4x fewer); "
                          "auto: convolutions.auto_conv_impl of the backend (winograd4 on CPU, lax "
                          "on GPU/TPU).", choices=CONV_IMPLS)
  grad_chunk: Optional[int] = _field(None, "Images per chunk of a network gradient over a real "
                                     "batch or the synthetic set (DC/DSA/LCMat real gradients, "
                                     "the inner loop, the evaluator's and feature clustering's "
                                     "training), summed in a scan (0: one batch; default: "
                                     "training.default_chunk, 16 on CPU, where it was measured "
                                     "fastest, none on GPU/TPU).")
  net_padding: str = _field("reference", "reference: pad one-channel inputs as the DC/MTT code "
                            "(ConvNet's first conv by 3: 28x28 maps 32, 16, 8, 4); same: pad by "
                            "1 (28, 14, 7, 3; robust_dd <= 0.3).", choices=PADDINGS)


@dataclasses.dataclass(frozen=True)
class MatchingConfig:
  """Gradient and curvature matching (DC, DSA, LCMat): the outer and inner loops, the distance."""
  outer_loop: Optional[int] = _field(None, "Set updates per fresh network.")
  inner_loop: Optional[int] = _field(None, "Network SGD steps on the set between updates.")
  net_learning_rate: float = _field(0.01, "Inner-loop SGD learning rate.")
  metric: str = _field("ours", "Gradient-matching distance.", choices=METRICS)
  augment: Optional[bool] = _field(None, "Siamese DSA in matching.")
  rho: float = _field(0.05, "LCMat: radius of the adversarial direction.")
  gamma: float = _field(1.0, "LCMat: weight of the curvature term.")
  hvp: str = _field("exact", "LCMat: Hessian-vector product.", choices=HVP_MODES)
  class_batch: Optional[int] = _field(None, "Classes vmapped at once in matching losses (0: all; "
                                      "default: 1 on CPU, where it was measured fastest, all "
                                      "on GPU/TPU). Lower it to bound memory.")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """The optimiser of the synthetic set and the real samples each update sees."""
  optimizer: Optional[str] = _field(None, "Optimiser of the synthetic set.", choices=OPTIMIZERS)
  learning_rate: Optional[float] = _field(None, "Learning rate of the synthetic set.")
  momentum: float = _field(0.5, "SGD momentum of the synthetic set.")
  learn_labels: Optional[bool] = _field(None, "Learn the synthetic labels too.")
  krr_loss: str = _field("mse", "KIP's loss on the KRR predictions: mse, or platt (RFAD: "
                         "cross-entropy of the predictions times a learned scale).",
                         choices=names.KRR_LOSSES)
  real_per_class: Optional[int] = _field(None, "Real samples of each class drawn for every "
                                         "update of the set (robust runs: this times the number "
                                         "of classes, shared equally by the clusters).")
  target_batch: Optional[int] = _field(None, "Deprecated alias: real samples per update in "
                                       "total (= --real_per_class times the number of "
                                       "classes).")


@dataclasses.dataclass(frozen=True)
class RobustConfig:
  """Group robustness (docs/methods.md, group-robust distillation): CVaR over clusters."""
  objective: str = _field("none", "cvar: minimise (1 - robust_weight) * mean + robust_weight * "
                          "CVaR of per-cluster losses.", choices=ROBUST, flag="robust")
  tail_fraction: float = _field(0.2, "CVaR tail fraction alpha in (0, 1] (1: the mean; small: "
                                "the worst cluster).")
  robust_weight: float = _field(0.5, "Weight lambda of CVaR against the mean.")
  robust_on: str = _field("matching", "Where the CVaR acts: matching (the set's per-cluster "
                          "losses), network (matching methods: the network trains on real "
                          "batches with the CVaR over nearest-synthetic-image clusters in its "
                          "embedding, the group-robust DD paper's placement), or both.",
                          choices=ROBUST_ON)
  robust_net_batch: int = _field(256, "--robust_on=network: real images per SGD step of the "
                                 "network (class-balanced).")
  num_clusters: int = _field(5, "k-means clusters, per class with --cluster_scope=class (ignored "
                             "by prototype assignment: IPC per class).")
  cluster_features: str = _field("pixels", "Features clustered: inputs, random ReLU features, or "
                                 "a random network's embedding (redrawn at every reclustering).",
                                 choices=CLUSTER_FEATURES)
  cluster_assignment: str = _field("kmeans", "kmeans, or prototype: each real sample joins its "
                                   "nearest synthetic image.", choices=CLUSTER_ASSIGNMENTS)
  cluster_scope: str = _field("class", "Cluster within each class or globally.",
                              choices=CLUSTER_SCOPES)
  cluster_masses: str = _field("uniform", "Cluster masses p_k in the robust objective: uniform "
                               "(every non-empty cluster counts the same, the paper's) or size "
                               "(its share of the real data: the mean term is then the data's "
                               "average and the CVaR's tail a fraction of the data).",
                               choices=names.CLUSTER_MASSES)
  recluster_every: Optional[int] = _field(None, "Steps between reclusterings (0: once; default "
                                          "1 for prototype, 0 for kmeans).")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Provable subset selection: the initial set and importance-sampled real batches."""
  init: str = _field("random", "Initial synthetic images, per class: random real ones, the real "
                     "ones nearest to k-means centres (k = IPC), or drawn by k-means sensitivity "
                     "or by ridge leverage of the kernel.", choices=tuple(INIT_METHODS))
  init_ridge: float = _field(1e-2, "sensitivity_krr: ridge, relative to the mean kernel "
                             "diagonal.")
  init_rank: int = _field(0, "sensitivity_krr: Nystrom landmarks per class (0: the exact class "
                          "kernel).")
  dedup_quantile: Optional[float] = _field(None, "Sensitivity inits: never draw points closer to "
                                           "a kept one than this quantile of nearest-neighbour "
                                           "distances (default: only exact duplicates are "
                                           "removed).")
  kind: str = _field("uniform", "Real batches: uniform, or importance-sampled by each real "
                     "sample's loss under the synthetic set's model.", choices=SAMPLERS,
                     flag="sampler")
  sampler_every: int = _field(50, "Importance: steps between rescorings.")
  sampler_beta: float = _field(0.5, "Importance: uniform share beta of p = (1 - beta) loss / sum "
                               "+ beta / n_c.")
  sampler_unbiased: bool = _field(False, "Importance: reweight drawn samples by 1 / (n_c p) "
                                  "(self-normalised).")
  sampler_train_steps: int = _field(100, "Importance, matching methods: SGD steps on the "
                                    "synthetic set of the network that scores.")


@dataclasses.dataclass(frozen=True)
class TrajectoryConfig:
  """Trajectory matching (MTT): the expert buffer, the student's unroll, the learnable step."""
  expert_dir: Optional[str] = _field(None, "mtt: a directory written by experiments.experts "
                                     "(its config must match this run's data and network).")
  syn_steps: int = _field(20, "mtt: student SGD steps on the set per update (N).")
  expert_epochs: int = _field(2, "mtt: expert epochs the student's N steps should cover (M).")
  max_start_epoch: int = _field(10, "mtt: start epochs are drawn from [0, this) (T+); needs "
                                "max_start_epoch + expert_epochs <= the experts' epochs.")
  syn_lr_init: float = _field(0.01, "mtt: initial value of the learnable student step size.")
  lr_lr: float = _field(0.01, "mtt: learning rate of the step size's logarithm (SGD, "
                        "--momentum; the paper's 1e-5 on the step size itself is 0.1 on its "
                        "log at a step size of 0.01).")
  syn_batch: int = _field(0, "mtt: synthetic images per student step (0: the whole set).")
  remat: bool = _field(True, "mtt: recompute each student step's activations in the backward "
                       "pass (memory of one step's activations, not N); same gradients.")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """How sets are evaluated: KRR blocks, finite-network training, baselines, robustness."""
  baseline_draws: int = _field(5, "Random subsets for the KRR baseline.")
  kernel_batch: int = _field(250, "Block size of evaluation kernels.")
  eval_seeds: int = _field(3, "Finite-network evaluation seeds (and random subsets of its "
                           "baseline).")
  eval_epochs: int = _field(300, "Epochs of finite-network evaluation.")
  eval_batch: int = _field(256, "Batch size of finite-network evaluation.")
  eval_seed_batch: int = _field(0, "Evaluation networks trained at once in one vmap (0: all "
                                "--eval_seeds; lower it to bound memory). Same networks "
                                "either way.")
  eval_augment: bool = _field(True, "DSA while training evaluation networks.")
  robust_eval: bool = _field(True, "Also report accuracy per test cluster, on the rare subgroup "
                             "and under corruptions (noise, blur, invert).")
  eval_nets: tuple[str, ...] = _field((), "Cross-architecture evaluation: also train these "
                                      "networks on the set (and on random subsets), same "
                                      "schedule: convnet, alexnet, vgg11, resnet18, vit, mlp.")
  feature_cluster_epochs: int = _field(0, "Worst-group evaluation on features as well as pixels: "
                                       "k-means (k = 10) of the test set in the embedding of "
                                       "the --net network trained this many epochs on the "
                                       "whole training set (0: pixel clusters only).")
  feature_cluster_cache: Optional[str] = _field(None, "Directory that keeps feature clusters "
                                                "(one .npz per data, preprocessing and network "
                                                "setting), so runs on the same data train the "
                                                "network once.")


@dataclasses.dataclass(frozen=True)
class DistillConfig(_Config):
  """Everything that determines a distillation run's result (plus run length and logging)."""
  method: str = _field("kip", "Distillation method.", choices=names.METHODS)
  ipc: int = _field(10, "Synthetic images per class.")
  steps: Optional[int] = _field(None, "Steps (kip: updates of the set; matching: outer "
                                "iterations, each with a fresh network).")
  seed: int = _field(0, "Seed of initialisation, batches and baselines.")
  mesh: Optional[str] = _field(None, "Devices on the mesh's data axis: N or data:N (default: all "
                               "local devices); classes, clusters or real rows split over them.")
  log_every: Optional[int] = _field(None, "Steps between progress lines.")
  checkpoint_every: Optional[int] = _field(None, "Steps between checkpoints.")
  eval_during: Optional[bool] = _field(None, "Report test accuracy at each progress line (for "
                                       "monitoring only; nothing is selected on it).")
  data: DataConfig = _section(DataConfig)
  kernel: KernelConfig = _section(KernelConfig)
  network: NetworkConfig = _section(NetworkConfig)
  matching: MatchingConfig = _section(MatchingConfig)
  optim: OptimConfig = _section(OptimConfig)
  robust: RobustConfig = _section(RobustConfig)
  sampler: SamplerConfig = _section(SamplerConfig)
  trajectory: TrajectoryConfig = _section(TrajectoryConfig)
  evaluation: EvalConfig = _section(EvalConfig)


@dataclasses.dataclass(frozen=True)
class ExpertsConfig(_Config):
  """Expert trajectories for MTT: networks trained on the real training set, every epoch's
  parameters kept (`experiments.experts`)."""
  num_experts: int = _field(5, "Experts (networks) to train, in one vmap.")
  epochs: int = _field(15, "Epochs per expert (T); a distillation's --max_start_epoch plus "
                       "--expert_epochs must not exceed it.")
  expert_lr: float = _field(0.01, "Experts' SGD learning rate (constant, as in the MTT code).")
  expert_momentum: float = _field(0.0, "Experts' SGD momentum (MTT code: 0).")
  expert_batch: int = _field(256, "Experts' batch size.")
  expert_augment: bool = _field(True, "Per-sample DSA while training experts.")
  seed: int = _field(0, "Seed of the experts' initialisation and batches.")
  mesh: Optional[str] = _field(None, "Devices on the mesh's data axis: N or data:N (default: all "
                               "local devices); the experts split over them.")
  data: DataConfig = _section(DataConfig)
  network: NetworkConfig = _section(NetworkConfig)


@dataclasses.dataclass(frozen=True)
class SelectConfig(_Config):
  """A coreset selection run: the method, the fraction, and the data, kernel, network and
  evaluation sections shared with distillation."""
  method: str = _field("random", "Selection method.", choices=names.SELECT_METHODS)
  fraction: float = _field(0.01, "Fraction of the training set kept, per class (at least 1 per "
                           "class).")
  seed: int = _field(0, "Seed of the selection (and of evaluation networks).")
  ridge: float = _field(1e-2, "sensitivity_krr: ridge relative to the kernel's mean diagonal.")
  rank: int = _field(0, "sensitivity_krr: Nystrom landmarks (0: exact).")
  dedup_quantile: Optional[float] = _field(None, "Sampling methods: drop near-duplicates closer "
                                           "than this quantile of nearest-neighbour distances.")
  warmup_epochs: int = _field(5, "lcmat: warm-up epochs on all data.")
  num_coords: int = _field(100, "lcmat: Hessian coordinates kept (highest variance).")
  lcmat_eps: float = _field(0.01, "lcmat: weight of the Hessian L1 distance.")
  class_batch: int = _field(0, "lcmat: classes vmapped at once (0: all).")
  evaluators: tuple[str, ...] = _field(("network", "krr"), "network and/or krr.")
  data: DataConfig = _section(DataConfig)
  kernel: KernelConfig = _section(KernelConfig)
  network: NetworkConfig = _section(NetworkConfig)
  evaluation: EvalConfig = _section(EvalConfig)


# ---------------------------------------------------------------------- presets and validation


def _check_choices_and_finite(config) -> None:
  """Every string field with choices holds one of them; every float field is finite."""
  for spec in flag_specs(type(config)):
    value = config.get(spec.name)
    if spec.choices is not None and value is not None and value not in spec.choices:
      raise ValueError(f"Unknown --{spec.name}={value}; choose one of {spec.choices}.")
    if spec.kind == "float" and value is not None and not math.isfinite(value):
      raise ValueError(f"--{spec.name}={value} is not a finite number.")


def _check_mesh(spec) -> None:
  """Raises ValueError for a bad `--mesh`, or one larger than this process's devices. (JAX is
  imported here, when a config is validated, not when this module is loaded.)"""
  from robust_dd import parallel  # pylint: disable=g-import-not-at-top
  parallel.make_mesh(parallel.parse_mesh(spec))


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(message)


def validate_eval(config) -> None:
  """Checks the data, kernel, network and evaluation sections (shared with `SelectConfig`)."""
  _check_choices_and_finite(config)
  e, d = config.evaluation, config.data
  _check(e.eval_seeds >= 1 and e.eval_epochs >= 1 and e.eval_batch >= 1,
         "--eval_seeds, --eval_epochs and --eval_batch must be >= 1.")
  _check(e.eval_seed_batch >= 0, f"--eval_seed_batch must be >= 0 (0: all seeds at once), got "
         f"{e.eval_seed_batch}.")
  _check(e.feature_cluster_epochs >= 0,
         f"--feature_cluster_epochs must be >= 0 (0: off), got {e.feature_cluster_epochs}.")
  _check(e.baseline_draws >= 1 and e.kernel_batch >= 1,
         "--baseline_draws and --kernel_batch must be >= 1.")
  k = config.kernel
  _check(k.diag_reg >= 0 and k.depth >= 1, "--diag_reg must be non-negative and --depth >= 1.")
  _check(k.random_features >= 0 and k.rf_width >= 1 and k.eval_features >= 0,
         "--random_features and --eval_random_features must be >= 0, --rf_width >= 1.")
  for name, m in (("random_features", k.random_features), ("eval_random_features",
                                                           k.eval_features)):
    _check(m % k.rf_width == 0, f"--{name}={m} must be a multiple of --rf_width={k.rf_width} "
           "(M/rf_width networks of rf_width outputs each).")
  _check(not (k.random_features and k.kernel_kind == "empirical_ntk"),
         "--kernel=empirical_ntk is a finite network's exact NTK; drop --random_features.")
  _check(k.empirical_width >= 1, "--empirical_width must be >= 1.")
  _check(not (k.random_features and k.kernel_kind == "ntk"),
         "--random_features estimates the NNGP kernel; drop --kernel=ntk (or pass --kernel=nngp).")
  _check(config.network.net_depth >= 1 and config.network.net_width >= 1,
         "--net_depth and --net_width must be >= 1.")
  unknown = [n for n in e.eval_nets if n not in EVAL_NETS]
  _check(not unknown and len(set(e.eval_nets)) == len(e.eval_nets),
         f"--eval_nets must name distinct networks of {EVAL_NETS}; got {','.join(e.eval_nets)}.")
  _check(0 <= d.subgroup_train_fraction <= 1 and 0 <= d.subgroup_test_fraction <= 1,
         "--subgroup_train_fraction and --subgroup_test_fraction must be in [0, 1].")


def validate_fields(config: DistillConfig) -> None:
  """Raises ValueError, saying what to change, for field values that cannot run whatever the
  method (`presets.validate_config` adds the method's own checks)."""
  validate_eval(config)
  m, o, r, s = config.matching, config.optim, config.robust, config.sampler
  _check(config.ipc >= 1, f"--ipc must be at least 1, got {config.ipc}.")
  _check(config.steps is None or config.steps >= 0, f"--steps must be >= 0, got {config.steps}.")
  _check(o.learning_rate is None or o.learning_rate > 0, "--learning_rate must be positive.")
  for name in ("real_per_class", "target_batch", "log_every", "checkpoint_every"):
    value = config.get(name)
    _check(value is None or value >= (name in ("real_per_class", "target_batch")),
           f"--{name} must be >= {int(name in ('real_per_class', 'target_batch'))}, got {value}.")
  for name in ("outer_loop", "inner_loop"):
    value = config.get(name)
    _check(value is None or value >= 0, f"--{name} must be >= 0, got {value}.")
  _check_mesh(config.mesh)
  _check(config.network.grad_chunk is None or config.network.grad_chunk >= 0,
         f"--grad_chunk must be >= 0 (0: no chunks), got {config.network.grad_chunk}.")
  _check(m.class_batch is None or m.class_batch >= 0,
         f"--class_batch must be >= 0 (0: all classes at once), got "
         f"{m.class_batch}.")
  _check(m.rho > 0 and m.gamma >= 0 and m.net_learning_rate > 0,
         "--rho and --net_learning_rate must be positive, --gamma non-negative.")
  _check(0 < r.tail_fraction <= 1 and 0 <= r.robust_weight <= 1,
         f"--tail_fraction must be in (0, 1] and --robust_weight in [0, 1], got "
         f"{r.tail_fraction} and {r.robust_weight}.")
  _check(r.num_clusters >= 1, f"--num_clusters must be >= 1, got {r.num_clusters}.")
  _check(r.robust_on == "matching" or r.objective != "none",
         f"--robust_on={r.robust_on} places the robust objective; pass --robust=cvar with it.")
  _check(r.robust_net_batch >= 1, f"--robust_net_batch must be >= 1, got {r.robust_net_batch}.")
  _check(s.sampler_every >= 1 and 0 <= s.sampler_beta <= 1,
         f"--sampler_every must be >= 1 and --sampler_beta in [0, 1], got {s.sampler_every} and "
         f"{s.sampler_beta}.")
  _check(s.sampler_train_steps >= 0 and s.init_ridge > 0 and s.init_rank >= 0,
         "--sampler_train_steps and --init_rank must be >= 0, --init_ridge > 0.")
  _check(s.dedup_quantile is None or 0 <= s.dedup_quantile <= 1,
         f"--dedup_quantile must be in [0, 1], got {s.dedup_quantile}.")
  t = config.trajectory
  _check(t.syn_steps >= 1 and t.expert_epochs >= 1 and t.max_start_epoch >= 1,
         "--syn_steps, --expert_epochs and --max_start_epoch must be >= 1.")
  _check(t.syn_lr_init > 0 and t.lr_lr >= 0 and t.syn_batch >= 0,
         "--syn_lr_init must be positive, --lr_lr and --syn_batch >= 0.")
  every = r.recluster_every
  _check(every is None or every >= 0,
         f"--recluster_every must be >= 0 (0: cluster once), got {every}.")
  _check(not (every and every > 1 and config.checkpoint_every
              and config.checkpoint_every % every),
         f"--checkpoint_every={config.checkpoint_every} must be a multiple of "
         f"--recluster_every={every}, so that a resumed run reclusters exactly as an "
         "uninterrupted one.")


def validate_select_config(config: SelectConfig) -> None:
  """Raises ValueError for coreset-selection settings that cannot run."""
  validate_eval(config)
  _check(0 < config.fraction <= 1, f"--fraction must be in (0, 1], got {config.fraction}.")
  _check(config.warmup_epochs >= 1 and config.num_coords >= 1 and config.lcmat_eps >= 0,
         "--warmup_epochs and --num_coords must be >= 1, --lcmat_eps >= 0.")
  _check(config.ridge > 0 and config.rank >= 0 and config.class_batch >= 0,
         "--ridge must be positive, --rank and --class_batch >= 0.")
  unknown = set(config.evaluators) - {"network", "krr"}
  _check(not unknown and bool(config.evaluators),
         f"--evaluators must be a non-empty subset of network,krr; got "
         f"{','.join(config.evaluators)}.")


def validate_experts_config(config: ExpertsConfig) -> None:
  """Raises ValueError for expert-training settings that cannot run."""
  _check_choices_and_finite(config)
  _check(config.num_experts >= 1 and config.epochs >= 1 and config.expert_batch >= 1,
         "--num_experts, --epochs and --expert_batch must be >= 1.")
  _check(config.expert_lr > 0 and config.expert_momentum >= 0,
         "--expert_lr must be positive and --expert_momentum >= 0.")
  _check(config.network.net_depth >= 1 and config.network.net_width >= 1,
         "--net_depth and --net_width must be >= 1.")
  _check_mesh(config.mesh)


# ------------------------------------------------------------------------------------ workdirs


# The fields a re-evaluation of a saved run may change (`experiment.evaluate_workdir`).
EVAL_OVERRIDES = ("net", "net_depth", "net_width", "net_padding", "eval_nets", "eval_seeds",
                  "baseline_draws", "eval_epochs",
                  "eval_batch", "eval_seed_batch", "eval_augment", "robust_eval",
                  "feature_cluster_epochs", "feature_cluster_cache", "eval_random_features",
                  "kernel_batch")


def check_workdir(workdir: str, config) -> None:
  """Raises ValueError if `workdir` cannot be written, or holds a run (config.json) of a
  different config (fields in RESUMABLE may differ). Creates nothing."""
  existing = workdir
  while existing and not os.path.exists(existing):
    existing = os.path.dirname(os.path.abspath(existing))
  if os.path.exists(existing) and not os.path.isdir(existing):
    raise ValueError(f"--workdir={workdir}: {existing} is a file, not a directory.")
  if not os.access(existing or ".", os.W_OK | os.X_OK):
    raise ValueError(f"--workdir={workdir} is not writable ({existing or '.'} does not allow it); "
                     "choose another --workdir.")
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    saved = type(config).from_dict(json.load(f)).flat()
  current = type(config).from_dict(config.to_dict()).flat()
  diffs = sorted(k for k in set(saved) | set(current)
                 if k not in RESUMABLE and saved.get(k) != current.get(k))
  if diffs:
    details = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {current.get(k)!r}" for k in diffs)
    raise ValueError(f"--workdir={workdir} holds a run with a different config ({details}). "
                     "Use a new --workdir, or delete that one to start over.")
