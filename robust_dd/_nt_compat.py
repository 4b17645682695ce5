"""Makes neural-tangents 0.6.5 importable and usable on current JAX.

neural-tangents (NT) 0.6.5 is the last release (December 2023). On JAX >= 0.6 it fails at import
time. This module is the ONLY place in `robust_dd` that knows why; `robust_dd.kernels` calls
`apply()` before NT is first imported. Each adaptation checks that the installed JAX needs it (a
name is missing, a signature changed) and otherwise leaves NT and JAX alone, so on an old stack
(jax 0.4.x) `apply()` changes nothing.

The adaptations (each found by running neural-tangents' own tests on current JAX,
`scripts/nt_test_suites.py`):

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
   walked JAX's internal autodiff, whose signatures changed. Four of NT's functions in
   `neural_tangents._src.empirical` are replaced by ports to current JAX: building the linear
   jaxpr (`jax.linearize` + `jax.make_jaxpr` instead of the internal `ad.linearize`), one
   equation's VJP (no `Primitive.map_primitive`), AUTO's cost model (`cost_analysis()` returns a
   dict) and two helpers that used deprecated calls (`jnp.dtype(array)`, `jnp.size` of shapes). NT's
   module also sees a proxy for `jax.interpreters.ad` that supplies the three names the public
   module no longer exports (`source_info_util`, `config`, `reducing_transposes`). Implementations
   1 and 2 are NT's own code, unchanged.
7. `nt.predict` and `stax.linear` evaluate cached values inside `jax.core.eval_context()`, which on
   stackless JAX rejects tracers from an enclosing `vmap`/`grad` (`UnexpectedTracerError`). Those
   two modules see `jax.ensure_compile_time_eval()` under that name: concrete values are still
   computed eagerly, tracers stay in their trace.

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


class _JaxWithFoldingEvalContext(types.ModuleType):
  """Proxy for the `jax` module inside NT's `predict` and `stax.linear` modules.

  NT computes cached quantities (a Cholesky factor, an eigendecomposition, a kernel scale) inside
  `with jax.core.eval_context():` so they are evaluated eagerly even when first needed inside a
  `jit`. On old JAX that context left a vmap/grad tracer's own trace in charge of operations on
  it; on stackless JAX it forces the evaluation trace, and a kernel that is itself a tracer
  (`vmap(lambda key: ... nt.predict.gradient_descent_mse(kernel(key), ...))`) fails with
  `UnexpectedTracerError`. `jax.ensure_compile_time_eval()` is today's form of NT's intent:
  operations on concrete values run eagerly, operations on tracers stay in their trace. This proxy
  exposes it as `jax.core.eval_context`; every other name is the real `jax`'s.
  """

  def __init__(self, jax_module):
    super().__init__("jax")
    self._jax = jax_module
    core = types.ModuleType("jax.core")
    core.__getattr__ = lambda name: getattr(jax_module.core, name)
    core.eval_context = jax_module.ensure_compile_time_eval
    self.core = core

  def __getattr__(self, name):
    return getattr(self._jax, name)


def _patch_eval_context() -> list[str]:
  import jax
  from jax._src import config as jax_config
  if not hasattr(jax_config, "eager_constant_folding"):  # Old JAX: eval_context already fits.
    return []
  patched = []
  for name in ("neural_tangents._src.predict", "neural_tangents._src.stax.linear"):
    module = importlib.import_module(name)
    if not isinstance(module.jax, _JaxWithFoldingEvalContext):
      module.jax = _JaxWithFoldingEvalContext(jax)
      patched.append(f"{name}: jax.core.eval_context() -> jax.ensure_compile_time_eval()")
  return patched


def _linearize_has_old_signature() -> bool:
  """True on the JAX NT 0.6.5 was written for: `ad.linearize(traceable, *primals, **kwargs)`."""
  import inspect

  from jax.interpreters import ad
  try:
    params = inspect.signature(ad.linearize).parameters.values()
  except (AttributeError, TypeError, ValueError):
    return False
  return any(p.kind is p.VAR_POSITIONAL for p in params)


class _AdCompat(types.ModuleType):
  """Proxy for `jax.interpreters.ad` inside NT's `empirical` module.

  NT's structured-derivatives pass reads three names the public `jax.interpreters.ad` no longer
  exports: `source_info_util` (JAX's own, from `jax._src`), `config.jax_enable_checks` (read from
  `jax.config` at each use) and `reducing_transposes` (removed in JAX 0.10; unused since 0.4.38,
  so an empty table). Everything else is forwarded unchanged.
  """

  def __init__(self, ad_module):
    super().__init__("jax.interpreters.ad")
    from jax._src import source_info_util
    self._ad = ad_module
    self.source_info_util = source_info_util
    self.reducing_transposes = {}

  @property
  def config(self):
    import jax
    return types.SimpleNamespace(jax_enable_checks=jax.config.jax_enable_checks)

  def __getattr__(self, name):
    return getattr(self._ad, name)


def _get_primals_out_and_pullback(fn, mode, _j_rules, _s_rules, _fwd, *primals_in):
  """NT's `empirical._get_primals_out_and_pullback`, on public JAX APIs.

  NT built the linear (tangent) jaxpr of `fn` with JAX's internal `ad.linearize`, whose signature
  and return values changed. The same jaxpr comes from `jax.linearize` followed by `jax.make_jaxpr`
  of the returned JVP: its equations are the tangent computation, its constants the primal
  residuals, and outputs whose tangent is zero are instantiated, so no output needs to be dropped
  (NT dropped the cotangents of outputs with a known tangent). As in NT, this runs under
  `jax.disable_jit()` so that the jaxpr holds primitives, not nested jit calls.
  """
  import jax
  from jax.interpreters.ad import UndefinedPrimal
  from neural_tangents._src import empirical

  primals_in_flat, in_tree = jax.tree.flatten(primals_in)
  out_trees = []

  def fn_flat(*flat):
    out_flat, out_tree = jax.tree.flatten(fn(*jax.tree.unflatten(in_tree, flat)))
    out_trees.append(out_tree)
    return out_flat

  with jax.disable_jit():
    primals_out_flat, jvp_fn = jax.linearize(fn_flat, *primals_in_flat)
    closed = jax.make_jaxpr(jvp_fn)(*primals_in_flat)
  jaxpr, consts = closed.jaxpr, closed.consts
  primals_out = jax.tree.unflatten(out_trees[0], primals_out_flat)

  def pullback_fn(*cts_in):
    cts_in, _ = jax.tree.flatten(cts_in)
    dummy_args = [UndefinedPrimal(v.aval) for v in jaxpr.invars]
    cts_out = empirical._backward_pass(  # pylint: disable=protected-access
        jaxpr, mode=mode, consts=consts, primals_in=dummy_args, cotangents_in=tuple(cts_in),
        _j_rules=_j_rules, _s_rules=_s_rules, _fwd=_fwd)
    return jax.tree.unflatten(in_tree, cts_out)

  return primals_out, pullback_fn


def _eqn_vjp_fn(eqn, cts_in, *invals):
  """NT's `empirical._eqn_vjp_fn` without `Primitive.map_primitive`, which JAX removed with
  `pmap`'s primitive. Call primitives keep NT's call-transpose path; the linearisation runs under
  `jax.disable_jit()`, so none reaches here from `nt.empirical_*`."""
  from jax._src import source_info_util
  from jax.interpreters import ad
  if eqn is None:  # Identity function.
    return cts_in,
  name_stack = source_info_util.current_name_stack() + eqn.source_info.name_stack
  with source_info_util.user_context(eqn.source_info.traceback, name_stack=name_stack):
    if getattr(eqn.primitive, "call_primitive", False):
      params = dict(eqn.params)
      call_jaxpr = params.pop("call_jaxpr")
      return ad.get_primitive_transpose(eqn.primitive)(
          params, call_jaxpr, invals, cts_in, [v.aval for v in eqn.outvars], ())
    return ad.get_primitive_transpose(eqn.primitive)(cts_in, *invals, **eqn.params)


def _get_flops(f, optimize: bool, *args, **kwargs) -> float:
  """NT's `empirical._get_flops` (AUTO's cost model): `cost_analysis()` of a compiled
  computation now returns one dict, where NT indexed a list of them."""
  import jax
  lowered = jax.jit(f).lower(*args, **kwargs)
  analysis = lowered.compile().cost_analysis() if optimize else lowered.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return analysis["flops"]


def _get_fx_axis_and_dtype(fx, fx_axis, params):
  """NT's `empirical._get_fx_axis_and_dtype` without `jnp.dtype(array)`, which JAX deprecated
  (an error in a future release): the parameters' promoted dtype, read from `.dtype`."""
  import functools

  import jax
  import jax.numpy as jnp
  if fx_axis is None:
    fx_axis = jax.tree.map(lambda x: None, fx)
  dtypes = [jnp.asarray(p).dtype if not hasattr(p, "dtype") else p.dtype
            for p in jax.tree.leaves(params)]
  return fx_axis, functools.reduce(jnp.promote_types, dtypes) if dtypes else None


