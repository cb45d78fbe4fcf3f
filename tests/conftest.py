"""Shared test configuration: quiet TensorFlow, deterministic ops, float64 by default."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

tf.config.experimental.enable_op_determinism()
