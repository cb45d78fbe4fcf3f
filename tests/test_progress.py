"""The progress renderer shared by `revhpo tune` and `revhpo submit --wait`."""

from __future__ import annotations

import io

import pytest
from revhpo.service.progress import ProgressDisplay, format_duration, format_event, summary_lines

EVENTS = [
    {"type": "claimed", "attempt": 1, "worker": "w1"},
    {"type": "step", "phase": "compile", "meta_iteration": 0, "step": 0, "steps": 50},
    {"type": "step", "phase": "compile", "meta_iteration": 0, "step": 0, "steps": 50},
    {"type": "step", "phase": "forward", "meta_iteration": 0, "step": 10, "steps": 50},
    {"type": "step", "phase": "reverse", "meta_iteration": 0, "step": 50, "steps": 50},
    {
        "type": "meta",
        "meta_iteration": 0,
        "meta_iterations": 3,
        "val_loss": 0.5,
        "train_loss": 0.25,
        "test_loss": 0.123456,
        "test_acc": 0.987654,
        "val_acc": 0.9,
        "grad_norm": 1.0,
        "diverged": False,
        "eta_s": 125.0,
        "compile_s": 30.0,
    },
    {"type": "checkpoint", "file": "checkpoint.npz"},
    {"type": "step", "phase": "forward", "meta_iteration": 1, "step": 20, "steps": 50},
    {
        "type": "meta",
        "meta_iteration": 1,
        "meta_iterations": 3,
        "val_loss": 0.4,
        "test_loss": 0.111111,
        "diverged": True,
        "eta_s": 61.0,
    },
    {"type": "evaluation", "initial": {"test_loss_mean": 0.2}, "final": {"test_loss_mean": 0.1}},
    {"type": "finished", "status": "completed"},
    {"type": "done", "state": "succeeded"},
]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _no_test_metric(text: str) -> None:
    for bad in ("test", "0.1234", "0.9876", "0.1111", "98.8"):
        assert bad not in text, (bad, text)


def test_format_duration():
    assert [format_duration(s) for s in (0, 42.4, 59.6, 61, 125, 3599, 3600, 3725)] == [
        "0s",
        "42s",
        "1m00s",
        "1m01s",
        "2m05s",
        "59m59s",
        "1h00m",
        "1h02m",
    ]
    for unknown in (None, float("nan"), float("inf"), -1.0):
        assert format_duration(unknown) == "--"


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    with ProgressDisplay(out, total=3) as show:
        assert show.live is False
        for ev in EVENTS:
            show(ev)
    lines = out.getvalue().splitlines()
    assert lines == [
        "running (attempt 1, worker w1)",
        "compiling the training steps (not counted in the ETA)",  # once
        "meta-iteration 1/3  val loss 0.5000  train loss 0.2500  eta 2m05s",
        "meta-iteration 2/3  val loss 0.4000  DIVERGED  eta 1m01s",
        "evaluating initial and tuned hyperparameters on held-out training seeds",
        "job succeeded",
    ]
    _no_test_metric(out.getvalue())


def test_live_bar_on_a_terminal():
    out = _Tty()
    show = ProgressDisplay(out, total=3)
    assert show.live is True
    show(EVENTS[3])  # a step before any meta-iteration: no ETA yet, none computed
    status = show._status(("forward", 0, 10, 50))
    assert "eta --" in status and "meta-iteration 1/3 | forward 10/50" in status
    for ev in EVENTS:
        show(ev)
        _no_test_metric(show._status(None))
    assert "eta 1m01s" in show._status(None) and "2/3 meta-iterations done" in show._status(None)
    show.close()
    text = out.getvalue()
    assert "meta-iteration 1/3  val loss 0.5000" in text  # kept above the bar
    assert "meta-iteration 2/3" in text and "job succeeded" in text
    _no_test_metric(text)


@pytest.mark.parametrize(
    "event",
    [
        {"type": "step", "phase": "forward", "meta_iteration": 0, "step": 1, "steps": 5},
        {"type": "checkpoint", "path": "/x/checkpoint.npz"},
        {"type": "something-new"},
    ],
)
def test_events_without_a_line(event):
    assert format_event(event) is None


def test_summary_lines_report_the_final_evaluation():
    result = {
        "status": "completed",
        "n_hyperparameters": 12,
        "meta_iterations": 3,
        "timings": {"total_s": 75.0},
        "evaluation": {
            "seeds": [1, 2],
            "initial": {"val_loss_mean": 0.5, "test_loss_mean": 0.6, "test_loss_std": 0.01},
            "final": {"val_loss_mean": 0.3, "test_loss_mean": 0.4, "test_acc_mean": 0.9},
        },
    }
    assert summary_lines(result) == [
        "status: completed",
        "tuned hyperparameters: 12; meta-iterations: 3; time 1m15s",
        "initial: val loss 0.5000, test loss 0.6000 ± 0.0100 (mean over 2 held-out training seeds)",
        "  final: val loss 0.3000, test loss 0.4000, test acc 90.0% (mean over 2 held-out "
        "training seeds)",
    ]


def test_start_and_selection_lines():
    start = {
        "type": "start",
        "kind": "coarse",
        "chosen": {"learning_rate": 1.2, "momentum": 0.8},
        "points": [{}] * 28,
        "select_loss": 0.09012,
    }
    assert format_event(start) == (
        "coarse start: best of 28 constant settings is learning_rate 1.2, momentum 0.8 "
        "(selection estimate 0.0901)"
    )
    meta = {
        "type": "meta",
        "meta_iteration": 4,
        "meta_iterations": 30,
        "select_loss": 0.0855,
        "best_select_loss": 0.0844,
        "best_iteration": 3,
        "test_loss": 0.01,
    }
    line = format_event(meta)
    assert "select 0.0855" in line and "best 0.0844 @3" in line and "test" not in line
    result = {"status": "completed", "selection": {"reason": "iterate 3 of 9 has the lowest"}}
    assert summary_lines(result)[-1] == "returned: iterate 3 of 9 has the lowest"
