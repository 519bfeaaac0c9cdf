"""tfmetanas.memory: freed memory handed back while (and only while) a first call runs."""

import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from tfmetanas import memory


class Counter:
    def __init__(self):
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.count += 1


def test_trimming_trims_while_the_block_runs_and_stops_after():
    trims = Counter()
    with memory.trimming(0.01, trims):
        time.sleep(0.2)
    during = trims.count
    assert during >= 5
    time.sleep(0.1)
    assert trims.count == during


def test_trimming_off():
    trims = Counter()
    with memory.trimming(0, trims):
        time.sleep(0.05)
    assert trims.count == 0


def slow_function():
    """A tf.function whose every call takes 0.2 s (a py_function sleeps)."""

    def sleep(x):
        time.sleep(0.2)
        return x

    @tf.function
    def fn(x):
        return tf.py_function(sleep, [x * 2.0], tf.float32)

    return fn


def test_first_call_of_each_signature_is_trimmed_and_only_that():
    fn = slow_function()
    trims = Counter()
    wrapped = memory.FirstCallTrimmed(fn, 0.02, trims)
    x = tf.ones([3])
    np.testing.assert_array_equal(wrapped(x), fn(x))  # Same results.
    first = trims.count
    assert first >= 3
    wrapped(x)
    wrapped(x + 1.0)  # Same signature: no trimming.
    assert trims.count == first
    wrapped(tf.ones([4]))  # A new concrete function: its first call is trimmed.
    assert trims.count >= first + 3
    # The wrapped function's own API stays reachable.
    assert wrapped.experimental_get_tracing_count() == fn.experimental_get_tracing_count() == 2


def test_plain_callable_first_call_only_and_interval_zero():
    trims = Counter()
    wrapped = memory.FirstCallTrimmed(lambda: time.sleep(0.1), 0.01, trims)
    wrapped()
    first = trims.count
    assert first >= 3
    wrapped()
    assert trims.count == first
    off = memory.FirstCallTrimmed(slow_function(), 0, trims)
    off(tf.ones([2]))
    assert trims.count == first


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_glibc_malloc_trim_is_found_and_runs():
    assert memory._MALLOC_TRIM is not None
    assert memory._MALLOC_TRIM() in (0, 1)


def test_a_copy_of_the_wrapper_calls_the_same_function():
    import copy

    wrapped = memory.FirstCallTrimmed(lambda x: x + 1, 0)
    assert copy.copy(wrapped)(1) == 2 and copy.deepcopy(wrapped)(2) == 3
