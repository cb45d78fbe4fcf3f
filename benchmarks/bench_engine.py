"""Exact engine vs the fastest plain TensorFlow loop, five fresh processes per size.

Runs ``revhpo bench --json`` (each run a fresh process: its own tracing, compiling and
timing) for the default MLP 784-50-50-10 and for ``--large`` (784-1000-1000-10, T = 20),
alternating the two sizes, and writes the min–max of every figure over the runs into
BENCHMARKS.md under "Exact engine vs the fastest plain loop" (the section is replaced when it
exists, inserted before the optimizers section otherwise; the rest of the file is kept). The
section names the commit and the engine files it measured, so a re-run after the engine
changes replaces it.

Run: ``TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python benchmarks/bench_engine.py [--runs 5]
[--no-write] [--raw FILE] [--quick]`` (about 20 minutes on 2 cores with the defaults).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
HEADING = "## Exact engine vs the fastest plain loop"
INSERT_BEFORE = "## optimizers: reversible SGD-momentum and hypergradients"
COMMAND = "TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python benchmarks/bench_engine.py"
#: The files of the exact engine and its plain reference (what a re-run is for).
ENGINE_FILES = (
    "optimizers/reversible.py",
    "optimizers/problem.py",
    "optimizers/unrolled.py",
    "precise/buffer.py",
    "precise/array.py",
)
#: size name → the extra ``revhpo bench`` arguments. The cold first hypergradient does not
#: depend on the size, so the large runs skip it.
SIZES = {
    "default": ["--memory-steps", ""],
    "large": ["--large", "--memory-steps", "", "--cold-spec", "", "--no-replicas"],
    # the digits example's net and batch (examples/mlp_digits.yaml), on the bench's data
    "digits": ["--sizes", "64,50,50,10", "--batch", "50", "--memory-steps", "", "--cold-spec", ""],
}
QUICK = {
    "default": ["--steps", "10", "--repeats", "2"],
    "large": ["--steps", "2", "--repeats", "2"],
    "digits": ["--steps", "10", "--repeats", "2"],
}

#: (key, label, format) rows of the table; a key "a.b" reads ``fig["a"]["b"]``.
ROWS = (
    ("forward_over_fastest_plain", "`forward_over_fastest_plain`", "{:.2f}"),
    ("reverse_over_fastest_plain", "`reverse_over_fastest_plain`", "{:.2f}"),
    ("forward_over_plain_per_step", "`forward_over_plain_per_step`", "{:.2f}"),
    ("reverse_over_plain_per_step", "`reverse_over_plain_per_step`", "{:.2f}"),
    ("per_step_over_fastest_plain", "one step per call ÷ fastest plain", "{:.2f}"),
    ("plain_loop_s.while_loop", "`plain_loop_s`: whole loop, `tf.while_loop`", "{:.3f} s"),
    ("plain_loop_s.xla", "`plain_loop_s`: whole loop, XLA", "{:.3f} s"),
    ("plain_loop_s.per_step", "`plain_loop_s`: one compiled step per call", "{:.3f} s"),
    ("forward_s", "exact forward", "{:.3f} s"),
    ("reverse_s", "exact reverse", "{:.3f} s"),
    ("bits_over_bound", "`bits_over_bound`", "{:.3f}"),
    (
        "replicas_8_over_1",
        "`replicas_8_over_1` (8 replicas together ÷ 1, forward + reverse)",
        "{:.2f}",
    ),
    ("replicas_s.1", "1 replica, forward + reverse", "{:.3f} s"),
    ("replicas_s.8", "8 replicas together, forward + reverse", "{:.3f} s"),
    (
        "first_hypergradient_s",
        "`first_hypergradient_s` (cold process, empty XLA cache)",
        "{:.1f} s",
    ),
    (
        "first_hypergradient_warm_cache_s",
        "`first_hypergradient_warm_cache_s` (cold process, warm XLA cache)",
        "{:.1f} s",
    ),
)


def _git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return out.stdout.strip() if out.returncode == 0 else ""


def engine_identity() -> dict:
    """The commit (``+dirty`` when tracked files differ from it), the engine files that differ
    from the commit, and one hash of the engine files' current contents."""
    head = _git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    changed = [
        f for f in _git("diff", "--name-only", "HEAD", "--", *ENGINE_FILES).splitlines() if f
    ]
    digest = hashlib.sha256()
    for name in ENGINE_FILES:
        path = ROOT / name
        digest.update(name.encode() + b"\0" + (path.read_bytes() if path.exists() else b""))
    return {
        "commit": head + ("+dirty" if dirty else ""),
        "engine_files_changed": changed,
        "engine_sha256": digest.hexdigest()[:12],
    }


