"""User errors on the command line: one ``error: ...`` line on stderr, exit status 2, no traceback.

Every command of this project (``run_pretrain.py``, ``run_downstream.py``, the demo, ``extract``,
``compare``, ``iemocap_preprocess``) wraps its work in :func:`user_errors`::

    from encodecmae_s3prl.errors import user_errors

    def main(argv=None):
        with user_errors():
            ...

(or decorate ``main`` with ``@user_errors()``). A user error (a missing, truncated, foreign or
refused checkpoint, a bad corpus, a dataset that is not there, a wrong config key, ...) is then
printed as ``error: <what is wrong, with the file or key, and the fix>`` and the process exits
with status 2 (as argparse does for a bad option). Anything else keeps its traceback: it is a bug.
With ``ENCODECMAE_DEBUG=1`` user errors keep their traceback too.

What counts as a user error is decided by type, never by where it was raised:

- :class:`UserError` and its subclasses: every error a mistake of the user's raises where the mistake is found
  (:class:`ConfigError` for configuration values and keys, the checkpoint, corpus, dataset, audio and EnCodec
  weights errors of the library, a full disk, a wrong command line), plus ``extra_types`` given to
  :func:`user_errors`;
- a missing / unreadable path (``FileNotFoundError``, ``NotADirectoryError``, ``IsADirectoryError``,
  ``PermissionError``), named with the config key that holds it when ``path_keys`` says so;
- a YAML file that does not parse (``yaml.YAMLError``).

Where s3prl only asserts, our commands check the same condition before s3prl runs and raise a UserError.

This module imports nothing beyond the standard library and :mod:`encodecmae_s3prl.settings`.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterable, Iterator, Mapping, Optional

from encodecmae_s3prl.settings import debug_enabled

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Something the user can fix; the message names the file or key and says how."""


class ConfigError(UserError, ValueError):
    """A configuration value or key that cannot be used (model config, runner config, recipe keys)."""


PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def one_line(text: str) -> str:
    """The message on one line (whitespace runs, newlines included, become one space)."""
    text = " ".join(str(text).split())
    return text[len("error:"):].lstrip() if text.lower().startswith("error:") else text


def _path_message(err: OSError, path_keys: Mapping[str, str], path_hints: Mapping[str, str]) -> str:
    filename = getattr(err, "filename", None)
    if filename is None:  # e.g. FileNotFoundError('Wrong file path for model config.')
        return str(err) or type(err).__name__
    reason = err.strerror or type(err).__name__
    message = f"{filename}: {reason[:1].lower() + reason[1:]}"  # "No such file or directory" -> "no such ..."
    # the deepest configured path that holds the missing one names the key to fix
    best = None
    for key, value in path_keys.items():
        value = str(value)
        if value and (str(filename) == value or str(filename).startswith(value.rstrip(os.sep) + os.sep)):
            if best is None or len(value) > len(best[1]):
                best = (key, value)
    if best is not None:
        key, value = best
        message += f" (from {key} = {value!r}: fix it in the config file or with -o \"{key}=/right/path\")"
        if path_hints.get(key):
            message += f"; {path_hints[key]}"
    else:
        message += ": check the path"
    return message


def user_error_message(err: BaseException, extra_types: Iterable[type] = (),
                       path_keys: Mapping[str, str] | None = None,
                       path_hints: Mapping[str, str] | None = None,
                       fixes: Mapping[type, str] | None = None) -> Optional[str]:
    """The one-line message for a user error, or None when ``err`` is not one (then it is a bug)."""
    if isinstance(err, (UserError, *extra_types)):
        added = [f" ({fix})" for kind, fix in (fixes or {}).items() if isinstance(err, kind)]
        return one_line((str(err) or type(err).__name__) + "".join(added))
    if isinstance(err, PATH_ERRORS):
        return one_line(_path_message(err, path_keys or {}, path_hints or {}))
    yaml = sys.modules.get("yaml")  # not imported: no YAML was read, so this is no YAML error
    if yaml is not None and isinstance(err, yaml.YAMLError):
        return one_line(str(err) or type(err).__name__)
    return None


@contextlib.contextmanager
def user_errors(extra_types: Iterable[type] = (), path_keys: Mapping[str, str] | None = None,
                path_hints: Mapping[str, str] | None = None,
                on_user_error: Callable[[BaseException], None] | None = None,
                fixes: Mapping[type, str] | None = None) -> Iterator[None]:
    """Print a user error as ``error: ...`` (one line, stderr) and exit 2; let anything else through.

    Args:
        extra_types: more exception classes to treat as user errors (a command's own).
        path_keys: config key -> configured path (e.g. ``{"config.downstream_expert.datarc.root": "/data/x"}``);
            a missing file under one of them is reported with the key to fix. May be filled in later
            (the same dict object), once the command has read its config.
        path_hints: config key -> one more sentence for a missing path under that key (how to create it).
        fixes: user error class -> what the command adds to such a message: its option that fixes the mistake
            (the library's messages say which value does; the command knows its flags).
        on_user_error: called with a user error before it is printed (also with ``ENCODECMAE_DEBUG=1``),
            e.g. to remove what a failed start left behind. Not called for other exceptions (bugs).

    Usable as ``with user_errors(): ...`` or as a decorator ``@user_errors()``. With
    ``ENCODECMAE_DEBUG=1`` the exception propagates unchanged (full traceback).
    """
    try:
        yield
    except Exception as err:  # SystemExit and KeyboardInterrupt pass untouched
        message = user_error_message(err, extra_types, path_keys, path_hints, fixes)
        if message is None:
            raise
        if on_user_error is not None:
            on_user_error(err)
        if debug_enabled():
            raise
        sys.stdout.flush()
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None


def quiet_when_main_leaves(worker_id: int = 0) -> None:
    """``worker_init_fn`` of our DataLoaders. A worker hands each batch's shared memory to the main process over
    a connection served by a background thread, which prints a traceback when the main process drops it midway:
    what a Ctrl-C during that hand-over does. The main process says what happened in its one line, so in the
    worker a dropped connection (EOFError, ConnectionError) is not reported; any other error keeps its traceback.
    """
    report = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, traceback) -> None:
        if not issubclass(kind, (EOFError, ConnectionError)):
            report(kind, value, traceback)

    sys.excepthook = hook