def _std_basis(pytree):
  """NT's `empirical._std_basis` without `jnp.size`/`result_type` of shape-only leaves, which
  JAX deprecated: the identity basis of the flattened pytree, sized from `.shape`/`.dtype`."""
  import math

  import jax
  import jax.numpy as jnp
  from neural_tangents._src import empirical
  leaves = jax.tree.leaves(pytree)
  ndim = sum(math.prod(leaf.shape) for leaf in leaves)
  dtype = jax.dtypes.result_type(*(leaf.dtype for leaf in leaves))
  return empirical._unravel_array_into_pytree(  # pylint: disable=protected-access
      pytree, 1, jnp.eye(ndim, dtype=dtype))


def _port_structured_derivatives() -> list[str]:
  from jax.interpreters import ad
  from neural_tangents._src import empirical
  if _linearize_has_old_signature() or isinstance(empirical.ad, _AdCompat):
    return []
  empirical.ad = _AdCompat(ad)
  ports = {"_get_primals_out_and_pullback": _get_primals_out_and_pullback,
           "_eqn_vjp_fn": _eqn_vjp_fn, "_get_flops": _get_flops,
           "_get_fx_axis_and_dtype": _get_fx_axis_and_dtype, "_std_basis": _std_basis}
  for name, port in ports.items():
    setattr(empirical, name, port)
  return ["neural_tangents._src.empirical: structured derivatives (implementation 3) on "
          "jax.linearize + jax.make_jaxpr"]


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
  importlib.import_module("neural_tangents")
  APPLIED_PATCHES.extend(_patch_scipy_in_predict())
  APPLIED_PATCHES.extend(_port_structured_derivatives())
  APPLIED_PATCHES.extend(_patch_eval_context())
  _APPLIED = True
  return list(APPLIED_PATCHES)


def import_neural_tangents():
  """Returns the `neural_tangents` module, adapted to the installed JAX."""
  apply()
  return importlib.import_module("neural_tangents")
