"""Tune an MLP's per-layer learning-rate and momentum schedules on scikit-learn's digits with
the library alone (no spec file, no service):

    python examples/library_tuning.py --iterations 10
"""

from __future__ import annotations

import argparse

import numpy as np
from revhpo.nets import build_net
from revhpo.optimizers import (
    ArraySplits,
    HyperGroup,
    Layout,
    Parametrization,
    Tuner,
    TunerConfig,
    TuningProblem,
)
from sklearn.datasets import load_digits


def main(iterations: int, steps: int) -> dict:
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    train, val, test = order[:1000], order[1000:1397], order[1397:]
    mean, std = x[train].mean(0), x[train].std(0) + 1e-8
    x = (x - mean) / std
    data = ArraySplits(x[train], y[train], x[val], y[val], x[test], y[test])

    net = build_net({"family": "mlp", "sizes": [50, 50]}, input_dim=64, output_dim=10)
    groups = {  # a learning-rate and a momentum schedule per layer, 4 knots each
        "learning_rate": HyperGroup("learning_rate", 0.3, True, "per_layer_knots", knots=4),
        "momentum": HyperGroup("momentum", 0.9, True, "per_layer_knots", knots=4),
    }
    problem = TuningProblem(  # half the validation set only selects the returned iterate
        net,
        data,
        Parametrization(groups, Layout.for_net(net, steps)),
        batch_size=50,
        select_fraction=0.5,
    )

    def show(event: dict) -> None:
        if event["type"] == "meta":
            print(f"meta-iteration {event['meta_iteration']}: select {event['select_loss']:.4f}")

    # the defaults: coarse start, 4 seeds per hypergradient, selection on held-out seeds
    outcome = Tuner(problem, TunerConfig(iterations=iterations), callback=show).run()
    tuned = problem.hypers_of(outcome.raw)  # the selected iterate
    print("returned:", outcome.selection["reason"])
    print("learning rate per layer, at 4 knots:", np.round(tuned["learning_rate"]["value"], 3))
    print("momentum per layer, at 4 knots:     ", np.round(tuned["momentum"]["value"], 3))
    before, after = outcome.evaluation["initial"], outcome.evaluation["final"]
    print(
        f"held-out seeds: val loss {before['val_loss_mean']:.4f} -> {after['val_loss_mean']:.4f}; "
        f"test loss {before['test_loss_mean']:.4f} -> {after['test_loss_mean']:.4f}"
    )
    return {"before": before, "after": after, "tuned": tuned}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=10, help="meta-iterations")
    parser.add_argument("--steps", type=int, default=100, help="training steps T")
    args = parser.parse_args()
    main(args.iterations, args.steps)
