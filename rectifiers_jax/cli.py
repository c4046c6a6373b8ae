"""What every command-line tool shares: one flag convention, one log set-up, one-line errors.

Convention: every tool is `python -m rectifiers_jax.<tool>` (or `rectifiers_jax.analysis.<tool>`)
with `--snake_case=VALUE` flags; argparse tools also accept the hyphenated spelling of a flag
(`--batch-size` for `--batch_size`). Bad input (a wrong value, a missing file, an unreadable
checkpoint) ends with one `error: ...` line on stderr and exit code 2 (`EXIT_BAD_INPUT`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

# Exit codes of the tools (the training command uses all of them).
EXIT_DONE = 0
EXIT_FAILURE = 1  # an error that is not the user's input, e.g. a checkpoint that cannot be written
EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
# EX_TEMPFAIL (sysexits.h): stopped by SIGTERM or Ctrl-C after saving; run it again to resume.
EXIT_PREEMPTED = 75
EXIT_INTERRUPTED = 130  # a second Ctrl-C: stopped at once, without saving (128 + SIGINT)
# What a tool's user can fix: a wrong value, a missing or unreadable file or directory.
BAD_INPUT = (ValueError, OSError)


class UsageError(ValueError):
    """A command line that cannot be parsed (reported as one line, exit code 2)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's convention: `--snake_case` flags, hyphenated spellings
    accepted, and a parse error raised as `UsageError` (one line) instead of usage text."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args([self._snake(arg) for arg in args], namespace)

    def _snake(self, arg: str) -> str:
        """`--batch-size=8` -> `--batch_size=8` when `--batch_size` is one of our flags."""
        if not arg.startswith("--"):
            return arg
        name, sep, value = arg.partition("=")
        snake = name[:2] + name[2:].replace("-", "_")
        return snake + sep + value if snake in self._option_string_actions else arg


class _QuietLibraries(logging.Filter):
    """Drops library records below `level`: orbax logs every save and restore, TFDS every split."""

    PATHS = ("/orbax/", "/tensorflow_datasets/", "/jax/_src/xla_bridge")

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or not any(p in record.pathname for p in self.PATHS)


def _quiet_library_output(library_level: int) -> None:
    """INFO logs; orbax/TFDS/JAX records below `library_level`, TensorFlow's C++ start-up
    notices and tensorstore's late-callback tracebacks dropped (every tool, argparse or absl)."""
    from absl import logging as absl_logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    absl_logging.set_verbosity(absl_logging.INFO)
    logging.getLogger("absl").addFilter(_QuietLibraries(library_level))
    quiet_late_loop_callbacks()


def setup_logging(library_level: int = logging.WARNING) -> None:
    """INFO logs through absl's handler; orbax/TFDS/JAX records below `library_level` and
    TensorFlow's C++ start-up notices dropped."""
    from absl import flags
    from absl import logging as absl_logging

    _quiet_library_output(library_level)
    absl_logging.use_absl_handler()
    if not flags.FLAGS.is_parsed():
        # argparse tools parse their own flags: this stops absl's "logging before flag
        # parsing" warning.
        flags.FLAGS.mark_as_parsed()


def fail_and_exit(error: BaseException | str, code: int, *, settle_seconds: float) -> NoReturn:
    """Ends the process at once with `code`, the `error: ...` line the last thing it prints.

    For errors after which a library's threads may misbehave (orbax's after a failed write
    keep printing, then wait forever at interpreter exit; JAX's shutdown barrier waits for a
    dead peer): the other threads get up to `settle_seconds` to finish, then the line is
    printed and the process exits without the interpreter's shutdown. Callers record the
    run's status before.
    """
    deadline = time.monotonic() + settle_seconds
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    sys.stdout.flush()
    fail(error)
    sys.stderr.flush()
    os._exit(code)


