"""Shared plumbing of the absl entry points (flags live in the entry points)."""

import functools
import os
import sys

from tfmetanas import errors


def quiet_tensorflow():
    """Keeps TensorFlow's C++ start-up chatter off the user's terminal."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_main(name, fn, *args, **kwargs):
    """Runs `fn`; a tfmetanas error becomes a one-line message and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except errors.TFMetaNASError as e:
        print(f"{name}: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def app_main(main, name=None):
    """`main` for ``absl.app.run`` with `run_main`'s handling of tfmetanas errors
    (the tools' entry points: ``app.run(cli.app_main(main))``)."""
    return functools.partial(run_main, name or os.path.basename(sys.argv[0]), main)
