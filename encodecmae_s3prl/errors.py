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

What counts as a user error (:func:`user_error_message` decides):

- :class:`UserError`, raised by our commands themselves;
- the project's exception types listed in :data:`USER_ERROR_TYPES` (matched by module and class
  name along the MRO, so nothing heavy is imported here), plus ``extra_types`` given to
  :func:`user_errors`;
- ``ValueError`` raised by the model configuration (``EncodecMAEConfig.from_dict`` and its
  validation, ``get_config``, ``model_config_from_yaml`` and the rest of ``upstream/loading.py``);
- a missing / unreadable path (``FileNotFoundError``, ``NotADirectoryError``, ``IsADirectoryError``,
  ``PermissionError``), a YAML file that does not parse;
- the bare ``AssertionError`` s of s3prl's scripts and runners that users run into
  (:data:`S3PRL_ASSERTIONS`), rewritten as a sentence.

This module imports nothing beyond the standard library.
"""
from __future__ import annotations

import contextlib
import linecache
import os
import sys
from typing import Callable, Iterable, Iterator, Mapping, Optional

DEBUG_ENV = "ENCODECMAE_DEBUG"
EXIT_USER_ERROR = 2


class UserError(Exception):
    """Something the user can fix; the message names the file or key and says how."""


class ConfigError(UserError, ValueError):
    """A configuration value or key that cannot be used (model config, runner config, recipe keys)."""


# (module, class): the project's user-error exceptions; subclasses count too (V1CheckpointError is a CheckpointError)
USER_ERROR_TYPES = frozenset({
    ("encodecmae_s3prl.upstream.checkpoint", "CheckpointError"),
    ("encodecmae_s3prl.upstream.import_v1", "V1CheckpointError"),
    ("encodecmae_s3prl.upstream.codec", "EncodecWeightsError"),
    ("encodecmae_s3prl.upstream.published", "PublishedCheckpointError"),
    ("encodecmae_s3prl.upstream.expert", "UnfittedCodecError"),
    ("encodecmae_s3prl.pretrain_task.corpus", "CorpusError"),
    ("encodecmae_s3prl.pretrain_task.pretrain_expert", "ConfigError"),
    ("encodecmae_s3prl.pretrain_task.self_training", "TargetStoreError"),
    ("encodecmae_s3prl.downstream_probes.task", "ProbeDataError"),
    ("encodecmae_s3prl.upstream.atomic", "DiskFullError"),
    ("encodecmae_s3prl.pretrain_task.codec_cache", "CodecCacheError"),
    ("encodecmae_s3prl.upstream.audio", "AudioReadError"),
    ("yaml.error", "YAMLError"),
})

# ValueError is a user error only when raised (innermost frame) here: module -> function names (None: any)
VALUE_ERROR_SOURCES: Mapping[str, Optional[frozenset]] = {
    "encodecmae_s3prl.upstream.config": frozenset({"from_dict", "__post_init__", "get_config"}),
    "encodecmae_s3prl.upstream.loading": None,
    "encodecmae_s3prl.upstream.strict_config": None,  # unknown keys and value rules of the typed configs
}

PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def debug_enabled() -> bool:
    """``ENCODECMAE_DEBUG`` set to anything but '', '0', 'false': user errors keep their traceback."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def one_line(text: str) -> str:
    """The message on one line (whitespace runs, newlines included, become one space)."""
    text = " ".join(str(text).split())
    return text[len("error:"):].lstrip() if text.lower().startswith("error:") else text


def _innermost_frame(err: BaseException):
    tb = err.__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb


def _is_listed(err: BaseException, extra_types: tuple) -> bool:
    if isinstance(err, UserError) or (extra_types and isinstance(err, extra_types)):
        return True
    return any((cls.__module__, cls.__qualname__) in USER_ERROR_TYPES for cls in type(err).__mro__)


def _config_value_error(err: BaseException) -> bool:
    tb = _innermost_frame(err)
    if tb is None:
        return False
    module = tb.tb_frame.f_globals.get("__name__", "")
    if module not in VALUE_ERROR_SOURCES:
        return False
    functions = VALUE_ERROR_SOURCES[module]
    return functions is None or tb.tb_frame.f_code.co_name in functions


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


# --- s3prl's bare assertions, as sentences ----------------------------------------------------
def _runner_steps(name: str):
    def sentence(frame) -> str:
        config = frame.f_locals["self"].config
        total = frame.f_locals.get("total_steps")
        value = config["runner"][name]
        epochs = config["runner"].get("n_epochs", -1)
        by_epochs = bool(epochs and epochs > 0)
        source = (f"{total} steps (from config.runner.n_epochs = {epochs})" if by_epochs
                  else f"config.runner.total_steps = {total}")
        return (f"{source} must be greater than config.runner.{name} = {value} (s3prl's runner needs it): raise "
                f"{'n_epochs' if by_epochs else 'total_steps'} or lower {name}, e.g. -o "
                f"\"config.runner.{name}={max(1, int(total) // 2) if total else 1}\"")
    return sentence


def _resume_folder(frame) -> str:
    args = frame.f_locals.get("args")
    folder = getattr(args, "past_exp", None) or getattr(args, "expdir", "?")
    return (f"-e/-a {folder}: the folder holds no states-*.ckpt to resume from; give a checkpoint file with -e, "
            f"or start a new experiment with another -n")