def run_once(size: str, quick: bool) -> dict:
    """One ``revhpo bench --json`` in a fresh process; the figures, or ``{"error": ...}``."""
    cmd = [sys.executable, "-m", "revhpo", "bench", "--json", *SIZES[size]]
    cmd += QUICK[size] if quick else []
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    load = os.getloadavg()[0]
    engine = engine_identity()["engine_sha256"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=7200)
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {out.returncode}: {tail}", "load_before": load, "engine": engine}
    fig = json.loads(out.stdout)
    fig["load_before"] = load
    fig["engine"] = engine
    fig["load_after"] = os.getloadavg()[0]
    return fig


def _get(fig: dict, key: str):
    for part in key.split("."):
        fig = fig.get(part) if isinstance(fig, dict) else None
    return fig


def _span(figs: list[dict], key: str, fmt: str) -> str:
    vals = [v for v in (_get(f, key) for f in figs) if isinstance(v, int | float)]
    if not vals:
        return "–"
    lo, hi = fmt.format(min(vals)), fmt.format(max(vals))
    return lo if lo == hi else f"{lo.removesuffix(' s')}–{hi}"


def render(
    results: dict[str, list[dict]],
    ident: dict,
    runs: int,
    quick: bool,
    ident_after: dict | None = None,
) -> str:
    """The BENCHMARKS.md section (heading included, ends with a blank line)."""
    ok = {size: [f for f in figs if "error" not in f] for size, figs in results.items()}
    heads = []
    for size in results:
        f = ok[size][0] if ok[size] else None
        if f is None:
            heads.append(f"{size} (every run failed)")
            continue
        heads.append(
            f"MLP {'-'.join(map(str, f['sizes']))} (N = {f['n_params']:,}), T = {f['steps']}"
        )
    lines = [
        HEADING,
        "",
        f"Written by `{COMMAND}{' --quick' if quick else ''}` (do not edit by hand: a re-run "
        "replaces this section). Each column is "
        f"{runs} run{'s' if runs != 1 else ''} of `revhpo bench --json` (`--large "
        "--no-replicas` for the second, `--sizes 64,50,50,10 --batch 50` for the third: the "
        "digits example's net), each a fresh process, the sizes taking turns; every cell is "
        "the min–max over the runs of that run's figure (–: not measured at that size).",
        "",
        f"Measured: commit `{ident['commit']}`; engine files "
        f"({', '.join(f'`{f}`' for f in ENGINE_FILES)}) "
        + (
            f"changed from that commit: {', '.join(ident['engine_files_changed'])}"
            if ident["engine_files_changed"]
            else "as committed"
        )
        + f", content hash `{ident['engine_sha256']}`; "
        f"{datetime.date.today().isoformat()}, TensorFlow {_tf_version()}, "
        f"{os.cpu_count()} CPU cores; load average before the runs "
        + _span(
            [f for figs in results.values() for f in figs], "load_before", "{:.1f}"
        ).removesuffix(" s")
        + ".",
        "",
        "| figure | " + " | ".join(heads) + " |",
        "|---|" + "---|" * len(heads),
    ]
    for key, label, fmt in ROWS:
        lines.append(f"| {label} | " + " | ".join(_span(ok[s], key, fmt) for s in results) + " |")
    fastest = []
    for size in results:
        names = [f["fastest_plain"] for f in ok[size]]
        fastest.append(", ".join(f"{n} ×{names.count(n)}" for n in sorted(set(names))) or "–")
    lines.append("| fastest plain loop (runs) | " + " | ".join(fastest) + " |")
    failed = {s: [f["error"] for f in figs if "error" in f] for s, figs in results.items()}
    every = [f for figs in ok.values() for f in figs]
    repeats = "/".join(sorted({str(f["repeats"]) for f in every})) or "?"
    cold_steps = (
        "/".join(
            sorted(
                {
                    str(f["first_hypergradient"]["steps"])
                    for f in every
                    if f.get("first_hypergradient")
                }
            )
        )
        or "?"
    )
    lines += [
        "",
        "How each run measures (`revhpo bench`, `optimizers/benchmark.py: measure_engine`): "
        "same net, synthetic teacher-labelled data (1,000 training examples), batch 200 "
        "(50 for the digits net), "
        "float64, α = 0.1, γ = 0.9 and T for all. Plain loops, in hypergrad's convention "
        "(`v ← γv − (1−γ)∇L`, `w ← w + αv`): the whole T-step loop in one `tf.function` "
        "(`tf.while_loop`), the same with `jit_compile=True`, and one compiled step per Python "
        "call; all three, and the exact engine, read the same `[T, B]` minibatch index table "
        "made before the timed runs. Each of the four runs once untimed (tracing, compiling), "
        f"then {repeats} rounds run each once in a rotated order; each time is the median of "
        f"its {repeats}. "
        "Ratios divide the exact forward and reverse times by the faster whole loop. "
        "`first_hypergradient_s`: a fresh `python -c` process that imports revhpo, builds "
        f"`examples/mlp_digits.yaml`'s problem (digits, MLP 64-50-50-10, T = {cold_steps}, 30 "
        "hyperparameters: α and γ at 4 knots per layer, λ and init scale per layer; the engine's "
        "work does not depend on the granularity) and computes its first hypergradient; wall "
        "time from the process's "
        "start, imports, tracing and compiling included, with `REVHPO_XLA_CACHE` pointing at "
        "a new empty folder (a first run on this machine); `first_hypergradient_warm_cache_s` "
        "is a second such process right after, whose XLA cache the first one filled (a later "
        "job of the same net). Not size-dependent: measured with the default size only. "
        "Replicas: `hypergradients` trains and reverses 8 replicas (8 minibatch orders), each "
        "running the one-replica programs in its own thread (as many threads as cores), so "
        "each is bit for bit its own run (`tests/test_reversible.py`); the time of one "
        "forward + reverse of 8 over that of 1 (untimed once, then the median of the rounds). "
        'The section "optimizers: reversible SGD-momentum and hypergradients" '
        "below measured earlier engines against one compiled step per call "
        "(`*_over_plain_per_step` here).",
    ]
    seen = [f.get("engine") for figs in results.values() for f in figs]
    if ident_after:
        seen.append(ident_after["engine_sha256"])
    if len(set(seen) | {ident["engine_sha256"]}) > 1:
        lines += [
            "",
            "**The engine files changed while the runs were going** (content hash "
            f"`{ident['engine_sha256']}` at the start; before the runs and at the end: "
            + ", ".join(f"`{h}` ×{seen.count(h)}" for h in dict.fromkeys(seen))
            + "): the runs measured different engines.",
        ]
    for size, errors in failed.items():
        if errors:
            lines += ["", f"Failed {size} runs ({len(errors)}): " + "; ".join(errors)]
    return "\n".join(lines) + "\n\n"


