"""Process-wide settings, made in this one place.

Two settings matter for exact reversal and are process-wide in TensorFlow:

- ``TF_ENABLE_ONEDNN_OPTS=0`` must be in the environment before TensorFlow is first imported:
  oneDNN's float32 CPU kernels can round a gradient differently in the forward and the reverse
  graph. :func:`prepare_environment` sets it (unless the user chose a value) and is called when
  ``revhpo`` is imported, which always precedes the import of any of its TensorFlow modules.
- Op determinism (``tf.config.experimental.enable_op_determinism``): the reverse pass must
  recompute every forward gradient bit for bit. :func:`require_exact_ops` turns it on once
  (idempotent, logged at debug level); :func:`revhpo.optimizers.hypergradient`,
  :meth:`revhpo.optimizers.Tuner.run` and ``revhpo bench`` call it, so every exact run has it.

For the command line, :func:`import_tensorflow` imports TensorFlow with its C++ start-up
chatter (absl, the CUDA probe on a CPU machine) kept off the terminal and the job logs; the
CLI's TensorFlow commands and the worker's job process use it.

Nothing here imports TensorFlow at module level: the API server imports ``revhpo`` without it.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

__all__ = [
    "__version__",
    "import_tensorflow",
    "prepare_environment",
    "quiet_tensorflow",
    "require_exact_ops",
    "xla_cache_dir",
]

log = logging.getLogger(__name__)

try:
    __version__ = version("revhpo")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

_exact_ops = False


def xla_cache_dir() -> Path | None:
    """Where compiled XLA kernels are kept between processes (None: no persistent cache).

    ``$REVHPO_XLA_CACHE`` names the folder (``off`` turns the cache off); the default is
    ``$XDG_CACHE_HOME/revhpo/xla`` (``~/.cache/revhpo/xla``). A folder that cannot be created
    or written turns the cache off.
    """
    chosen = os.environ.get("REVHPO_XLA_CACHE", "")
    if chosen.lower() in ("off", "0", "false", "no"):
        return None
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = Path(chosen) if chosen else base / "revhpo" / "xla"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return path if os.access(path, os.W_OK) else None


def prepare_environment() -> None:
    """Environment settings that must precede TensorFlow's first import (user values win).

    Besides oneDNN (see the module docstring), this turns on TensorFlow's persistent XLA
    compilation cache (:func:`xla_cache_dir`): the exact engine's programs are compiled once
    per machine and net shape, not once per process, which shortens every later job's time to
    its first hypergradient. A cached program is the executable its compilation produced, so
    the cache cannot change a result (and a reversal's certificate would catch one that did).
    """
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    flags = os.environ.get("TF_XLA_FLAGS", "")
    if "tf_xla_persistent_cache_directory" not in flags:
        cache = xla_cache_dir()
        if cache is not None:
            option = f"--tf_xla_persistent_cache_directory={cache}"
            os.environ["TF_XLA_FLAGS"] = f"{flags} {option}".strip()


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ start-up chatter (CUDA probes, absl) for command-line use.

    Call before TensorFlow is imported; a value the user set is kept.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")


def require_exact_ops() -> None:
    """Turn on TensorFlow op determinism for this process (idempotent; logs the first time)."""
    global _exact_ops
    if _exact_ops:
        return
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    _exact_ops = True
    log.debug("TensorFlow op determinism enabled (exact reversal recomputes gradients bit for bit)")


def import_tensorflow() -> None:
    """Import TensorFlow for a command that needs it, without its start-up noise.

    Runs :func:`revhpo.runtime.quiet_tensorflow` first, then imports TensorFlow with the
    process's stderr (file descriptor 2) captured: what TensorFlow's C++ libraries print while
    loading (absl's "All log messages before absl::InitializeLog()", the CUDA driver probe on a
    CPU machine) is written before any log setting can apply. If the import fails, the
    captured output is written to stderr before the error is raised.
    """
    quiet_tensorflow()
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