def _expname(_frame) -> str:
    return "run_pretrain.py needs -n NAME (the experiment name) to start a new experiment, also with -p DIR"


def _ddp_mode(frame) -> str:
    now, before = frame.f_locals.get("now_use_ddp"), frame.f_locals.get("original_use_ddp")
    how = "with torchrun / torch.distributed" if before else "as a single process"
    return (f"-e {frame.f_locals.get('args').init_ckpt}: that run was trained {how}; resume it the same way "
            f"(now: {'distributed' if now else 'single process'})")


def _ddp_world(frame) -> str:
    return (f"-e {frame.f_locals.get('args').init_ckpt}: that run used {frame.f_locals.get('original_world')} "
            f"processes, this one {frame.f_locals.get('now_world')}; resume with the same --nproc_per_node")


def _inference_file(frame) -> str:
    return (f"-m inference: {frame.f_locals.get('filepath')} is not a file; give the audio file to run with "
            f"-t/--evaluate_split")


def _inference_rate(frame) -> str:
    return (f"-m inference: {frame.f_locals.get('filepath')} is {frame.f_locals.get('sr')} Hz; s3prl's inference "
            f"mode reads 16 kHz audio, resample the file first")


# (file suffix, the assertion's source line) -> sentence from the asserting frame's locals
S3PRL_ASSERTIONS: Mapping[tuple, Callable] = {
    ("pretrain/runner.py", "assert total_steps > self.config['runner']['log_step']"): _runner_steps("log_step"),
    ("pretrain/runner.py", "assert total_steps > self.config['runner']['save_step']"): _runner_steps("save_step"),
    ("run_pretrain.py", "assert len(ckpt_pths) > 0"): _resume_folder,
    ("run_downstream.py", "assert len(ckpt_pths) > 0"): _resume_folder,
    ("run_pretrain.py", "assert args.expname is not None"): _expname,
    ("run_downstream.py", "assert now_use_ddp == original_use_ddp, f'{now_use_ddp} != {original_use_ddp}'"): _ddp_mode,
    ("run_downstream.py", "assert now_world == original_world, f'{now_world} != {original_world}'"): _ddp_world,
    ("downstream/runner.py", "assert filepath.is_file(), filepath"): _inference_file,
    ("downstream/runner.py", "assert sr == SAMPLE_RATE, sr"): _inference_rate,
}


def _assertion_message(err: AssertionError) -> Optional[str]:
    tb = _innermost_frame(err)
    if tb is None:
        return None
    filename = tb.tb_frame.f_code.co_filename.replace(os.sep, "/")
    if "/s3prl/" not in filename:
        return None
    line = linecache.getline(tb.tb_frame.f_code.co_filename, tb.tb_lineno).strip()
    for (suffix, source), sentence in S3PRL_ASSERTIONS.items():
        if filename.endswith("/s3prl/" + suffix) and line == source:
            try:
                return sentence(tb.tb_frame)
            except Exception:  # a sentence must never hide the error
                return f"s3prl: {line}"
    return None


def user_error_message(err: BaseException, extra_types: Iterable[type] = (),
                       path_keys: Mapping[str, str] | None = None,
                       path_hints: Mapping[str, str] | None = None) -> Optional[str]:
    """The one-line message for a user error, or None when ``err`` is not one (then it is a bug)."""
    extra_types = tuple(extra_types)
    if _is_listed(err, extra_types):
        return one_line(str(err) or type(err).__name__)
    if isinstance(err, PATH_ERRORS):
        return one_line(_path_message(err, path_keys or {}, path_hints or {}))
    if isinstance(err, ValueError) and _config_value_error(err):
        return one_line(str(err))
    if isinstance(err, AssertionError):
        message = _assertion_message(err)
        return one_line(message) if message else None
    return None


@contextlib.contextmanager
def user_errors(extra_types: Iterable[type] = (), path_keys: Mapping[str, str] | None = None,
                path_hints: Mapping[str, str] | None = None,
                on_user_error: Callable[[BaseException], None] | None = None) -> Iterator[None]:
    """Print a user error as ``error: ...`` (one line, stderr) and exit 2; let anything else through.

    Args:
        extra_types: more exception classes to treat as user errors (a command's own).
        path_keys: config key -> configured path (e.g. ``{"config.downstream_expert.datarc.root": "/data/x"}``);
            a missing file under one of them is reported with the key to fix. May be filled in later
            (the same dict object), once the command has read its config.
        path_hints: config key -> one more sentence for a missing path under that key (how to create it).
        on_user_error: called with a user error before it is printed (also with ``ENCODECMAE_DEBUG=1``),
            e.g. to remove what a failed start left behind. Not called for other exceptions (bugs).

    Usable as ``with user_errors(): ...`` or as a decorator ``@user_errors()``. With
    ``ENCODECMAE_DEBUG=1`` the exception propagates unchanged (full traceback).
    """
    try:
        yield
    except Exception as err:  # SystemExit and KeyboardInterrupt pass untouched
        message = user_error_message(err, extra_types, path_keys, path_hints)
        if message is None:
            raise
        if on_user_error is not None:
            on_user_error(err)
        if debug_enabled():
            raise
        sys.stdout.flush()
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None
