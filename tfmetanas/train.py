r"""Meta-trains a config in a workdir; resumes automatically.

  python -m tfmetanas.train --config=configs/quickstart.py --workdir=/tmp/quickstart \
      [--config.train.steps=100 ...]

Writes config.json, checkpoints/, TensorBoard events (train/, eval/).
"""

from absl import app, flags
from ml_collections import config_flags

from tfmetanas import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file (configs/...py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the run writes; resumes if it has a checkpoint.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from tfmetanas.experiment import trainer

    cli.run_main("tfmetanas-train", trainer.train, _CONFIG.value, _WORKDIR.value)


def run():
    cli.quiet_tensorflow()
    app.run(main, flags_parser=cli.flags_parser("tfmetanas-train"))


if __name__ == "__main__":
    run()
