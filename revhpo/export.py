"""Tuned hyperparameters out of revhpo: named, per step and per layer, in JSON, CSV or NPZ.

A run's ``result.json`` records every group at the granularity it was tuned at and expanded to
every step and layer (``per_step_per_layer``). :func:`load_schedules` turns that into
:class:`TunedSchedules`, with named axes (step, layer name) and the training convention the
values were tuned under, which :mod:`revhpo.keras` applies to a Keras model. TensorFlow-free.

The convention (plain float SGD with momentum, per weight tensor of layer ``l`` at step ``t``)::

    v ← γ[t, l] · v − (1 − γ[t, l]) · (∇L_task(w) + λ[t, l] · w)
    w ← w + α[t, l] · v

starting from ``v = 0`` and ``w = init_scale[l] · (the net's default initial weights)``;
``L_task`` is the mean task loss of the minibatch (softmax cross-entropy for classifiers).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CONVENTION", "FORMATS", "ExportError", "TunedSchedules", "load_schedules"]

CONVENTION = (
    "v <- gamma[t,l]*v - (1 - gamma[t,l])*(grad L_task(w) + lambda[t,l]*w); "
    "w <- w + alpha[t,l]*v; v0 = 0; w0 = init_scale[l] * default init"
)
#: ``revhpo export --format`` choices (``keras`` is the JSON that ``revhpo.keras`` reads).
FORMATS = ("json", "keras", "csv", "npz")


class ExportError(ValueError):
    """A result document that holds no exportable schedules (the message says why)."""


@dataclass(frozen=True)
class TunedSchedules:
    """Tuned hyperparameters with named axes.

    Attributes:
        layer_names: the net's layers, in order (L names).
        learning_rate, momentum: ``[T, L]`` values per step and layer.
        weight_decay: ``[T, L]`` (None when tuned per weight: see ``weight_decay_per_weight``).
        init_scale: ``[L]`` init scale per layer.
        weight_decay_per_weight: per weight tensor name, its ``[N_k]`` λ values (per-weight
            granularity only).
        param_names: the net's weight tensors (``layer/kind``), with ``param_layers``.
        source: where the values came from (job name, which iterate, spec granularities).
    """

    layer_names: list[str]
    learning_rate: np.ndarray
    momentum: np.ndarray
    weight_decay: np.ndarray | None
    init_scale: np.ndarray
    param_names: list[str] = field(default_factory=list)
    param_layers: list[int] = field(default_factory=list)
    weight_decay_per_weight: dict[str, np.ndarray] | None = None
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        """T, the training steps the schedules cover."""
        return int(self.learning_rate.shape[0])

    def layer_index(self, name: str) -> int:
        """The index of layer ``name`` (ValueError naming the known layers)."""
        if name not in self.layer_names:
            raise ValueError(f"unknown layer; known: {self.layer_names}. Received: {name!r}")
        return self.layer_names.index(name)

    # -- formats -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The labelled JSON document: ``{group: {layer: [T values]}}`` plus metadata."""

        def per_layer(a: np.ndarray) -> dict[str, list[float]]:
            return {n: a[:, i].tolist() for i, n in enumerate(self.layer_names)}

        doc: dict[str, Any] = {
            "format": "revhpo.schedules/1",
            "convention": CONVENTION,
            "steps": self.steps,
            "layers": list(self.layer_names),
            "learning_rate": per_layer(self.learning_rate),
            "momentum": per_layer(self.momentum),
            "weight_decay": None if self.weight_decay is None else per_layer(self.weight_decay),
            "init_scale": dict(zip(self.layer_names, self.init_scale.tolist(), strict=True)),
            "param_names": list(self.param_names),
            "param_layers": list(self.param_layers),
            "source": self.source,
        }
        if self.weight_decay_per_weight is not None:
            doc["weight_decay_per_weight"] = {
                k: v.tolist() for k, v in self.weight_decay_per_weight.items()
            }
        return doc

    def to_csv(self) -> str:
        """One row per (step, layer): ``step,layer,learning_rate,momentum,weight_decay,
        init_scale`` (weight decay empty when it is per weight)."""
        buf = io.StringIO()
        out = csv.writer(buf, lineterminator="\n")
        out.writerow(["step", "layer", "learning_rate", "momentum", "weight_decay", "init_scale"])
        for t in range(self.steps):
            for i, name in enumerate(self.layer_names):
                lam = "" if self.weight_decay is None else repr(float(self.weight_decay[t, i]))
                out.writerow(
                    [
                        t,
                        name,
                        repr(float(self.learning_rate[t, i])),
                        repr(float(self.momentum[t, i])),
                        lam,
                        repr(float(self.init_scale[i])),
                    ]
                )
        return buf.getvalue()

    def to_npz_bytes(self) -> bytes:
        """An ``.npz``: ``learning_rate``, ``momentum``, ``weight_decay`` (``[T, L]``, NaN when
        per weight), ``init_scale`` ``[L]``, ``layer_names``, and the JSON document
        (``schedules_json``, uint8)."""
        buf = io.BytesIO()
        lam = np.full_like(self.learning_rate, np.nan) if self.weight_decay is None else None
        np.savez(
            buf,
            learning_rate=self.learning_rate,
            momentum=self.momentum,
            weight_decay=self.weight_decay if lam is None else lam,
            init_scale=self.init_scale,
            layer_names=np.array(self.layer_names),
            schedules_json=np.frombuffer(json.dumps(self.to_dict()).encode(), np.uint8),
        )
        return buf.getvalue()

    def write(self, path: Path | str, fmt: str | None = None) -> Path:
        """Write in ``fmt`` (default: from the suffix: .json, .csv, .npz)."""
        path = Path(path)
        fmt = fmt or path.suffix.lstrip(".")
        if fmt not in FORMATS:
            raise ExportError(f"`format` must be one of {list(FORMATS)}. Received: {fmt!r}")
        if fmt == "npz":
            path.write_bytes(self.to_npz_bytes())
        elif fmt == "csv":
            path.write_text(self.to_csv())
        else:
            path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> TunedSchedules:
        """Inverse of :meth:`to_dict`."""
        if doc.get("format") != "revhpo.schedules/1":
            raise ExportError(
                f"not a revhpo schedules document. Received: format={doc.get('format')!r}"
            )
        names = list(doc["layers"])

        def table(group: Mapping[str, Any]) -> np.ndarray:
            return np.array([group[n] for n in names], np.float64).T

        per_weight = doc.get("weight_decay_per_weight")
        return cls(
            layer_names=names,
            learning_rate=table(doc["learning_rate"]),
            momentum=table(doc["momentum"]),
            weight_decay=None if doc["weight_decay"] is None else table(doc["weight_decay"]),
            init_scale=np.array([doc["init_scale"][n] for n in names], np.float64),
            param_names=list(doc.get("param_names", [])),
            param_layers=list(doc.get("param_layers", [])),
            weight_decay_per_weight=(
                None
                if per_weight is None
                else {k: np.asarray(v, np.float64) for k, v in per_weight.items()}
            ),
            source=dict(doc.get("source", {})),
        )


