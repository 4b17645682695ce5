r"""Exports a distilled set in pixel space: flags -> robust_dd.experiment.export_workdir.

  python -m experiments.export --workdir=runs/kip_mnist5k_ipc10 [--out=DIR]

Undoes the preprocessing saved with the set (un-ZCA, un-standardise) and writes DIR (default
<workdir>/export): train/<class>/<class>_<i>.png (8-bit, pixels clipped to [0, 1]; a layout
`tfds.ImageFolder(DIR)` reads), labels.csv, pixels.npz (the unclipped float pixels) and
export.json. DIR must not exist; it appears only when complete. <class> is the class the image
was distilled for (--file_by=row, the default) or the argmax of its stored, possibly learned,
label (--file_by=label); labels.csv lists both.
"""

from absl import flags

from experiments import _common

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A directory written by experiments.distill.", required=True)
flags.DEFINE_string("out", None, "Directory to create (default: <workdir>/export).")
flags.DEFINE_enum("file_by", "row", ["row", "label"], "File each image under the class it was "
                  "distilled for (row) or under the argmax of its stored label (label).")


def main(argv):
  from robust_dd import experiment  # pylint: disable=g-import-not-at-top
  out = FLAGS.out or f"{FLAGS.workdir.rstrip('/')}/export"
  _common.run_experiment(
      argv, lambda w, log: experiment.export_workdir(FLAGS.workdir, w, file_by=FLAGS.file_by,
                                                     log=log),
      workdir=out, errors=(ValueError, FileNotFoundError))


if __name__ == "__main__":
  _common.run(main)
