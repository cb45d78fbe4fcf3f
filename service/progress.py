"""Progress of a tuning job on the console: one renderer for ``revhpo tune`` (events from
:func:`revhpo.service.tuning.tune`'s callback) and ``revhpo submit --wait`` / ``revhpo demo``
(the same events read from the API's Server-Sent Events, plus the queue's own: ``claimed``,
``lease_expired``, ``attempt_failed``, ``released``, ``done``).

On a terminal it draws a live bar (:mod:`rich`) over the meta-iterations, advanced by the
training steps within each one, and keeps one line per finished meta-iteration above it;
elsewhere (a pipe, a log file, CI) it writes plain log lines only.

What it shows is what may be selected on: validation and training losses. Test metrics
(``test_loss``, ``test_acc``) are never shown while tuning runs. The ETA is the one the
tuning loop reports (``eta_s`` of the last ``meta`` event, from tuning time only), never one
computed here, so compilation time does not distort it.
"""

from __future__ import annotations

import math
import sys
from types import TracebackType
from typing import Any, TextIO

__all__ = ["ProgressDisplay", "format_duration", "format_event", "summary_lines"]

# Keys of a `meta` event that may be shown, in order, with their labels.
_SHOWN = (("val_loss", "val loss"), ("train_loss", "train loss"), ("select_loss", "select"))


def format_duration(seconds: float | None) -> str:
    """A duration for people: ``42s``, ``3m05s``, ``1h02m``; ``--`` when unknown.

    Args:
        seconds: the duration (None, NaN or negative: unknown).
    """
    if seconds is None or not isinstance(seconds, int | float) or not math.isfinite(seconds):
        return "--"
    if seconds < 0:
        return "--"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _meta_line(ev: dict[str, Any]) -> str:
    parts = [f"meta-iteration {ev['meta_iteration'] + 1}/{ev.get('meta_iterations', '?')}"]
    for key, label in _SHOWN:
        value = ev.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            parts.append(f"{label} {value:.4f}")
    best = ev.get("best_select_loss")
    if isinstance(best, int | float) and math.isfinite(best):
        parts.append(f"best {best:.4f} @{ev.get('best_iteration')}")
    if ev.get("diverged"):
        parts.append("DIVERGED")
    parts.append(f"eta {format_duration(ev.get('eta_s'))}")
    return "  ".join(parts)


def _start_line(ev: dict[str, Any]) -> str:
    loss = ev.get("select_loss")
    est = f"{loss:.4f}" if isinstance(loss, int | float) else "-"
    if ev.get("kind") != "coarse":
        return f"starting from the init values (selection estimate {est})"
    chosen = ", ".join(f"{k} {v:.4g}" for k, v in (ev.get("chosen") or {}).items())
    n = len(ev.get("points") or [])
    return f"coarse start: best of {n} constant settings is {chosen} (selection estimate {est})"


def format_event(ev: dict[str, Any]) -> str | None:
    """One plain line describing a progress event, or None for events not worth a line.

    Never shows a test metric.
    """
    kind = ev.get("type")
    if kind == "meta" and "meta_iteration" in ev:
        return _meta_line(ev)
    if kind == "start":
        return _start_line(ev)
    if kind == "step" and ev.get("phase") == "compile":
        return "compiling the training steps (not counted in the ETA)"
    if kind == "claimed":
        return f"running (attempt {ev.get('attempt')}, worker {ev.get('worker')})"
    if kind == "lease_expired":
        return f"worker lost; job {ev.get('state')} again (attempt {ev.get('attempt')})"
    if kind == "attempt_failed":
        return f"attempt failed, will retry: {ev.get('reason')}"
    if kind == "released":
        return "handed back by its worker; queued again"
    if kind == "evaluation":
        return "evaluating initial and tuned hyperparameters on held-out training seeds"
    if kind == "done":
        if "state" in ev:  # the queue's: the job is finished
            return f"job {ev['state']}" + (f": {ev['reason']}" if ev.get("reason") else "")
        if "status" in ev:  # the tuning loop's
            return f"tuning {ev['status']}" + (
                f"; result in {ev['result']}" if "result" in ev else ""
            )
    return None