def quiet_late_loop_callbacks() -> None:
    """Demotes to a debug log one known library message: after an orbax read or write fails,
    tensorstore completes the operations still in flight and their callbacks find orbax's
    event loop closed; tensorstore reports each `RuntimeError: Event loop is closed` as
    unraisable (`sys.unraisablehook`, a bare traceback). The failure itself was reported by the
    caller; every other unraisable exception still goes to the default hook."""
    default_hook = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            logging.debug("late callback after a failed checkpoint operation: %s", value)
            return
        default_hook(unraisable)

    sys.unraisablehook = hook


def fail(error: BaseException | str) -> int:
    """Print `error: <first line>` to stderr; returns `EXIT_BAD_INPUT`."""
    lines = str(error).strip().splitlines()
    print(f"error: {lines[0] if lines else type(error).__name__}", file=sys.stderr)
    return EXIT_BAD_INPUT


def run(
    main: Callable[[Sequence[str] | None], int | None],
    argv: Sequence[str] | None = None,
    *,
    library_level: int = logging.WARNING,
) -> NoReturn:
    """Runs an argparse tool's `main(argv)` and exits with its code; bad input is one line."""
    setup_logging(library_level)
    try:
        code = main(argv)
    except BAD_INPUT as error:
        sys.exit(fail(error))
    sys.exit(code or EXIT_DONE)


def flag_error_line(error: BaseException) -> str:
    """One line for a flag that absl or ml_collections could not parse or apply.

    absl's own one-line messages name the flag and are kept. Otherwise the cause chain is
    searched: a mistyped `--config.x.y` field carries ml_collections' "did you mean"
    suggestion, a config file's own ValueError sits innermost, and a syntax error in a config
    file is reported with its file and line.
    """
    chain = [error]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    syntax = [e for e in chain if isinstance(e, SyntaxError) and str(e.filename).endswith(".py")]
    if syntax:
        return f"{syntax[0].filename} line {syntax[0].lineno}: {syntax[0].msg}"
    suggestion = [e for e in chain if "did you mean" in str(e).lower()]
    plain = [e for e in chain if str(e).strip() and "Traceback" not in str(e)]
    if len(str(error).strip().splitlines()) == 1:
        chosen = error
    else:
        chosen = suggestion[0] if suggestion else (plain[-1] if plain else error)
    message = chosen
    while isinstance(message, AttributeError | KeyError) and message.args:
        message = message.args[0]  # str() of these quotes their message (and a nested one)
    text = "; ".join(line.strip() for line in str(message).splitlines() if line.strip())
    if isinstance(chosen, AttributeError | KeyError):  # a mistyped --config.x.y field
        text = f"unknown config field {text}"
    return text or type(chosen).__name__


def _check_config_file(argv: Sequence[str]) -> None:
    """A `--config=PATH[:ARG]` file that does not exist or does not compile, as one line."""
    for arg in argv[1:]:
        if arg.startswith("--config="):
            path = arg.removeprefix("--config=").partition(":")[0]
            if not os.path.isfile(path):
                raise FileNotFoundError(f"--config: no config file {path!r}")
            with open(path) as source:
                compile(source.read(), path, "exec")


def run_absl(main: Callable[[list[str]], int | None]) -> NoReturn:
    """`absl.app.run(main)` for the tools with `--config` files: a flag that cannot be parsed,
    like any other bad input, ends with one `error: ...` line and `EXIT_BAD_INPUT`."""
    from absl import app, flags

    def parse(argv: list[str]) -> list[str]:
        try:
            _check_config_file(argv)
            return flags.FLAGS(argv)
        except (flags.Error, SyntaxError, AttributeError, KeyError, *BAD_INPUT) as error:
            sys.exit(fail(flag_error_line(error)))

    _quiet_library_output(logging.WARNING)
    try:
        app.run(main, flags_parser=parse)
    except BAD_INPUT as error:
        # Without the interpreter's shutdown: orbax's callbacks still in flight after a failed
        # restore would print their tracebacks after the line.
        fail_and_exit(error, EXIT_BAD_INPUT, settle_seconds=0.0)
