r"""Evaluates a saved distilled set: flags -> robust_dd.evaluate_workdir.

  python -m experiments.evaluate --workdir=runs/dc_mnist5k_ipc1

Rebuilds the run's dataset and test split from its config.json, applies the preprocessing saved in
distilled.npz, and reports test accuracy (mean ± std over seeds) of the finite network trained on
the set and, for kernel runs or with --krr, of KRR with the run's kernel, each beside random real
subsets of the same size under the same evaluator; with --robust_eval (default: the run's), also
accuracy per test cluster (worst and mean), on the rare subgroup of --subgroup runs, and under
corruptions; with --eval_nets=convnet,alexnet,vgg11,resnet18,vit, the set (and random subsets)
trained into each of those networks. Writes <workdir>/evaluation.json.
"""

from absl import flags

from experiments import _common
from robust_dd import config as config_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A directory written by experiments.distill.", required=True)
flags.DEFINE_bool("network", True, "Evaluate with the finite network.")
flags.DEFINE_bool("krr", None, "Evaluate with KRR and the run's kernel (default: for methods "
                  "evaluated by KRR, such as kip).")
flags.DEFINE_bool("baseline", True, "Also evaluate random real subsets of the same size.")
flags.DEFINE_string("output", "evaluation.json", "File name written in --workdir.")
# The evaluation fields a re-evaluation may change, generated from the config (default: the run's).
OVERRIDES = config_lib.EVAL_OVERRIDES
_DEFINE = {"enum": lambda name, default, help_, spec: flags.DEFINE_enum(
               name, default, list(spec.choices), help_),
           "bool": lambda name, default, help_, _: flags.DEFINE_bool(name, default, help_),
           "list": lambda name, default, help_, _: flags.DEFINE_list(name, default, help_),
           "str": lambda name, default, help_, _: flags.DEFINE_string(name, default, help_),
           "float": lambda name, default, help_, _: flags.DEFINE_float(name, default, help_),
           "int": lambda name, default, help_, _: flags.DEFINE_integer(name, default, help_)}
for _spec in config_lib.flag_specs(config_lib.DistillConfig):
  if _spec.name in OVERRIDES:
    _DEFINE[_spec.kind](_spec.name, None, _spec.help + " Default: the run's.", _spec)

def main(argv):
  overrides = {k: tuple(v) if isinstance(v, list) else v
               for k, v in ((k, FLAGS[k].value) for k in OVERRIDES) if v is not None}
  from robust_dd import experiment  # pylint: disable=g-import-not-at-top
  _common.run_experiment(
      argv, lambda w, log: experiment.evaluate_workdir(
          w, network=FLAGS.network, krr=FLAGS.krr, baseline=FLAGS.baseline, output=FLAGS.output,
          log=log, **overrides),
      workdir=FLAGS.workdir, errors=(ValueError, FileNotFoundError))


if __name__ == "__main__":
  _common.run(main)
