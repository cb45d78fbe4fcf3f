"""Tuning results (``result.json``) and meta-state checkpoints, written atomically.

``result.json`` (``schema_version`` 1) is documented field by field in README.md ("result.json").
A checkpoint is the library's format (:mod:`revhpo.optimizers.checkpoint`) tagged with the
spec's hash; it is written to a temporary file and renamed, so a crash never leaves a
half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from revhpo.optimizers import checkpoint
from revhpo.optimizers.checkpoint import CheckpointError, to_jsonable
from revhpo.optimizers.meta import MetaOptimizer
from revhpo.optimizers.state import MetaState

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
    """The outcome of :func:`revhpo.service.tuning.tune`; ``to_dict()`` is ``result.json``.

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
        hyperparameters: ``{"initial", "start", "final", "last"}`` natural values per group
            (``final``: the selected iterate, the one evaluated; ``last``: the last iterate);
            every schedule also expanded to ``per_step_per_layer``.
        selection: which iterate was returned and why (and how the start was chosen).
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
    selection: dict[str, Any] = field(default_factory=dict)

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
                "selection": self.selection,
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
def save_checkpoint(path: Path, state: MetaState, *, tag: str) -> None:
    """Write the library's checkpoint of ``state`` to ``path`` atomically."""
    atomic_write_bytes(Path(path), checkpoint.to_bytes(state, tag=tag))


def load_checkpoint(path: Path, opt: MetaOptimizer, *, tag: str | None = None) -> MetaState:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: unreadable, wrong version, or written for a different spec.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CheckpointError(
            f"cannot read checkpoint: {exc}. Received: path={str(path)!r}"
        ) from exc
    return checkpoint.from_bytes(data, opt, tag=tag, where=f"path={str(path)!r}")
