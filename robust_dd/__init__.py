"""robust_dd: dataset distillation in JAX (KIP, gradient matching, robust and provable variants)."""

from robust_dd.augment import dsa
from robust_dd.curvature import curvature_match_loss
from robust_dd.curvature import curvature_match_loss_jit
from robust_dd.curvature import hvp
from robust_dd.curvature import hvp_finite_difference
from robust_dd.data import Dataset
from robust_dd.data import Preprocessing
from robust_dd.data import apply_preprocessing
from robust_dd.data import class_index_table
from robust_dd.data import fit_preprocessing
from robust_dd.data import load_dataset
from robust_dd.data import one_hot_centered
from robust_dd.data import sample_class_balanced
from robust_dd.distill import DistillConfig
from robust_dd.distill import DistillState
from robust_dd.distill import distill_experiment
from robust_dd.distill import evaluate_workdir
from robust_dd.distill import init_state
from robust_dd.distill import kip_loss_fn
from robust_dd.distill import make_optimizer
from robust_dd.distill import make_step
from robust_dd.distill import run_distillation
from robust_dd.evaluate import krr_accuracy
from robust_dd.evaluate import krr_predictions
from robust_dd.evaluate import network_accuracies
from robust_dd.evaluate import random_subset_indices
from robust_dd.kernels import kernel_matrix
from robust_dd.kernels import make_architecture
from robust_dd.kernels import make_kernel_fn
from robust_dd.krr import kip_loss
from robust_dd.krr import kip_loss_jit
from robust_dd.krr import krr_loss
from robust_dd.krr import krr_loss_jit
from robust_dd.krr import krr_predict
from robust_dd.krr import make_krr_predictor
from robust_dd.matching import gradient_match_distance
from robust_dd.matching import gradient_match_loss
from robust_dd.matching import gradient_match_loss_jit
from robust_dd.matching import per_class_losses
from robust_dd.models import ConvNet
from robust_dd.models import MLP
from robust_dd.models import make_network
from robust_dd.training import train_network

__version__ = "0.1.0"
