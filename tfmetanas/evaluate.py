r"""Meta-tests a trained workdir on a fixed task set; writes eval_<split>.json.

  python -m tfmetanas.evaluate --workdir=/tmp/quickstart [--split=test] \
      [--num_tasks=600] [--checkpoint=best|latest] [--steps=N] [--protocol=best|ensemble]
"""

from absl import app, flags

from tfmetanas import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by tfmetanas-train.")
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "val", "test"], "Which split's tasks.")
_NUM_TASKS = flags.DEFINE_integer("num_tasks", None, "Tasks to evaluate (default: eval.num_tasks).")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which checkpoint.")
_STEPS = flags.DEFINE_integer("steps", None, "Inner steps at test (default: inner.eval_steps).")
_DATA_ROOT = flags.DEFINE_string("data_root", None, "Override data.root of the run.")
_PROTOCOL = flags.DEFINE_enum(
    "protocol", "best", ["best", "ensemble"],
    "best: one checkpoint (--checkpoint); ensemble: averaged softmax of the top-k "
    "validation checkpoints (MAML++/ALFA protocol; train.keep_best sets how many are kept).",
)
_K = flags.DEFINE_integer("k", None, "Ensemble size (default: every kept best checkpoint).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from tfmetanas.experiment import ensemble
    from tfmetanas.experiment import evaluate as evaluate_lib

    common = dict(split=_SPLIT.value, num_tasks=_NUM_TASKS.value, steps=_STEPS.value,
                  data_root=_DATA_ROOT.value)
    if _PROTOCOL.value == "ensemble":
        result = cli.run_main("tfmetanas-evaluate", ensemble.evaluate_ensemble, _WORKDIR.value,
                              k=_K.value, **common)
    else:
        result = cli.run_main("tfmetanas-evaluate", evaluate_lib.evaluate_workdir, _WORKDIR.value,
                              checkpoint=_CHECKPOINT.value, **common)
    print(evaluate_lib.format_result(result))


def run():
    cli.quiet_tensorflow()
    app.run(main, flags_parser=cli.flags_parser("tfmetanas-evaluate"))


if __name__ == "__main__":
    run()
