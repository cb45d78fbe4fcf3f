"""Shared test configuration: quiet TensorFlow, deterministic ops, float64 by default."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# As the revhpo packages do on import: float32 oneDNN kernels break bit-exact reversal.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import tensorflow as tf  # noqa: E402

tf.config.experimental.enable_op_determinism()
