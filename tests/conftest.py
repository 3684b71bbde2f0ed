"""Test set-up: two logical CPU devices, so MirroredStrategy runs two replicas on CPU.

This must happen before TensorFlow initialises its devices, hence here.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def mirrored_strategy() -> tf.distribute.Strategy:
    """The process's one MirroredStrategy over both logical CPUs (see make_strategy)."""
    from soundloc_tf.train.training import make_strategy

    strategy = make_strategy()
    assert isinstance(strategy, tf.distribute.MirroredStrategy), strategy
    return strategy


@pytest.fixture(scope="session")
def single_device_strategy() -> tf.distribute.Strategy:
    return tf.distribute.OneDeviceStrategy(tf.config.list_logical_devices("CPU")[0].name)
