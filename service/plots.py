"""PNG plots of a tuning run (matplotlib, Agg backend: no display needed).

- ``schedules.png``: learned learning rate and momentum decay per layer vs training step
  (initial schedule dashed).
- ``meta_curve.png``: objective, training loss and selection estimate per meta-iteration.
- ``training_curves.png``: per-step minibatch training loss before vs after tuning, on the same
  held-out training seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_meta_curve", "plot_schedules", "plot_training_curves", "write_plots"]


def _per_layer_schedule(group: dict[str, Any], steps: int, n_layers: int) -> np.ndarray:
    """A group's natural value as ``[T, L]`` (broadcast over what it does not depend on)."""
    if "per_step_per_layer" in group:
        return np.asarray(group["per_step_per_layer"], np.float64)
    v = np.asarray(group["value"], np.float64)
    g = group["granularity"]
    if g == "scalar":
        return np.full((steps, n_layers), float(v))
    if g == "per_step":
        return np.repeat(v[:, None], n_layers, axis=1)
    if g == "per_layer":
        return np.repeat(v[None, :], steps, axis=0)
    return v  # per_layer_per_step


def plot_schedules(
    path: Path, initial: dict[str, Any], final: dict[str, Any], steps: int, layer_names: list[str]
) -> Path:
    """Learning rate and momentum decay per layer vs step, before (dashed) and after tuning."""
    n_layers = len(layer_names)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    colors = plt.cm.viridis(np.linspace(0, 0.9, n_layers))
    for ax, name, label in (
        (axes[0], "learning_rate", "learning rate α"),
        (axes[1], "momentum", "momentum decay γ"),
    ):
        before = _per_layer_schedule(initial[name], steps, n_layers)
        after = _per_layer_schedule(final[name], steps, n_layers)
        x = np.arange(steps)
        for j in range(n_layers):
            ax.plot(x, after[:, j], color=colors[j], label=layer_names[j])
            ax.plot(x, before[:, j], color=colors[j], ls="--", lw=0.8, alpha=0.6)
        ax.set_xlabel("training step t")
        ax.set_ylabel(label)
        tuned = "tuned" if final[name]["tuned"] else "fixed"
        ax.set_title(
            f"{label}: {final[name]['granularity']}, {tuned} (dashed: initial)", fontsize=10
        )
        if name == "learning_rate" and np.nanmax(after) > 1.01 * np.nanmin(after):
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_meta_curve(path: Path, history: list[dict[str, Any]], selected: int | None = None) -> Path:
    """Objective (validation fit part), training loss and the selection estimate, per
    meta-iteration (no test figures: they belong to the final evaluation only); ``selected``:
    the returned iterate, marked."""
    ok = [h for h in history if not h.get("diverged")]
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    it = [h["iteration"] for h in ok]
    for key, label in (
        ("objective", "objective (validation fit part, mean over the iteration's seeds)"),
        ("train_loss", "training loss (full training set)"),
        ("select_loss", "selection estimate (held-out part and seeds)"),
    ):
        ys = [h.get(key) for h in ok]
        if any(y is not None for y in ys):
            ax.plot(it, [np.nan if y is None else y for y in ys], marker=".", label=label)
    val = np.array([np.nan if h.get("objective") is None else h["objective"] for h in ok])
    if len(val) >= 10:  # the objective is noisy across training seeds: show a running mean
        k = 5
        smooth = np.convolve(val, np.ones(k) / k, mode="valid")
        ax.plot(it[k - 1 :], smooth, color="C0", lw=2.5, alpha=0.5, label="objective, mean of 5")
    if selected is not None:
        ax.axvline(selected, color="C2", lw=1.2, ls="--", label=f"returned: iterate {selected}")
    bad = [h["iteration"] for h in history if h.get("diverged")]
    for b in bad:
        ax.axvline(b, color="red", lw=0.8, ls=":")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("loss after T training steps")
    if ok:
        ax.set_yscale("log")
    title = "meta-learning curve"
    if bad:
        title += f" (red: {len(bad)} diverged)"
    ax.set_title(title)
    if ok:
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_training_curves(path: Path, curves: dict[str, Any]) -> Path:
    """Per-step minibatch training loss with the initial vs the tuned hyperparameters."""
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for key, label in (("initial", "before tuning"), ("final", "after tuning")):
        ys = curves.get(key)
        if ys:
            ax.plot(np.arange(len(ys)), [np.nan if y is None else y for y in ys], label=label)
    ax.set_xlabel("training step t")
    ax.set_ylabel("minibatch training loss")
    ax.set_yscale("log")
    ax.set_title(f"training curves on held-out training seed {curves.get('seed')}")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def write_plots(out_dir: Path, result: dict[str, Any]) -> dict[str, str]:
    """Write all plots of a ``result.json`` document into ``out_dir``; returns name → file."""
    out_dir = Path(out_dir)
    steps = int(result["spec"]["training"]["steps"])
    files = {}
    hp = result["hyperparameters"]
    files["schedules"] = plot_schedules(
        out_dir / "schedules.png", hp["initial"], hp["final"], steps, result["net"]["layer_names"]
    ).name
    selected = (result.get("selection") or {}).get("iteration")
    files["meta_curve"] = plot_meta_curve(
        out_dir / "meta_curve.png", result["history"], selected
    ).name
    if result.get("training_curves", {}).get("initial"):
        files["training_curves"] = plot_training_curves(
            out_dir / "training_curves.png", result["training_curves"]
        ).name
    return files
