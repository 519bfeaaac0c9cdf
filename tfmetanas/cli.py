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


def _config_error_text(e):
    """One line for a config-loading exception (ml_collections wraps a KeyError
    in an AttributeError whose text is the KeyError's repr)."""
    while e.args and isinstance(e.args[0], BaseException):
        e = e.args[0]
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(text.split())


def flags_parser(name=None):
    """A ``flags_parser`` for ``absl.app.run``: flag errors as absl reports them
    (usage and exit code 1); errors of a ``--config`` file or of its overrides
    (a missing file, a file without ``get_config``, a misspelled key: exceptions
    of the config file's own loading, not flag errors) as one line and exit 2.
    Config files load here, not at their first use in ``main``."""
    from absl import app, flags

    def parse(argv):
        try:
            args = app.parse_flags_with_usage(argv)
            for flag_name in list(flags.FLAGS):
                flag = flags.FLAGS[flag_name]
                if type(flag).__module__.startswith("ml_collections") and flag.value is not None:
                    hasattr(flag.value, "get")  # a config that failed to load raises here
            return args
        except Exception as e:  # noqa: BLE001 - the config file's own errors, any type
            print(f"{name or os.path.basename(sys.argv[0])}: error: {e.__class__.__name__}: "
                  f"{_config_error_text(e)}", file=sys.stderr, flush=True)
            sys.exit(2)

    return parse
