"""robust_dd: dataset distillation in JAX (KIP, gradient matching, robust and provable variants).

Public names, grouped as in `__all__`, are loaded on first use (PEP 562), so `import robust_dd`
is cheap and a submodule that needs neural-tangents or Flax is imported only when one of its
names is touched. `robust_dd.<module>` (e.g. `robust_dd.models`) also works.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

# name -> module that defines it, grouped as in the README's "Using the library".
_GROUPS: dict[str, dict[str, str]] = {
    "losses": {
        "krr_loss": "krr", "krr_loss_jit": "krr", "kip_loss": "krr", "kip_loss_jit": "krr",
        "krr_predict": "krr", "make_krr_predictor": "krr", "krr_sample_losses": "krr",
        "kip_cluster_losses": "krr",
        "gradient_match_distance": "matching", "gradient_match_class_loss": "matching",
        "gradient_match_loss": "matching", "gradient_match_loss_jit": "matching",
        "per_class_losses": "matching", "per_cluster_match_losses": "matching",
        "curvature_match_class_loss": "curvature", "curvature_match_loss": "curvature",
        "curvature_match_loss_jit": "curvature", "hvp": "curvature",
        "hvp_finite_difference": "curvature",
    },
    "kernels": {
        "make_kernel_fn": "kernels", "make_architecture": "kernels", "kernel_matrix": "kernels",
    },
    "networks": {
        "ConvNet": "models", "MLP": "models", "make_network": "models", "dsa": "augment",
        "train_network": "training",
    },
    "robustness": {
        "cvar": "risk", "cvar_jit": "risk", "robust_objective": "risk",
        "robust_objective_jit": "risk", "worst_group": "risk", "per_cluster_losses": "risk",
        "cluster_index_table": "risk", "sample_cluster_batch": "risk", "kmeans": "cluster",
        "kmeans_per_class": "cluster", "nearest_prototype": "cluster",
        "make_rare_subgroup": "data", "corrupt": "evaluate", "robustness_metrics": "evaluate",
    },
    "selection": {
        "kmeans_sensitivity": "sensitivity", "ridge_leverage_scores": "sensitivity",
        "nystrom_leverage_scores": "sensitivity", "nystrom_features": "sensitivity",
        "feature_leverage_scores": "sensitivity", "weighted_sample": "sensitivity",
        "dedup_mask": "sensitivity", "importance_probabilities": "sensitivity",
        "select_indices": "select", "facility_location": "select",
        "last_layer_grad_hessian": "select",
    },
    "data": {
        "Dataset": "data", "load_dataset": "data", "fit_preprocessing": "data",
        "apply_preprocessing": "data", "Preprocessing": "data", "one_hot_centered": "data",
        "class_index_table": "data", "sample_class_balanced": "data",
    },
    "evaluation": {
        "krr_predictions": "evaluate", "krr_accuracy": "evaluate",
        "network_predictions": "evaluate", "network_accuracies": "evaluate",
        "random_subset_indices": "evaluate",
    },
    "loop": {
        "DistillState": "distill", "Network": "distill", "init_state": "distill",
        "make_optimizer": "distill", "make_step": "distill", "run_distillation": "distill",
        "class_balanced_batch": "distill", "cluster_batch": "distill",
        "importance_rescorer": "distill",
        "METHODS": "methods", "Method": "methods", "build_step": "methods",
        "kip_loss_fn": "methods", "matching_loss_fn": "methods",
        "robust_kip_loss_fn": "methods", "robust_matching_loss_fn": "methods",
        "inner_loop_network": "methods",
    },
    "experiments": {
        "DistillConfig": "config", "SelectConfig": "config", "resolve_config": "config",
        "validate_config": "config", "distill_experiment": "experiment",
        "evaluate_workdir": "experiment", "select_experiment": "coreset",
    },
}
_WHERE = {name: module for group in _GROUPS.values() for name, module in group.items()}
_SUBMODULES = ("augment", "cluster", "config", "coreset", "curvature", "data", "distill",
               "evaluate", "experiment", "io", "kernels", "krr", "matching", "methods",
               "models", "reporting", "risk", "select", "sensitivity", "training")

__all__ = [name for group in _GROUPS.values() for name in group]


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
