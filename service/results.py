"""Tuning results (``result.json``) and meta-state checkpoints, written atomically.

``result.json`` (``schema_version`` 1) is documented field by field in README.md ("result.json").
A checkpoint is one ``.npz`` file holding the raw hyperparameters, the meta-optimizer state,
the state before the last update (for backtracking) and a JSON document with the loop's
counters and history; it is written to a temporary file and renamed, so a crash never leaves
a half-written checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from optimizers.meta import MetaOptimizer, state_from_arrays, state_to_arrays
from optimizers.tuning import MetaState

__all__ = [
    "RESULT_SCHEMA_VERSION",
    "CheckpointError",
    "TuneResult",
    "atomic_write_bytes",
    "load_checkpoint",
    "save_checkpoint",
    "to_jsonable",
]

RESULT_SCHEMA_VERSION = 1
CHECKPOINT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or belongs to a different spec."""


def to_jsonable(x: Any) -> Any:
    """NumPy/TF scalars and arrays → plain Python; non-finite floats → None (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [to_jsonable(v) for v in x]
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):
        x = x.numpy()
    if isinstance(x, np.ndarray):
        return to_jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@dataclass
class TuneResult:
    """The outcome of :func:`service.tuning.tune`; ``to_dict()`` is the ``result.json`` document.

    Attributes:
        status: ``completed`` (all meta-iterations), ``stopped`` (wall-time limit) or
            ``diverged`` (training diverged and the loop could not go on).
        stop_reason: why it stopped early (None when completed).
        spec: the job spec as a dict.
        dataset: dataset summary.
        net: net description.
        n_hyperparameters: number of tuned scalars.
        meta_iterations: meta-iterations done.
        history: one record per meta-iteration.
        hyperparameters: ``{"initial": ..., "final": ...}`` natural values per group.
        evaluation: held-out-seed evaluation of the initial and final hyperparameters.
        training_curves: per-step training losses before and after tuning.
        timings: wall-clock split.
        device: where TensorFlow ran.
        files: paths (relative to the output directory) of what was written.
        versions: library versions.
    """

    status: str
    stop_reason: str | None
    spec: dict[str, Any]
    dataset: dict[str, Any]
    net: dict[str, Any]
    n_hyperparameters: int
    meta_iterations: int
    history: list[dict[str, Any]]
    hyperparameters: dict[str, Any]
    evaluation: dict[str, Any]
    training_curves: dict[str, Any]
    timings: dict[str, float]
    device: str
    files: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The ``result.json`` document (strict JSON: non-finite numbers become null)."""
        return to_jsonable(
            {
                "schema_version": RESULT_SCHEMA_VERSION,
                "status": self.status,
                "stop_reason": self.stop_reason,
                "spec": self.spec,
                "dataset": self.dataset,
                "net": self.net,
                "n_hyperparameters": self.n_hyperparameters,
                "meta_iterations": self.meta_iterations,
                "history": self.history,
                "hyperparameters": self.hyperparameters,
                "evaluation": self.evaluation,
                "training_curves": self.training_curves,
                "timings": self.timings,
                "device": self.device,
                "files": self.files,
                "versions": self.versions,
            }
        )

    def write(self, path: Path) -> None:
        """Write ``result.json`` atomically."""
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        atomic_write_bytes(Path(path), text.encode("utf-8"))


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(
    path: Path, state: MetaState, *, spec_hash: str, extra: dict[str, Any] | None = None
) -> None:
    """Write the meta-state to ``path`` atomically (one ``.npz``)."""
    arrays: dict[str, np.ndarray] = {}
    for k, v in state.raw.items():
        arrays[f"raw/{k}"] = np.asarray(v, np.float64)
    for k, v in state_to_arrays(state.opt_state).items():
        arrays[f"opt/{k}"] = v
    if state.prev_raw is not None:
        for k, v in state.prev_raw.items():
            arrays[f"prev_raw/{k}"] = np.asarray(v, np.float64)
        for k, v in state_to_arrays(state.prev_opt_state).items():
            arrays[f"prev_opt/{k}"] = v
    meta = {
        "version": CHECKPOINT_VERSION,
        "spec_hash": spec_hash,
        "iteration": state.iteration,
        "step_scale": state.step_scale,
        "backtracks": state.backtracks,
        "stop_reason": state.stop_reason,
        "history": to_jsonable(state.history),
        "extra": to_jsonable(extra or {}),
    }
    arrays["meta_json"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_checkpoint(
    path: Path, opt: MetaOptimizer, *, spec_hash: str | None = None
) -> tuple[MetaState, dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the ``.npz`` file.
        opt: the meta-optimizer (to rebuild its state type).
        spec_hash: when given, the checkpoint must belong to this spec.

    Returns:
        ``(state, extra)``.

    Raises:
        CheckpointError: unreadable, wrong version, or written for a different spec.
    """
    try:
        with np.load(Path(path), allow_pickle=False) as z:
            arrays = {k: np.array(z[k]) for k in z.files}
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read checkpoint: {exc}. Received: path={str(path)!r}"
        ) from exc
    meta = json.loads(arrays.pop("meta_json").tobytes().decode("utf-8"))
    if meta.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"unsupported checkpoint version. Received: version={meta.get('version')!r}"
        )
    if spec_hash is not None and meta["spec_hash"] != spec_hash:
        raise CheckpointError(
            "checkpoint was written for a different job spec (delete it or use another "
            f"output directory). Received: path={str(path)!r}"
        )

    def part(prefix: str) -> dict[str, np.ndarray]:
        n = len(prefix) + 1
        return {k[n:]: v for k, v in arrays.items() if k.startswith(prefix + "/")}

    prev_raw = part("prev_raw") or None
    state = MetaState(
        iteration=int(meta["iteration"]),
        raw=part("raw"),
        opt_state=state_from_arrays(opt, part("opt")),
        step_scale=float(meta["step_scale"]),
        backtracks=int(meta["backtracks"]),
        prev_raw=prev_raw,
        prev_opt_state=state_from_arrays(opt, part("prev_opt")) if prev_raw is not None else None,
        history=list(meta["history"]),
        stop_reason=meta["stop_reason"],
    )
    return state, dict(meta.get("extra") or {})