def summary_lines(result: dict[str, Any]) -> list[str]:
    """Human summary of a finished run's result document (``result.json``)."""
    timings = result.get("timings") or {}
    lines = [
        f"status: {result.get('status')}"
        + (f" ({result['stop_reason']})" if result.get("stop_reason") else ""),
        f"tuned hyperparameters: {result.get('n_hyperparameters')}; meta-iterations: "
        f"{result.get('meta_iterations')}; time {format_duration(timings.get('total_s'))}",
    ]
    ev = result.get("evaluation") or {}
    n = len(ev.get("seeds") or [])
    for key in ("initial", "final"):
        e = ev.get(key) or {}
        if "val_loss_mean" not in e:
            continue
        line = f"{key:>7}: val loss {e['val_loss_mean']:.4f}"
        if isinstance(e.get("test_loss_mean"), int | float):
            line += f", test loss {e['test_loss_mean']:.4f}"
            if isinstance(e.get("test_loss_std"), int | float):
                line += f" ± {e['test_loss_std']:.4f}"
        if isinstance(e.get("test_acc_mean"), int | float):
            line += f", test acc {100 * e['test_acc_mean']:.1f}%"
        lines.append(line + f" (mean over {n} held-out training seeds)")
    reason = (result.get("selection") or {}).get("reason")
    if reason:
        lines.append(f"returned: {reason}")
    return lines


class ProgressDisplay:
    """Render progress events: a live bar on a terminal, plain log lines elsewhere.

    Call it with each event dict (it is a ``tune`` callback); close it (or use it as a
    context manager) when the run ends.

    Args:
        stream: where to draw (default: ``sys.stderr`` at construction).
        total: meta-iterations of the run, if known before its first ``meta`` event.
        live: force the live bar (True) or plain lines (False); default: whether ``stream``
            is a terminal.
    """

    def __init__(
        self, stream: TextIO | None = None, *, total: int | None = None, live: bool | None = None
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.live = bool(isatty and isatty()) if live is None else live
        self.total = total
        self.meta: dict[str, Any] = {}
        self._phase = "starting"
        self._compile_said = False
        self._progress: Any = None
        self._task: Any = None
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn

            console = Console(file=self.stream, highlight=False)
            self.live = console.is_terminal
            if self.live:
                self._progress = Progress(
                    SpinnerColumn(),
                    BarColumn(),
                    TextColumn("{task.description}"),
                    console=console,
                    transient=True,
                )
                self._task = self._progress.add_task(self._status(None), total=total)
                self._progress.start()

    # ------------------------------------------------------------------ events
    def __call__(self, event: dict[str, Any]) -> None:
        """Handle one progress event (unknown kinds are ignored)."""
        kind = event.get("type")
        if kind == "meta" and "meta_iteration" in event:
            self.meta = event
            self.total = event.get("meta_iterations", self.total)
            self._update(event["meta_iteration"] + 1.0, None)
            self._line(format_event(event))
        elif kind == "step":
            phase = str(event.get("phase", ""))
            if phase == "compile" and not self._compile_said:
                self._compile_said = True
                self._line(format_event(event))
            it = int(event.get("meta_iteration", 0))
            step, steps = int(event.get("step", 0)), max(int(event.get("steps", 1)), 1)
            frac = {"forward": 0.5 * step / steps, "reverse": 0.5 + 0.5 * step / steps}
            self._update(it + frac.get(phase, 0.0), (phase, it, step, steps))
        elif kind in ("done", "finished"):
            self._update(float(self.total) if self.total else None, None, phase="done")
            self._line(format_event(event))
        else:
            if kind == "evaluation":
                self._update(None, None, phase="evaluating")
            self._line(format_event(event))

    def _status(self, step: tuple[str, int, int, int] | None) -> str:
        m = self.meta
        total = self.total or "?"
        if step:  # inside a meta-iteration
            phase, it, i, n = step
            parts = [f"meta-iteration {it + 1}/{total}"]
            parts.append("compiling" if phase == "compile" else f"{phase} {i}/{n}")
        else:
            done = int(m["meta_iteration"]) + 1 if "meta_iteration" in m else 0
            parts = [f"{done}/{total} meta-iterations done"]
            if self._phase not in ("", "starting"):
                parts.append(self._phase)
        val = m.get("val_loss")
        parts.append(f"val loss {val:.4f}" if isinstance(val, int | float) else "val loss -")
        if m.get("diverged"):
            parts.append("DIVERGED")
        parts.append(f"eta {format_duration(m.get('eta_s'))}")
        return " | ".join(parts)

    def _update(
        self, completed: float | None, step: tuple[str, int, int, int] | None, phase: str = ""
    ) -> None:
        self._phase = phase
        if self._progress is None:
            return
        kw: dict[str, Any] = {"description": self._status(step)}
        if self.total:
            kw["total"] = self.total
        if completed is not None:
            kw["completed"] = completed
        self._progress.update(self._task, **kw)

    def _line(self, text: str | None) -> None:
        if not text:
            return
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Remove the live bar (the meta-iteration lines stay)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
