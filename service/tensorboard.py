"""TensorBoard event files of a tuning run, written with TensorFlow's own summary API
(``tf.summary``; viewing them needs the ``tensorboard`` package, writing them does not).

With ``tensorboard: true`` in the job spec (or ``revhpo tune --tensorboard``), a run writes
``tensorboard/`` beside ``result.json``; ``tensorboard --logdir runs/`` then shows:

* ``meta/*`` at step = meta-iteration, as the run goes: the hypergradient objective (the
  fit-part validation loss averaged over the iteration's training seeds), the selection
  estimate (``select_loss``), the best selection estimate so far, validation and training
  loss and accuracy, the hypergradient norm per group and the iteration's duration. The test
  set appears nowhere here (it must never be selected on).
* ``hypers/<group>/{mean,min,max}`` at step = meta-iteration: the tuned values' range.
* ``schedule/<group>/<layer>`` at step = training step: the returned (``final``) learning rate,
  momentum decay and weight decay schedules per layer; ``init_scale/<layer>`` at step 0.
* ``training/{initial,final}`` at step = training step: the minibatch loss of plain training
  with the initial and the returned hyperparameters (the result's training curves).

A resumed run rewrites the directory from the checkpoint's history, so it never holds a
meta-iteration twice. The file is one artifact of a service job (``events.out.tfevents.*``).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tensorflow as tf

__all__ = ["TENSORBOARD_DIR", "TensorBoardLog"]

TENSORBOARD_DIR = "tensorboard"
_META_KEYS = (
    "objective",
    "select_loss",
    "best_select_loss",
    "val_loss",
    "val_acc",
    "train_loss",
    "train_acc",
    "step_scale",
    "update_norm",
    "duration_s",
)


def _scalar_metadata() -> Any:
    """What TensorBoard's own ``scalar`` summary attaches: the ``scalars`` plugin's tag."""
    from tensorflow.core.framework import summary_pb2

    meta = summary_pb2.SummaryMetadata()
    meta.plugin_data.plugin_name = "scalars"
    return meta


def _scalar(tag: str, value: float, step: int | None = None) -> None:
    """``tf.summary.scalar`` without the ``tensorboard`` package: the same float32 tensor and
    plugin metadata through ``tf.summary.write`` (so that ``tensorboard`` shows it)."""
    tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=_scalar_metadata())


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class TensorBoardLog:
    """One run's event file: :meth:`meta` per meta-iteration, :meth:`final` once at the end.

    Args:
        out_dir: the run's directory; the events go to ``out_dir/tensorboard`` (replaced).
    """

    def __init__(self, out_dir: Path | str) -> None:
        self.logdir = Path(out_dir) / TENSORBOARD_DIR
        shutil.rmtree(self.logdir, ignore_errors=True)
        self.logdir.mkdir(parents=True)
        self._writer = tf.summary.create_file_writer(str(self.logdir))

    def meta(self, rec: Mapping[str, Any]) -> None:
        """The scalars of one meta-iteration (a ``meta`` event or a history record)."""
        step = rec.get("meta_iteration", rec.get("iteration"))
        if step is None:
            return
        with self._writer.as_default(step=int(step)):
            for key in _META_KEYS:
                value = _number(rec.get(key))
                if value is not None:
                    _scalar(f"meta/{key}", value)
            for group, norm in (rec.get("grad_norms") or {}).items():
                if _number(norm) is not None:
                    _scalar(f"meta/grad_norm/{group}", float(norm))
            for group, stats in (rec.get("hypers") or {}).items():
                for stat, value in stats.items():
                    if _number(value) is not None:
                        _scalar(f"hypers/{group}/{stat}", float(value))
        self._writer.flush()

    def final(self, result: Mapping[str, Any]) -> None:
        """The returned schedules per layer and the training curves of the result document."""
        layers: Sequence[str] = (result.get("net") or {}).get("layer_names", [])
        final = (result.get("hyperparameters") or {}).get("final") or {}
        with self._writer.as_default():
            for group, doc in final.items():
                table = doc.get("per_step_per_layer")
                if table is None:
                    continue
                for t, row in enumerate(table):
                    for layer, value in zip(layers, row, strict=False):
                        _scalar(f"schedule/{group}/{layer}", float(value), step=t)
            scales = (final.get("init_scale") or {}).get("value")
            if isinstance(scales, list) and len(scales) == len(layers):
                for layer, value in zip(layers, scales, strict=True):
                    _scalar(f"init_scale/{layer}", float(value), step=0)
            curves = result.get("training_curves") or {}
            for key in ("initial", "final"):
                for t, value in enumerate(curves.get(key) or []):
                    _scalar(f"training/{key}", float(value), step=t)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()

    def files(self) -> list[Path]:
        """The event files written."""
        return sorted(self.logdir.glob("events.out.tfevents.*"))
