"""The one command-line layer of every entry point: ``@hydra.main`` plus what Hydra leaves out.

    @command("generate", verbatim=("prompt",))
    def main(cfg: DictConfig) -> None: ...

Each command composes ``experiments/configs/<name>.yaml`` with Hydra, so all share one override
syntax, ``--cfg job``, ``--help`` and strict keys. This wrapper adds four things:
- a typo fails listing the valid keys of the node it was made in (Hydra names only the bad key);
- ``verbatim`` keys (free text such as a prompt) reach the command exactly as the shell passed them:
  Hydra's grammar would read ``no`` as text but ``true`` as a bool, ``[a, b]`` as a list, cut at
  ``#`` and refuse ``'``; they are quoted for Hydra here (a value the user already quoted for
  Hydra, ``prompt="'a, b'"``, is left to Hydra);
- bare arguments become a key (``report runs/`` -> ``root=runs/``, ``bench data train`` -> ``suites=[data,train]``);
- a bad input (a ``ValueError`` or file error raised by this project's code, which names the file, row or key)
  ends the command with its message instead of a traceback, and a full disk says "no space left on device"
  and where, however deep it was raised (``HYDRA_FULL_ERROR=1`` keeps the traceback).
"""

from __future__ import annotations

import errno
import functools
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra._internal.utils import get_args_parser
from hydra.errors import InstantiationException
from hydra.core.override_parser.types import Quote, QuotedString
from omegaconf import DictConfig

from experiments import CONFIG_DIR
from experiments.compose import explain_overrides, parse_overrides

Prepare = Callable[[list[str]], list[str]]
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Errors that name a bad input when this project raises them; from inside a library they may be a bug: traceback.
INPUT_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _raised_here(error: BaseException) -> bool:
    """Whether the innermost frame of ``error``'s traceback is this project's code (not a library's)."""
    traceback, last = error.__traceback__, None
    while traceback is not None:
        last, traceback = traceback, traceback.tb_next
    if last is None:
        return False
    path = Path(last.tb_frame.f_code.co_filename).resolve()
    return PROJECT_ROOT in path.parents and "site-packages" not in path.parts


def no_space_message(error: BaseException) -> str | None:
    """"no space left on device" and where, when a full disk is anywhere in ``error``'s chain; None otherwise."""
    for cause in _chain(error):
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            if cause.strerror and cause.strerror.startswith("no space left on device"):
                return cause.strerror  # an atomic write said it already, naming the file (datamodules/atomic.py)
            where = f" writing {cause.filename}" if cause.filename else ""
            return (f"no space left on device{where}; free space on that disk, or write elsewhere (out=, "
                    "paths.output_dir=; caches: DERMSYNTH_CACHE)")
    return None


def input_error_message(error: BaseException) -> str | None:
    """The one-line message a command ends with for ``error``; None to keep its traceback (a bug, not an input)."""
    full = no_space_message(error)
    if full is not None:
        return full
    if isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__  # a data module or model refusing its settings while Hydra builds it
    if isinstance(error, INPUT_ERRORS) and _raised_here(error):
        return str(error)
    return None


def quote_verbatim(value: str) -> str:
    """``value`` as a Hydra quoted string whose parsed (and resolved) text is ``value`` itself."""
    # OmegaConf resolves ${...} even inside quotes; \${ escapes it, and backslashes before it double
    text = re.sub(r"(\\*)\$\{", lambda match: match.group(1) * 2 + "\\${", value)
    return QuotedString(text=text, quote=Quote.single).with_quotes()


def _already_quoted(value: str) -> bool:
    if len(value) < 2 or value[0] not in "'\"" or value[-1] != value[0]:
        return False
    try:
        return isinstance(parse_overrides([f"k={value}"])[0].value(), str)
    except Exception:
        return False


def command_line(
    argv: Sequence[str], *, verbatim: Sequence[str] = (), positional: str | None = None, as_list: bool = False
) -> list[str]:
    """The argument list Hydra should see: verbatim keys quoted, bare arguments turned into ``positional``."""
    args = get_args_parser().parse_args(list(argv))
    rest = list(argv)
    for item in args.overrides:
        rest.remove(item)  # leaves Hydra's flags (--cfg job, -m, --help) in order
    bare = [o for o in args.overrides if "=" not in o and not o.startswith(("~", "+"))]
    overrides = []
    for item in args.overrides:
        key, _, value = item.partition("=")
        if item in bare:
            continue
        overrides.append(f"{key}={quote_verbatim(value)}" if key in verbatim and not _already_quoted(value) else item)
    if bare and positional:
        if len(bare) > 1 and not as_list:
            raise SystemExit(f"expected one bare argument (the {positional}), got {bare}")
        values = [quote_verbatim(b) for b in bare]
        overrides.insert(0, f"{positional}=[{','.join(values)}]" if as_list else f"{positional}={values[0]}")
    elif bare:
        overrides.extend(bare)  # Hydra's own error for an argument without '='
    return [*rest, *overrides]


def command(
    config_name: str,
    *,
    verbatim: Sequence[str] = (),
    positional: str | None = None,
    as_list: bool = False,
    prepare: Prepare | None = None,
) -> Callable[[Callable[[DictConfig], Any]], Callable[[], None]]:
    """Decorate a task ``fn(cfg)`` into the command's ``main()`` (see the module docstring).

    ``prepare`` may add overrides before Hydra composes (evaluate adds the checkpoint's data group).
    """

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[[], None]:
        started = False

        @functools.wraps(task)  # Hydra names the job after the task's module
        def task_function(cfg: DictConfig) -> Any:
            nonlocal started
            started = True
            try:
                return task(cfg)
            except Exception as error:
                message = input_error_message(error)
                if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                raise SystemExit(f"error: {message}") from None

        hydra_main = hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(task_function)

        def main() -> None:
            argv = command_line(sys.argv[1:], verbatim=verbatim, positional=positional, as_list=as_list)
            if prepare is not None:
                argv = prepare(argv)
            sys.argv[1:] = argv
            try:
                hydra_main()
            except SystemExit as exit:
                if exit.code not in (0, None) and not started:
                    _explain(config_name, argv)
                raise

        main.__doc__ = task.__doc__
        return main

    return decorate


def task_overrides() -> list[str]:
    """The overrides the running Hydra app was given (``[]`` outside one, e.g. in tests)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _explain(config_name: str, argv: list[str]) -> None:
    """After Hydra refused a command line, say which keys were valid (Hydra's message came first)."""
    try:
        overrides = get_args_parser().parse_args(argv).overrides
        message = explain_overrides(config_name, overrides)
    except Exception:  # the explanation must never hide Hydra's own error
        return
    if message:
        sys.stderr.write(f"\n{message}\n")
