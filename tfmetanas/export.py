r"""Adapts a trained workdir to a folder of support images and exports a SavedModel.

  python -m tfmetanas.export --workdir=/tmp/quickstart --support_dir=/tmp/support \
      --export_dir=/tmp/served [--checkpoint=best|latest] [--steps=N] [--overwrite]

SUPPORT holds one sub-folder of images per class; sorted class names become the
labels. See docs/export.md.
"""

from absl import app, flags

from tfmetanas import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by tfmetanas-train.")
_SUPPORT_DIR = flags.DEFINE_string(
    "support_dir", None, "Folder with one sub-folder of images (*.png, *.jpg) per class."
)
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "SavedModel directory to create.")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which checkpoint.")
_STEPS = flags.DEFINE_integer("steps", None, "Inner steps (default: inner.eval_steps of the run).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --export_dir.")
_DATA_ROOT = flags.DEFINE_string("data_root", None, "Override data.root of the run.")
flags.mark_flags_as_required(["workdir", "support_dir", "export_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from tfmetanas.experiment import export as export_lib

    adapted = cli.run_main(
        "tfmetanas-export",
        export_lib.export_workdir,
        _WORKDIR.value,
        _SUPPORT_DIR.value,
        _EXPORT_DIR.value,
        checkpoint=_CHECKPOINT.value,
        steps=_STEPS.value,
        overwrite=_OVERWRITE.value,
        data_root=_DATA_ROOT.value,
    )
    print(export_lib.format_result(adapted))


def run():
    cli.quiet_tensorflow()
    app.run(main, flags_parser=cli.flags_parser("tfmetanas-export"))


if __name__ == "__main__":
    run()
