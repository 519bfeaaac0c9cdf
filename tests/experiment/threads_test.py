"""train.intra_op_threads / train.inter_op_threads (distribute.configure_threads)."""

import subprocess
import sys

import pytest

from tfmetanas import errors
from tfmetanas.experiment import defaults, distribute

_CHILD = """
import tensorflow as tf
from tfmetanas.experiment import defaults, distribute, trainer
config = defaults.base_config()
config.train.intra_op_threads, config.train.inter_op_threads = 1, 3
distribute.configure_threads(config)
tf.constant(1.0) + 1.0  # starts the runtime
print(tf.config.threading.get_intra_op_parallelism_threads(),
      tf.config.threading.get_inter_op_parallelism_threads())
"""


def test_thread_settings_apply_in_a_fresh_process():
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                         check=True, timeout=300)
    assert out.stdout.split()[-2:] == ["1", "3"]


def test_negative_thread_counts_are_a_config_error():
    config = defaults.base_config()
    config.train.intra_op_threads = -1
    with pytest.raises(errors.ConfigError, match="intra_op_threads"):
        distribute.configure_threads(config)


def test_metanas_configs_run_one_thread_per_op():
    config = defaults.metanas_config("omniglot", 5, 1, 5, arch_lr=5e-4)
    assert config.train.intra_op_threads == 1
    assert defaults.base_config().train.intra_op_threads == 0
