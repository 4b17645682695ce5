"""Kernel ridge regression and the KIP loss: arrays in, arrays out.

    ŷ_t = K_ts (K_ss + λ·tr(K_ss)/m · I)⁻¹ Y_s,     L = ½ · mean_t ‖Y_t − ŷ_t‖²     (loss='mse')

λ is `diag_reg`, scaled by the mean diagonal of K_ss as neural-tangents' `diag_reg` does
(`diag_reg_absolute_scale=False`). The solve is a Cholesky factorisation, never an inverse.
With loss='platt' (RFAD's Platt scaling) the loss is instead the cross-entropy of
softmax(eˢ · ŷ_t) against the target's class (argmax Y_t), s a learned log-scale.

References:
  T. Nguyen, Z. Chen, J. Lee. Dataset Meta-Learning from Kernel Ridge-Regression. ICLR 2021.
  N. Loo, R. Hasani, A. Amini, D. Rus. Efficient Dataset Distillation using Random Feature
  Approximation. NeurIPS 2022 (Platt scaling).
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from robust_dd import names
from robust_dd import parallel
from robust_dd import precision
from robust_dd import risk

LOSSES = names.KRR_LOSSES


def regularize(k_ss: jax.Array, *, diag_reg: float) -> jax.Array:
  """K + diag_reg · tr(K)/m · I (neural-tangents' relative `diag_reg`)."""
  m = k_ss.shape[0]
  return k_ss + diag_reg * jnp.trace(k_ss) / m * jnp.eye(m, dtype=k_ss.dtype)


@precision.full_precision
def make_krr_predictor(k_ss: jax.Array, y_s: jax.Array, *, diag_reg: float = 1e-6
                       ) -> Callable[[jax.Array], jax.Array]:
  """Factors K_ss once and returns `predict(k_ts) -> (n_t, C)` predictions."""
  factor = jax.scipy.linalg.cho_factor(regularize(k_ss, diag_reg=diag_reg), lower=True)
  alpha = jax.scipy.linalg.cho_solve(factor, y_s)

  def predict(k_ts: jax.Array) -> jax.Array:
    return k_ts @ alpha

  return precision.full_precision(predict)


@precision.full_precision
def make_feature_krr_predictor(phi_s: jax.Array, y_s: jax.Array, *, diag_reg: float = 1e-6
                               ) -> Callable[[jax.Array], jax.Array]:
  """KRR with K = Φ Φᵀ from the support features Φ_s (m, M): `predict(phi_t) -> (n_t, C)`.

  The same predictor as `make_krr_predictor(Φ_s Φ_sᵀ, ...)` (ridge λ = diag_reg · tr(Φ_s Φ_sᵀ)/m),
  solved in whichever space is smaller: the m × m dual system when m ≤ M, else the M × M primal
  one, Φ_t (Φ_sᵀ Φ_s + λI)⁻¹ Φ_sᵀ Y. Both go through the QR factorisation of Φ stacked on √λ I
  (a ridge least-squares solve) to primal weights W (M, C), never through the Gram matrix, whose
  condition number is the square of Φ's: a random-feature kernel is low-rank (rank ≤ M; dead or
  constant features lower it further), and a float32 Cholesky of its Gram matrix with a relative
  ridge of 1e-6 returns NaN (ConvNet-3 features of 500 support images, one network), and dual
  weights of size 1/λ lose the predictions to cancellation.
  """
  phi_s = jnp.asarray(phi_s)
  m, num_features = phi_s.shape
  lam = diag_reg * jnp.sum(phi_s ** 2) / m
  root = jnp.sqrt(lam).astype(phi_s.dtype)
  solve = jax.scipy.linalg.solve_triangular
  if m <= num_features:  # [Φ_sᵀ; √λ I] = QR: Φ_sᵀ = Q₁R, so W = Φ_sᵀ(RᵀR)⁻¹Y = Q₁ R⁻ᵀ Y.
    q, r = jnp.linalg.qr(jnp.concatenate([phi_s.T, root * jnp.eye(m, dtype=phi_s.dtype)]))
    weights = q[:num_features] @ solve(r, y_s, trans="T", lower=False)
  else:  # [Φ_s; √λ I] = QR: Φ_s = Q₁R, so W = (RᵀR)⁻¹Φ_sᵀY = R⁻¹ Q₁ᵀ Y.
    q, r = jnp.linalg.qr(jnp.concatenate([phi_s, root * jnp.eye(num_features,
                                                                 dtype=phi_s.dtype)]))
    weights = solve(r, q[:m].T @ y_s, lower=False)
  return precision.full_precision(lambda phi_t: phi_t @ weights)


def make_predictor(kernel_fn: Callable[[jax.Array, jax.Array], jax.Array], support_images,
                   support_labels, *, diag_reg: float = 1e-6) -> Callable[[jax.Array], jax.Array]:
  """`predict(target_images) -> (n_t, C)`, the KRR predictor of a support set: through the
  kernel's features when it has them (each image's features computed once), else through
  k(targets, support)."""
  features = getattr(kernel_fn, "features", None)
  if features is not None:
    predict = make_feature_krr_predictor(features(support_images), support_labels,
                                         diag_reg=diag_reg)
    return lambda x: predict(features(x))
  predict = make_krr_predictor(kernel_fn(support_images, support_images), support_labels,
                               diag_reg=diag_reg)
  return lambda x: predict(kernel_fn(x, support_images))


@precision.full_precision
def krr_predict(k_ss: jax.Array, k_ts: jax.Array, y_s: jax.Array, *, diag_reg: float = 1e-6
                ) -> jax.Array:
  """KRR predictions for targets with cross-kernel k_ts (n_t, m)."""
  return make_krr_predictor(k_ss, y_s, diag_reg=diag_reg)(k_ts)


@precision.full_precision
def krr_loss(k_ss: jax.Array, k_ts: jax.Array, y_s: jax.Array, y_t: jax.Array, *,
             diag_reg: float = 1e-6, target_weights: Optional[jax.Array] = None,
             loss: str = "mse", log_scale: jax.Array | float = 0.0) -> jax.Array:
  """The mean over targets of `target_losses` of the KRR predictor fitted on the support set
  (with `target_weights` (n_t,): the weighted mean Σ w_t ℓ_t / Σ w_t)."""
  return weighted_mean(target_losses(y_t, krr_predict(k_ss, k_ts, y_s, diag_reg=diag_reg),
                                     loss=loss, log_scale=log_scale), target_weights)


def target_losses(y_t: jax.Array, y_hat: jax.Array, *, loss: str = "mse",
                  log_scale: jax.Array | float = 0.0) -> jax.Array:
  """(n_t,) per-target losses: ½‖y_t − ŷ_t‖² ('mse'), or RFAD's Platt-scaled cross-entropy
  −log softmax(eˢ ŷ_t)[argmax y_t] ('platt', s = `log_scale`)."""
  if loss == "mse":
    return 0.5 * jnp.sum((y_t - y_hat) ** 2, axis=-1)
  if loss == "platt":
    return optax.softmax_cross_entropy_with_integer_labels(
        jnp.exp(log_scale).astype(y_hat.dtype) * y_hat, jnp.argmax(y_t, axis=-1))
  raise ValueError(f"Unknown KRR loss {loss!r}; choose one of {LOSSES}.")


def weighted_mean(losses: jax.Array, weights: Optional[jax.Array] = None) -> jax.Array:
  """mean(losses), or Σ w ℓ / Σ w with `weights`."""
  if weights is None:
    return jnp.mean(losses)
  w = jnp.asarray(weights, losses.dtype)
  return jnp.sum(w * losses) / jnp.maximum(jnp.sum(w), 1e-12)


@precision.full_precision
def krr_sample_losses(support_images: jax.Array, support_labels: jax.Array,
                      target_images: jax.Array, target_labels: jax.Array, *,
                      kernel_fn: Callable[[jax.Array, jax.Array], jax.Array],
                      diag_reg: float = 1e-6, batch_size: int = 500, loss: str = "mse",
                      log_scale: jax.Array | float = 0.0) -> jax.Array:
  """(n_t,) per-target losses (`target_losses`) of the KRR predictor of the support set, the
  cross kernel computed `batch_size` targets at a time (`lax.map`; jittable)."""
  predict = make_predictor(kernel_fn, support_images, support_labels, diag_reg=diag_reg)
  preds = parallel.map_batches(predict, target_images, batch_size=batch_size)
  return target_losses(target_labels, preds, loss=loss, log_scale=log_scale)


@precision.full_precision
def kip_cluster_losses(support_images: jax.Array, support_labels: jax.Array,
                       target_images: jax.Array, target_labels: jax.Array, mask: jax.Array, *,
                       kernel_fn: Callable[[jax.Array, jax.Array], jax.Array],
                       diag_reg: float = 1e-6, loss: str = "mse",
                       log_scale: jax.Array | float = 0.0) -> jax.Array:
  """The (K,) KIP losses of one support set on K padded clusters of real targets.

  K_ss is factored once; cluster k's loss is Σ_t mask_kt ℓ_kt / Σ_t mask_kt (0 for an empty
  cluster; ℓ from `target_losses`), computed for all clusters with one `vmap` (`robust_dd.risk`).

  Args:
    target_images: (K, S, ...) padded real targets of each cluster; target_labels: (K, S, C).
    mask: (K, S) bool (or weights) marking real rows.
  """
  predict = make_predictor(kernel_fn, support_images, support_labels, diag_reg=diag_reg)
  preds = predict(target_images.reshape(-1, *target_images.shape[2:]))
  preds = preds.reshape(*target_images.shape[:2], -1)

  def cluster_loss(_, batch, mask):
    cluster_preds, labels = batch
    return weighted_mean(target_losses(labels, cluster_preds, loss=loss, log_scale=log_scale),
                         mask.astype(cluster_preds.dtype))

  return risk.map_clusters(cluster_loss, None, (preds, target_labels), mask)


@precision.full_precision
def kip_loss(support_images: jax.Array, support_labels: jax.Array, target_images: jax.Array,
             target_labels: jax.Array, *, kernel_fn: Callable[[jax.Array, jax.Array], jax.Array],
             diag_reg: float = 1e-6, target_weights: Optional[jax.Array] = None,
             loss: str = "mse", log_scale: jax.Array | float = 0.0) -> jax.Array:
  """The KIP loss of a support set (images, labels) on a batch of real targets.

  Args:
    support_images: (m, ...) synthetic images; support_labels: (m, C).
    target_images: (b, ...) real images; target_labels: (b, C).
    kernel_fn: `k(x1, x2) -> (n1, n2)`, e.g. from `robust_dd.make_kernel_fn`.
    diag_reg: relative ridge (see module docstring).
    target_weights: optional (b,) weights of the targets (e.g. importance weights).
    loss: 'mse' (KIP) or 'platt' (RFAD's Platt-scaled cross-entropy; `target_losses`).
    log_scale: 'platt': the log of the scale of the predictions (learned with the set).
  """
  predict = make_predictor(kernel_fn, support_images, support_labels, diag_reg=diag_reg)
  return weighted_mean(target_losses(target_labels, predict(target_images), loss=loss,
                                     log_scale=log_scale), target_weights)


# Jitted aliases for users: only the kernel function is static; diag_reg stays traced, so a new
# value does not recompile.
krr_loss_jit = jax.jit(krr_loss)
kip_loss_jit = jax.jit(kip_loss, static_argnames=("kernel_fn",))