def _tf_version() -> str:
    out = subprocess.run(
        [sys.executable, "-c", "import importlib.metadata as m; print(m.version('tensorflow'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "unknown"


def write_section(
    section: str,
    path: Path = BENCHMARKS_MD,
    *,
    heading: str = HEADING,
    insert_before: str = INSERT_BEFORE,
) -> None:
    """Replace the section ``heading`` in ``path`` (up to the next ``## `` heading), or insert
    it before the ``insert_before`` heading (at the end when that is missing)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is not None:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
    else:
        start = next(
            (i for i, line in enumerate(lines) if line.rstrip() == insert_before), len(lines)
        )
        end = start
        if start == len(lines) and not text.endswith("\n\n"):
            section = ("\n" if text.endswith("\n") else "\n\n") + section
    path.write_text("".join(lines[:start]) + section + "".join(lines[end:]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="runs per size")
    p.add_argument("--quick", action="store_true", help="1 run, small T; implies --no-write")
    p.add_argument("--no-write", action="store_true", help="print the section only")
    p.add_argument("--raw", default=None, help="also write every run's figures to this JSON")
    args = p.parse_args()
    runs = 1 if args.quick else args.runs
    ident = engine_identity()
    results: dict[str, list[dict]] = {size: [] for size in SIZES}
    for i in range(runs):
        for size in SIZES:
            fig = run_once(size, args.quick)
            results[size].append(fig)
            summary = fig.get("error") or (
                f"forward {fig['forward_over_fastest_plain']:.2f}, reverse "
                f"{fig['reverse_over_fastest_plain']:.2f} × fastest plain ({fig['fastest_plain']})"
            )
            print(f"run {i + 1}/{runs} {size}: {summary}", flush=True)
    section = render(results, ident, runs, args.quick, engine_identity())
    print("\n" + section)
    if args.raw:
        Path(args.raw).parent.mkdir(parents=True, exist_ok=True)
        Path(args.raw).write_text(json.dumps({"engine": ident, "runs": results}, indent=1))
    if not (args.quick or args.no_write):
        write_section(section)
        print(f"written to {BENCHMARKS_MD}")
    return 1 if any("error" in f for figs in results.values() for f in figs) else 0


if __name__ == "__main__":
    sys.exit(main())
