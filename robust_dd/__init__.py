"""robust_dd: dataset distillation in JAX (KIP, gradient matching, robust and provable variants).

Public names, grouped as in `__all__`, are loaded on first use (PEP 562), so `import robust_dd`
is cheap and a submodule that needs neural-tangents or Flax is imported only when one of its
names is touched. `robust_dd.<module>` (e.g. `robust_dd.models`) also works.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.8.0"

# group -> module -> the public names it defines, grouped as in docs/library.md.
_GROUPS: dict[str, dict[str, tuple[str, ...]]] = {
    "losses": {
        "krr": ("krr_loss", "krr_loss_jit", "kip_loss", "kip_loss_jit", "krr_predict",
                "make_krr_predictor", "krr_sample_losses", "kip_cluster_losses"),
        "matching": ("gradient_match_distance", "gradient_match_class_loss", "gradient_match_loss",
                     "gradient_match_loss_jit", "per_class_losses", "per_cluster_match_losses",
                     "per_class_cluster_losses"),
        "curvature": ("curvature_match_class_loss", "curvature_match_loss",
                      "curvature_match_loss_jit", "hvp", "hvp_finite_difference"),
        "trajectory": ("mtt_loss", "unrolled_sgd", "trajectory_distance", "train_experts"),
    },
    "kernels": {
        "kernels": ("make_kernel_fn", "make_architecture", "kernel_matrix", "feature_matrix"),
        "random_features": ("RandomFeatureKernel",),
        "empirical_ntk": ("EmpiricalNTKKernel",),
    },
    "networks": {
        "models": ("ConvNet", "MLP", "make_network"),
        "augment": ("dsa",),
        "training": ("train_network",),
    },
    "robustness": {
        "risk": ("cvar", "cvar_jit", "robust_objective", "robust_objective_jit", "worst_group",
                 "per_cluster_losses", "cluster_index_table", "sample_cluster_batch"),
        "cluster": ("kmeans", "kmeans_per_class", "nearest_prototype"),
        "data": ("make_rare_subgroup",),
        "evaluate": ("corrupt", "robustness_metrics"),
    },
    "selection": {
        "sensitivity": ("kmeans_sensitivity", "ridge_leverage_scores", "nystrom_leverage_scores",
                        "nystrom_features", "feature_leverage_scores", "weighted_sample",
                        "dedup_mask", "importance_probabilities"),
        "select": ("select_indices", "facility_location", "last_layer_grad_hessian"),
    },
    "data": {
        "data": ("Dataset", "load_dataset", "fit_preprocessing", "apply_preprocessing",
                 "invert_preprocessing", "Preprocessing", "one_hot_centered",
                 "class_index_table", "sample_class_balanced"),
    },
    "evaluation": {
        "evaluate": ("krr_predictions", "krr_accuracy", "network_predictions",
                     "network_accuracies", "network_subset_predictions", "random_subset_indices"),
    },
    "loop": {
        "distill": ("DistillState", "Network", "init_state", "make_optimizer", "make_step",
                    "run_distillation", "class_balanced_batch", "cluster_batch",
                    "importance_rescorer"),
        "methods": ("METHODS", "Method", "build_step", "kip_loss_fn", "matching_loss_fn",
                    "robust_kip_loss_fn", "robust_matching_loss_fn", "inner_loop_network"),
        "parallel": ("make_mesh",),
        "io": ("Checkpoints", "MetricWriter", "read_events"),
        "progress": ("Progress",),
    },
    "experiments": {
        "config": ("DistillConfig", "SelectConfig", "ExpertsConfig"),
        "presets": ("resolve_config", "validate_config"),
        "experiment": ("distill_experiment", "evaluate_workdir", "export_workdir"),
        "coreset": ("select_experiment",),
        "experts": ("experts_experiment",),
        "expert_buffer": ("load_experts",),
    },
}
_WHERE = {name: module for group in _GROUPS.values() for module, names in group.items()
          for name in names}
_SUBMODULES = ("augment", "cluster", "config", "convolutions", "coreset", "curvature", "data",
               "distill", "empirical_ntk", "evaluate", "experiment", "expert_buffer", "experts",
               "ghost", "groups", "interrupt", "io", "kernels", "krr", "matching", "methods",
               "models", "names", "parallel", "precision", "presets", "progress",
               "random_features", "reporting", "risk", "select", "sensitivity", "training",
               "trajectory")

__all__ = [name for group in _GROUPS.values() for names in group.values() for name in names]


def __getattr__(name: str) -> Any:
  if name in _WHERE:
    value = getattr(importlib.import_module(f"robust_dd.{_WHERE[name]}"), name)
    globals()[name] = value  # Later look-ups skip this function.
    return value
  if name in _SUBMODULES:
    return importlib.import_module(f"robust_dd.{name}")
  raise AttributeError(f"module 'robust_dd' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
