"""The tuning loop's checkpoint format: a :class:`MetaState` as the bytes of one ``.npz``.

The bytes hold the raw hyperparameters, the meta-optimizer state, the state before the last
update (for backtracking) and a JSON document with the loop's counters and history, tagged
with a caller's identifier (e.g. a hash of the job spec) so that a checkpoint is never resumed
into a different job. Writing the bytes to disk (atomically) is the caller's business.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from revhpo.optimizers.meta import MetaOptimizer, state_from_arrays, state_to_arrays
from revhpo.optimizers.state import MetaState

__all__ = ["CHECKPOINT_VERSION", "CheckpointError", "from_bytes", "to_bytes", "to_jsonable"]

CHECKPOINT_VERSION = 3
#: Older versions this revhpo still reads (their missing fields take their defaults).
READABLE_VERSIONS = (2, 3)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or belongs to a different job."""


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


def _prefixed(prefix: str, arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {f"{prefix}/{k}": np.asarray(v) for k, v in arrays.items()}


def to_bytes(state: MetaState, *, tag: str) -> bytes:
    """The checkpoint of ``state`` (an ``.npz`` document), tagged ``tag``."""
    arrays = {
        **_prefixed("raw", {k: np.asarray(v, np.float64) for k, v in state.raw.items()}),
        **_prefixed("opt", state_to_arrays(state.opt_state)),
    }
    if state.prev_raw is not None:
        arrays.update(_prefixed("prev_raw", state.prev_raw))
        arrays.update(_prefixed("prev_opt", state_to_arrays(state.prev_opt_state)))
    if state.best_raw is not None:
        arrays.update(_prefixed("best_raw", state.best_raw))
        arrays.update(_prefixed("best_opt", state_to_arrays(state.best_opt_state)))
    meta = {
        "version": CHECKPOINT_VERSION,
        "tag": tag,
        "iteration": state.iteration,
        "step_scale": state.step_scale,
        "backtracks": state.backtracks,
        "stop_reason": state.stop_reason,
        "tuning_s": state.tuning_s,
        "history": to_jsonable(state.history),
        "started": state.started,
        "start": to_jsonable(state.start),
        "select_loss": _finite_or_str(state.select_loss),
        "best_iteration": state.best_iteration,
        "best_select_loss": _finite_or_str(state.best_select_loss),
        "since_best": state.since_best,
    }
    arrays["meta_json"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _read_arrays(data: bytes, where: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: np.array(z[k]) for k in z.files}
        meta = json.loads(arrays.pop("meta_json").tobytes().decode("utf-8"))
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"cannot read checkpoint: {exc}. Received: {where}") from exc
    return meta, arrays


def from_bytes(
    data: bytes, opt: MetaOptimizer, *, tag: str | None = None, where: str = "bytes"
) -> MetaState:
    """Read a checkpoint written by :func:`to_bytes`.

    Args:
        data: the checkpoint's bytes.
        opt: the meta-optimizer (to rebuild its state type).
        tag: when given, the checkpoint must carry this tag.
        where: where the bytes came from (for messages, e.g. ``path='runs/x/checkpoint.npz'``).

    Raises:
        CheckpointError: unreadable, wrong version, or tagged for a different job.
    """
    meta, arrays = _read_arrays(data, where)
    if meta.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"unsupported checkpoint version {meta.get('version')!r} (this revhpo writes "
            f"{CHECKPOINT_VERSION}). Received: {where}"
        )
    if tag is not None and meta.get("tag") != tag:
        raise CheckpointError(f"checkpoint was written for a different job. Received: {where}")

    def part(prefix: str) -> dict[str, np.ndarray]:
        n = len(prefix) + 1
        return {k[n:]: v for k, v in arrays.items() if k.startswith(prefix + "/")}

    prev_raw = part("prev_raw") or None
    best_raw = part("best_raw") or None
    return MetaState(
        iteration=int(meta["iteration"]),
        raw=part("raw"),
        opt_state=state_from_arrays(opt, part("opt")),
        step_scale=float(meta["step_scale"]),
        backtracks=int(meta["backtracks"]),
        prev_raw=prev_raw,
        prev_opt_state=state_from_arrays(opt, part("prev_opt")) if prev_raw is not None else None,
        history=list(meta["history"]),
        stop_reason=meta["stop_reason"],
        tuning_s=float(meta.get("tuning_s", 0.0)),
        started=bool(meta.get("started", meta["iteration"] > 0)),
        start=meta.get("start"),
        select_loss=_float_or_none(meta.get("select_loss")),
        best_raw=best_raw,
        best_opt_state=state_from_arrays(opt, part("best_opt")) if best_raw is not None else None,
        best_iteration=int(meta.get("best_iteration", 0)),
        best_select_loss=float(meta.get("best_select_loss", "inf")),
        since_best=int(meta.get("since_best", 0)),
    )


def _finite_or_str(x: float | None) -> float | str | None:
    """A float for strict JSON: non-finite values as their string (``"inf"``)."""
    if x is None or math.isfinite(x):
        return x
    return str(float(x))


def _float_or_none(x: Any) -> float | None:
    return None if x is None else float(x)
