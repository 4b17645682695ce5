"""Makes neural-tangents 0.6.5 importable and usable on current JAX.

neural-tangents (NT) 0.6.5 is the last release (December 2023). On JAX >= 0.6 it fails at import
time. This module is the ONLY place in `robust_dd` that knows why; `robust_dd.kernels` calls
`apply()` before NT is first imported. Each adaptation fills in something that is missing and leaves
alone anything that exists, so on an old stack (jax 0.4.x) `apply()` changes nothing.

The adaptations (see `shared/docs/DEPENDENCIES.md` for how they were found):

1. `jax.core.{Jaxpr, JaxprEqn, Literal, Var, Primitive, ClosedJaxpr}` were moved to
   `jax.extend.core`; NT imports them from `jax.core`. They are added back to `jax.core` as aliases.
   `jax.core.{get_aval, lattice_join, DShapedArray}` (used only by NT's structured-derivatives NTK
   with `jax_enable_checks` on, and in a type test) get aliases / an empty placeholder class.
2. The module `jax.util` was removed; NT imports `safe_map` and `safe_zip` from it. A small module
   with those two names (from `jax._src.util`) is registered as `jax.util` only if the import fails.
3. NT registers rules for `jax.interpreters.ad.zeros_like_p`, which no longer exists. A placeholder
   primitive of that name is supplied; no JAX computation ever emits it, so its rules never fire.
4. `neural_tangents/__init__.py` imports `neural_tangents.experimental`, which imports TensorFlow
   and tf2jax (seconds of import time for a module robust_dd never uses). A lazy stand-in takes its
   place: the first use of one of its names imports the real module, or, when TensorFlow or
   tf2jax is missing, raises an `ImportError` that says what to install.
5. `nt.predict.max_learning_rate` calls `scipy.linalg.eigvalsh(..., eigvals=...)`, an argument SciPy
   removed (now `subset_by_index`). After import, NT's predict module gets a SciPy proxy that
   translates that one argument; nothing outside NT's predict module sees it.

6. NT's structured-derivatives empirical NTK (`implementation=3`, and `AUTO`, which may choose it)
   walks JAX's internal autodiff, whose signatures changed; it fails deep inside JAX. The public
   `nt.empirical_ntk_fn` / `nt.empirical_kernel_fn` are wrapped to refuse those two with a clear
   `NotImplementedError`; implementations 1 (Jacobian contraction, NT's default) and 2 (NTK-vector
   products) work unchanged.

Public: `apply()` (idempotent) and `import_neural_tangents()` returning the `neural_tangents`
module.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

_APPLIED = False
_TF_ONLY_MESSAGE = (
    "neural_tangents.experimental needs TensorFlow and tf2jax, which are not installed. "
    "Install them (`pip install tensorflow tf2jax`) to use it; the rest of neural-tangents "
    "(stax kernels, nt.batch, nt.predict, nt.empirical_*) works without them.")


def _module_available(name: str) -> bool:
  if name in sys.modules:
    return sys.modules[name] is not None
  try:
    return importlib.util.find_spec(name) is not None
  except (ImportError, ValueError):
    return False


def _alias_missing(module: types.ModuleType, names: dict[str, object]) -> list[str]:
  """Sets `module.name = value` for each name the module lacks. Returns the names set."""
  added = []
  for name, value in names.items():
    if value is None:
      continue
    try:
      getattr(module, name)
      continue
    except AttributeError:
      pass
    setattr(module, name, value)
    added.append(name)
  return added


def _patch_jax_core() -> list[str]:
  import jax.core
  import jax.extend.core as extend_core

  from jax._src import core as src_core

  class DShapedArray:  # pylint: disable=too-few-public-methods
    """Placeholder: dynamic shapes were removed from JAX, so no aval is of this type."""

  def lattice_join(a, b):  # Only reached with jax_enable_checks; avals must already agree.
    if a.strip_weak_type() != b.strip_weak_type():
      raise TypeError(f"Incompatible avals {a} and {b}.")
    return a

  names = {n: getattr(extend_core, n, None)
           for n in ("Jaxpr", "JaxprEqn", "Literal", "Var", "Primitive", "ClosedJaxpr")}
  names["get_aval"] = getattr(src_core, "get_aval", None)
  names["lattice_join"] = getattr(src_core, "lattice_join", lattice_join)
  names["DShapedArray"] = getattr(src_core, "DShapedArray", DShapedArray)
  added = _alias_missing(jax.core, names)
  return [f"jax.core.{n}" for n in added]


def _patch_jax_util() -> list[str]:
  try:
    importlib.import_module("jax.util")
    return []
  except ImportError:
    pass
  from jax._src import util as src_util
  shim = types.ModuleType("jax.util", "robust_dd._nt_compat: the names NT needs from jax.util.")
  shim.safe_map = src_util.safe_map
  shim.safe_zip = src_util.safe_zip
  sys.modules["jax.util"] = shim
  return ["jax.util"]


def _patch_zeros_like_p() -> list[str]:
  import jax.extend.core as extend_core
  from jax.interpreters import ad
  if hasattr(ad, "zeros_like_p"):
    return []
  ad.zeros_like_p = extend_core.Primitive("zeros_like")
  return ["jax.interpreters.ad.zeros_like_p"]


class _LazyExperimental(types.ModuleType):
  """Stands in for `neural_tangents.experimental` until one of its names is used.

  NT's `__init__` imports it, and it imports TensorFlow and tf2jax (about 4 s, and nothing in
  robust_dd uses it). On first attribute access the real module is imported (or, without
  TensorFlow/tf2jax, an ImportError says what to install) and its names are copied here.
  """

  def __getattr__(self, name):
    if name.startswith("__"):
      raise AttributeError(name)
    if not (_module_available("tensorflow") and _module_available("tf2jax")):
      raise ImportError(_TF_ONLY_MESSAGE)
    del sys.modules[self.__name__]
    try:
      real = importlib.import_module(self.__name__)
    finally:
      sys.modules.setdefault(self.__name__, self)
    sys.modules[self.__name__] = real
    self.__dict__.update({k: v for k, v in vars(real).items() if not k.startswith("__")})
    return getattr(real, name)


def _stub_experimental() -> list[str]:
  if "neural_tangents.experimental" in sys.modules:
    return []
  stub = _LazyExperimental("neural_tangents.experimental", _TF_ONLY_MESSAGE)
  stub.__path__ = []  # A package, so `import neural_tangents.experimental.x` fails cleanly too.
  sys.modules["neural_tangents.experimental"] = stub
  return ["neural_tangents.experimental (lazy: imported on first use)"]


class _EigvalshCompat(types.ModuleType):
  """Proxy for the `scipy` module inside NT's predict module: maps `eigvals=` onto SciPy's
  `subset_by_index=`, forwarding everything else unchanged."""

  def __init__(self, scipy_module):
    super().__init__("scipy")
    self._scipy = scipy_module
    linalg = types.ModuleType("scipy.linalg")
    linalg.__dict__.update(scipy_module.linalg.__dict__)

    def eigvalsh(a, b=None, *args, eigvals=None, **kwargs):
      if eigvals is not None:
        kwargs["subset_by_index"] = eigvals
      return scipy_module.linalg.eigvalsh(a, b, *args, **kwargs)

    linalg.eigvalsh = eigvalsh
    self.linalg = linalg

  def __getattr__(self, name):
    return getattr(self._scipy, name)


def _patch_scipy_in_predict() -> list[str]:
  import inspect
  import scipy.linalg
  if "eigvals" in inspect.signature(scipy.linalg.eigvalsh).parameters:
    return []
  predict = importlib.import_module("neural_tangents._src.predict")
  if isinstance(predict.sp, _EigvalshCompat):
    return []
  predict.sp = _EigvalshCompat(predict.sp)
  return ["neural_tangents._src.predict.sp.linalg.eigvalsh(eigvals=...)"]


_UNSUPPORTED_IMPLEMENTATIONS = (0, 3)


def _refuse_structured_derivatives(nt) -> list[str]:
  import functools
  import inspect
  from neural_tangents._src import empirical
  if getattr(empirical, "_robust_dd_checked", False):
    return []
  try:  # On the JAX NT was written for, leave everything as it is.
    from jax.interpreters import ad
    if "has_aux" not in inspect.signature(ad.linearize).parameters:
      return []
  except (AttributeError, TypeError, ValueError):
    pass

  def refuse(fn):
    default = inspect.signature(fn).parameters["implementation"].default

    @functools.wraps(fn)
    def wrapped(*args, implementation=default, **kwargs):
      if int(implementation) in _UNSUPPORTED_IMPLEMENTATIONS:
        raise NotImplementedError(
            f"neural-tangents' empirical NTK implementation {int(implementation)} "
            "(AUTO / STRUCTURED_DERIVATIVES) relies on JAX internals that changed after NT 0.6.5; "
            "use implementation=1 (JACOBIAN_CONTRACTION) or 2 (NTK_VECTOR_PRODUCTS).")
      return fn(*args, implementation=implementation, **kwargs)
    return wrapped

  nt.empirical_ntk_fn = refuse(empirical.empirical_ntk_fn)
  nt.empirical_kernel_fn = refuse(empirical.empirical_kernel_fn)
  empirical._robust_dd_checked = True
  return ["nt.empirical_ntk_fn / nt.empirical_kernel_fn refuse implementation 0 and 3"]


APPLIED_PATCHES: list[str] = []


def apply() -> list[str]:
  """Applies every adaptation once, before NT is imported. Returns what was changed."""
  global _APPLIED
  if _APPLIED:
    return list(APPLIED_PATCHES)
  APPLIED_PATCHES.extend(_patch_jax_core())
  APPLIED_PATCHES.extend(_patch_jax_util())
  APPLIED_PATCHES.extend(_patch_zeros_like_p())
  APPLIED_PATCHES.extend(_stub_experimental())
  nt = importlib.import_module("neural_tangents")
  APPLIED_PATCHES.extend(_patch_scipy_in_predict())
  APPLIED_PATCHES.extend(_refuse_structured_derivatives(nt))
  _APPLIED = True
  return list(APPLIED_PATCHES)


def import_neural_tangents():
  """Returns the `neural_tangents` module, adapted to the installed JAX."""
  apply()
  return importlib.import_module("neural_tangents")
