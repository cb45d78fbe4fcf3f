"""Shared test configuration: quiet TensorFlow, deterministic ops, float64 by default."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from revhpo.runtime import require_exact_ops  # noqa: E402  (importing revhpo sets oneDNN off)

require_exact_ops()
