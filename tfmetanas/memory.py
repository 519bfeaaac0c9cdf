"""Handing freed memory back to the system while a compiled function is first called.

The first call of a `tf.function` (per input signature) optimises and
instantiates its graph: for a meta-step of tens of thousands of nodes, a few
hundred MB of short-lived allocations. glibc's malloc keeps what they free for
reuse, in the arena of the thread that freed it, and the step's tensors,
allocated right after by the executor's threads, mostly come from other
arenas: the process's peak is the graph transient *plus* the tensors. Calling
glibc's ``malloc_trim(0)`` from a background thread while the first call runs
hands the freed pages back as they are freed, so the peak is closer to what
is live at any moment. Later calls allocate nothing new, so they run untouched.

Measured with ``tools/benchmark.py`` and ``--config.train.trim_interval=0`` against
the default (docs/performance.md, "Peak memory: the first call's transient"):
the METANAS warm-up row's peak 1,703 -> 1,467 MB, MAML++ Omniglot 5-way
second order 924-928 -> 860-864 MB.

Where glibc's ``malloc_trim`` does not exist (macOS, musl) this does nothing.
"""

import contextlib
import ctypes
import threading

DEFAULT_INTERVAL = 0.2  # Seconds between trims.


def _glibc_malloc_trim():
    """glibc's ``malloc_trim`` as a Python callable, or None where there is none."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


_MALLOC_TRIM = _glibc_malloc_trim()


def configured_interval(train_config):
    """A config's ``train.trim_interval`` (`DEFAULT_INTERVAL` where it has none)."""
    return float(train_config.get("trim_interval", DEFAULT_INTERVAL))


@contextlib.contextmanager
def trimming(interval=DEFAULT_INTERVAL, trim=None):
    """While the block runs, hands freed memory back every `interval` seconds.

    Args:
      interval: seconds between trims; 0 or less turns it off.
      trim: the function to call (default: glibc's ``malloc_trim(0)``; None
        where the C library has none, which turns this off).
    """
    trim = trim or _MALLOC_TRIM
    if trim is None or interval <= 0:
        yield
        return
    stop = threading.Event()

    def run():
        while not stop.wait(interval):
            trim()

    thread = threading.Thread(target=run, name="tfmetanas-trim", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class FirstCallTrimmed:
    """Calls `fn`, the first call of each of its concrete functions inside `trimming`.

    `fn` is usually a `tf.function`: a call whose arguments select a concrete
    function that has not run yet (a new input signature: the graph is traced,
    optimised and instantiated) runs with the trimming thread; every other call
    runs as `fn` alone. For a plain callable only the first call is trimmed.

    Args:
      fn: the callable.
      interval: see `trimming` (0: never trim).
      trim: see `trimming`.
    """

    def __init__(self, fn, interval=DEFAULT_INTERVAL, trim=None):
        self.fn = fn
        self.interval = float(interval)
        self._trim = trim
        self._called = set()

    def _key(self, args, kwargs):
        concrete = getattr(self.fn, "get_concrete_function", None)
        # The tf.function keeps its concrete functions, so their ids stay theirs.
        return None if concrete is None else id(concrete(*args, **kwargs))

    def __call__(self, *args, **kwargs):
        if self.interval <= 0:
            return self.fn(*args, **kwargs)
        key = self._key(args, kwargs)
        if key in self._called:
            return self.fn(*args, **kwargs)
        with trimming(self.interval, self._trim):
            out = self.fn(*args, **kwargs)
        self._called.add(key)
        return out

    def __getattr__(self, name):
        # The wrapped function's own API (get_concrete_function, ...); only called
        # for names the wrapper lacks ("fn" itself while copying or unpickling).
        if name == "fn":
            raise AttributeError(name)
        return getattr(self.fn, name)