def _result_document(source: Path | str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if path.is_dir():
        path = path / "result.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read a result document: {exc}. Received: {str(path)!r}") from exc


def load_schedules(source: Path | str | Mapping[str, Any], which: str = "final") -> TunedSchedules:
    """The tuned schedules of a run: a run directory, its ``result.json``, the parsed document,
    or a schedules document written by :meth:`TunedSchedules.to_dict` (``--format json``).

    Args:
        source: see above.
        which: ``final`` (the returned, selected iterate), ``last``, ``start`` or ``initial``.

    Raises:
        ExportError: the document holds no such hyperparameters.
    """
    doc = _result_document(source)
    if doc.get("format") == "revhpo.schedules/1":
        return TunedSchedules.from_dict(doc)
    hp = (doc.get("hyperparameters") or {}).get(which)
    net = doc.get("net") or {}
    if not hp or "layer_names" not in net:
        raise ExportError(
            f"the result has no `hyperparameters.{which}` (or no `net.layer_names`); "
            "is it a revhpo result.json?"
        )
    names = list(net["layer_names"])
    steps = int((doc.get("spec") or {}).get("training", {}).get("steps", 0))

    def expanded(group: str) -> np.ndarray | None:
        g = hp[group]
        if "per_step_per_layer" not in g:
            return None
        a = np.asarray(g["per_step_per_layer"], np.float64)
        if a.shape != (steps, len(names)):
            raise ExportError(
                f"`{which}.{group}.per_step_per_layer` has shape {a.shape}, expected "
                f"{(steps, len(names))}"
            )
        return a

    scale = np.asarray(hp["init_scale"]["value"], np.float64)
    per_weight = None
    if hp["weight_decay"]["granularity"] == "per_weight":
        flat = np.asarray(hp["weight_decay"]["value"], np.float64)
        sizes = [int(np.prod(s)) for s in _param_shapes(doc)]
        parts = np.split(flat, np.cumsum(sizes)[:-1]) if sizes else []
        per_weight = dict(zip(net.get("param_names", []), parts, strict=True))
    lr, mom = expanded("learning_rate"), expanded("momentum")
    if lr is None or mom is None:
        raise ExportError("the result holds no per-step learning rate or momentum")
    return TunedSchedules(
        layer_names=names,
        learning_rate=lr,
        momentum=mom,
        weight_decay=expanded("weight_decay"),
        init_scale=np.broadcast_to(scale, (len(names),)).astype(np.float64),
        param_names=list(net.get("param_names", [])),
        param_layers=list(net.get("param_layers", [])),
        weight_decay_per_weight=per_weight,
        source={
            "name": (doc.get("spec") or {}).get("name"),
            "which": which,
            "iteration": (
                (doc.get("selection") or {}).get("iteration") if which == "final" else None
            ),
            "granularities": {k: v.get("granularity") for k, v in hp.items()},
            "revhpo": (doc.get("versions") or {}).get("revhpo"),
        },
    )


def _param_shapes(doc: Mapping[str, Any]) -> list[list[int]]:
    shapes = (doc.get("net") or {}).get("param_shapes")
    if shapes is None:
        raise ExportError("per-weight weight decay needs `net.param_shapes` in the result")
    return shapes
