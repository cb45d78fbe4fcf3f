"""The summary a job listing shows of each result document (`schemas.result_summary`)."""

from __future__ import annotations

import pytest
from revhpo.service.schemas import result_summary


@pytest.mark.parametrize(
    "result",
    [
        None,
        [],
        "x",
        {},
        {"status": 3, "meta_iterations": True, "selection": [], "evaluation": "x"},
        {"evaluation": {"final": {"test_loss_mean": float("nan"), "val_loss_mean": "1"}}},
        {"evaluation": {"seeds": 3, "initial": None, "final": {"test_acc_mean": False}}},
    ],
)
def test_a_summary_of_a_malformed_result_keeps_only_what_is_well_formed(result):
    """A worker's result document is any JSON object: its summary never fails, and holds
    only finite numbers of the right kind (nothing at all here)."""
    assert result_summary(result) is None


def test_a_summary_keeps_the_well_formed_figures_of_a_partial_result():
    doc = {
        "status": "stopped",
        "evaluation": {"final": {"test_loss_mean": 1, "val_loss_mean": 1e999}},
    }
    assert result_summary(doc) == {"status": "stopped", "final": {"test_loss": 1.0}}
