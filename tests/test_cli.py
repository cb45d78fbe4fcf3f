"""The `revhpo` command line explains itself: real subprocesses, as a user runs them.

Help with defaults, `--version`, `keys` without an action, a connection error naming the URL,
no TensorFlow for the help and the client commands, no TensorFlow start-up noise for the ones
that use it, and a checkpoint of another spec refused in one line naming `--no-resume`.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
QUIET_VARS = ("TF_CPP_MIN_LOG_LEVEL", "GRPC_VERBOSITY", "ABSL_MIN_LOG_LEVEL")


def _env(**extra: str) -> dict[str, str]:
    """The user's environment: none of TensorFlow's quieting variables set beforehand."""
    env = {k: v for k, v in os.environ.items() if k not in QUIET_VARS}
    env.pop("REVHPO_API", None)
    env.pop("REVHPO_TOKEN", None)
    env.update(extra)
    return env


def _revhpo(
    *args: str, timeout: float = 300, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "revhpo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        cwd=str(cwd or REPO),
    )


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_version():
    import revhpo

    out = _revhpo("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"revhpo {revhpo.__version__}"


def test_help_shows_defaults_and_exit_statuses():
    out = _revhpo("--help")
    assert out.returncode == 0
    for cmd in ("tune", "verify", "bench", "serve", "worker", "submit", "status", "keys"):
        assert cmd in out.stdout
    assert "exit status" in out.stdout and "names the URL" in out.stdout
    jobs = " ".join(_revhpo("jobs", "--help").stdout.split())  # unwrapped
    assert "(default: 20)" in jobs and "(default: http://127.0.0.1:8765)" in jobs
    verify = " ".join(_revhpo("verify", "--help").stdout.split())
    assert "(default: 8)" in verify and "(default: 0.0001)" in verify
    worker = " ".join(_revhpo("worker", "--help").stdout.split())
    assert "(default: 120.0)" in worker and "2 the API refused the key" in worker


def _walk(parser: argparse.ArgumentParser, path: str = "revhpo"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                assert helps.get(name), f"{path} {name}: no help in the command list"
                yield from _walk(sub, f"{path} {name}")


def test_every_command_and_option_has_help_and_shows_its_default():
    from revhpo.service.cli import build_parser

    commands = list(_walk(build_parser()))
    assert len(commands) > 15
    for path, parser in commands:
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            assert action.help, f"{path} {action.option_strings or action.dest}: no help"
            shown = action.default not in (None, False, argparse.SUPPRESS)
            if shown and action.option_strings and not isinstance(action, argparse._VersionAction):
                assert f"(default: {action.default})" in " ".join(text.split()), (
                    f"{path} {action.option_strings}: default {action.default!r} not shown"
                )


def test_keys_without_an_action_prints_the_help_of_keys():
    out = _revhpo("keys")
    assert out.returncode == 2
    text = out.stdout + out.stderr
    assert "usage: revhpo keys" in text
    for action in ("create", "list", "revoke"):
        assert action in text
    assert "demo" not in text and "README" not in text  # not another command's help


def test_no_command_prints_help_and_exits_2():
    out = _revhpo()
    assert out.returncode == 2 and "usage: revhpo" in out.stderr


@pytest.mark.parametrize(
    "args", [["status", "abc"], ["jobs"], ["cancel", "abc"], ["result", "abc"]]
)
def test_connection_error_names_the_url(args):
    url = _dead_url()
    out = _revhpo(*args, "--api", url, "--retries", "1", timeout=120)
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr  # one line, no traceback
    assert lines[0].startswith(f"revhpo {args[0]}: ") and url in lines[0], lines
    assert "Traceback" not in out.stderr


def test_submit_connection_error_and_missing_spec(tmp_path):
    url = _dead_url()
    spec = tmp_path / "s.yaml"
    spec.write_text("name: x\n")
    out = _revhpo("submit", str(spec), "--api", url, "--retries", "0")
    assert out.returncode == 1 and f"{url}/v1/jobs" in out.stderr, out.stderr
    out = _revhpo("submit", str(tmp_path / "missing.yaml"), "--api", url)
    assert out.returncode == 2 and "missing.yaml" in out.stderr


_MODULES = "('tensorflow', 'keras', 'sklearn', 'matplotlib')"


def _loaded_after(argv: list[str], tmp_path: Path) -> tuple[list[str], str]:
    """Run `revhpo ARGV` in a fresh interpreter; returns the heavy modules it imported."""
    code = (
        "import sys\n"
        "from revhpo.service.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('LOADED', sorted(m for m in {_MODULES} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(REVHPO_HOME=str(tmp_path)),
        cwd=str(tmp_path),
    )
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("LOADED")]
    assert line, out.stdout + out.stderr
    return eval(line[-1][len("LOADED ") :]), out.stderr  # noqa: S307 (our own print)


def test_help_version_and_client_commands_do_not_import_tensorflow(tmp_path):
    url = _dead_url()
    db = f"sqlite:///{tmp_path / 'k.db'}"
    for argv in (
        ["--help"],
        ["--version"],
        ["tune", "--help"],
        ["status", "abc", "--api", url, "--retries", "0"],
        ["jobs", "--api", url, "--retries", "0"],
        ["submit", str(tmp_path / "none.yaml"), "--api", url],
        ["keys", "create", "--owner", "a", "--database-url", db],
        ["keys", "list", "--database-url", db],
    ):
        loaded, err = _loaded_after(argv, tmp_path)
        assert loaded == [], (argv, loaded, err)
    # the check can fail: `verify` does import TensorFlow (to build the problem)
    loaded, _ = _loaded_after(["verify", str(tmp_path / "none.yaml")], tmp_path)
    assert "tensorflow" in loaded
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "revhpo", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert out.returncode == 0 and "revhpo.service.cli" in out.stderr
    assert "tensorflow" not in out.stderr


def _quick_spec(tmp_path: Path, **meta: object) -> Path:
    doc = yaml.safe_load((REPO / "examples" / "quick_digits.yaml").read_text())
    doc["training"]["steps"] = 4
    doc["meta"].update({"iterations": 1, "eval_seeds": 1, **meta})
    path = tmp_path / "quick.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.slow
def test_tune_is_quiet_and_refuses_a_checkpoint_of_another_spec(tmp_path):
    out_dir = tmp_path / "run"
    spec = _quick_spec(tmp_path)
    first = _revhpo("tune", str(spec), "--out", str(out_dir), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "status: completed" in first.stdout
    # stderr is not a terminal: plain progress lines, and nothing else (no TF start-up noise)
    lines = first.stderr.strip().splitlines()
    assert lines and all(
        ln.startswith(("coarse start", "meta-iteration", "evaluating", "tuning")) for ln in lines
    ), first.stderr
    assert any(ln.startswith("meta-iteration 1/1") and "val loss" in ln for ln in lines)
    for metric in ("test loss", "test_loss", "test acc", "test_acc"):
        assert metric not in first.stderr  # the progress never shows a test metric
    assert (out_dir / "checkpoint.npz").is_file()

    spec = _quick_spec(tmp_path, step_size=0.01)  # another spec, the same --out
    second = _revhpo("tune", str(spec), "--out", str(out_dir), cwd=tmp_path)
    assert second.returncode == 2, second.stdout + second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert "--no-resume" in lines[0] and lines[0].startswith("revhpo tune: ")
    assert "Traceback" not in second.stderr and second.stdout == ""

    third = _revhpo("tune", str(spec), "--out", str(out_dir), "--no-resume", "-q", cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert third.stderr == ""  # --quiet: nothing on stderr at all
