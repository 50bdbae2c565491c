"""Entry points behind ``run_downstream.py`` and ``run_pretrain.py`` at the repository root.

They fill in what s3prl's scripts would read from paths relative to ``cd s3prl`` (default
configs, the list of pretrain tasks) and a ``--device`` that exists on this machine, then
hand over to s3prl's own ``main()``: every s3prl option and behaviour is unchanged.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from encodecmae_s3prl import compat, registry

PRETRAIN_MODEL_SIZES = ("tiny", "small", "base", "large")


def _peek(argv: Sequence[str], *options: str, flag: bool = False):
    """Value of an option as argparse would read it (``-d x``, ``-dx``, ``--downstream=x``), or None."""
    parser = argparse.ArgumentParser(add_help=False)
    if flag:
        parser.add_argument(*options, dest="value", action="store_true")
    else:
        parser.add_argument(*options, dest="value")
    known, _ = parser.parse_known_args(list(argv))
    return known.value


def _wants_help(argv: Sequence[str]) -> bool:
    return "-h" in argv or "--help" in argv


def _resumes(argv: Sequence[str]) -> bool:
    return bool(_peek(argv, "-e", "--past_exp")) or _peek(argv, "-a", "--auto_resume", flag=True)


def downstream_config(name: str) -> Path:
    """Default ``config.yaml`` of ``-d NAME``: ours, else s3prl's (``./downstream`` as s3prl reads it, then installed)."""
    candidates = [registry.shipped_recipe_config(name),
                  Path("downstream") / name / "config.yaml",
                  compat.s3prl_package_dir() / "downstream" / name / "config.yaml"]
    for path in candidates:
        if path is not None and path.is_file():
            return path
    raise SystemExit(
        f"error: no config.yaml for downstream '{name}'. s3prl's pip package does not ship recipe configs; "
        f"pass one with -c PATH (ours: {', '.join(registry.probe_names() + ['speech_commands', 'emotion'])})."
    )


def prepare_downstream_argv(argv: Sequence[str]) -> list[str]:
    argv = list(argv)
    if _wants_help(argv):
        return argv
    if _peek(argv, "--device") is None:
        argv += ["--device", compat.default_device()]
    downstream = _peek(argv, "-d", "--downstream")
    if downstream and _peek(argv, "-c", "--config") is None and not _resumes(argv):
        argv += ["-c", str(downstream_config(downstream))]
    return argv


def run_downstream(argv: Sequence[str] | None = None) -> None:
    """``run_downstream.py``: s3prl's downstream script with our upstreams and probes registered."""
    argv = sys.argv[1:] if argv is None else argv
    registry.register()
    compat.apply()
    import s3prl.run_downstream as script

    sys.argv = [sys.argv[0]] + prepare_downstream_argv(argv)
    script.main()


def pretrain_config(upstream: str, kind: str, size: str | None = None) -> Path:
    """``config_runner.yaml`` / ``config_model[_size].yaml`` of a pretrain task: ours or s3prl's."""
    name = f"config_{kind}.yaml" if size is None else f"config_{kind}_{size}.yaml"
    if upstream == registry.OUR_PRETRAIN_TASK:
        folder = registry.package_folder("encodecmae_s3prl.pretrain_task")
    else:
        folder = compat.s3prl_package_dir() / "pretrain" / upstream
    path = folder / name
    if not path.is_file():
        raise SystemExit(
            f"error: {path} does not exist. s3prl's pip package omits the pretrain configs of '{upstream}'; "
            f"pass -c (runner) and -g (model) explicitly."
        )
    return path


def prepare_pretrain_argv(argv: Sequence[str]) -> list[str]:
    argv = list(argv)
    if _wants_help(argv):
        return argv
    if _peek(argv, "--device") is None:
        argv += ["--device", compat.default_device()]
    upstream = _peek(argv, "-u", "--upstream")
    if upstream and not _resumes(argv):
        if _peek(argv, "-c", "--config") is None:
            argv += ["-c", str(pretrain_config(upstream, "runner"))]
        model_config = _peek(argv, "-g", "--upstream_config")
        if model_config is None:
            argv += ["-g", str(pretrain_config(upstream, "model"))]
        elif model_config in PRETRAIN_MODEL_SIZES and not Path(model_config).exists():
            # `-g small` is shorthand for our pretrain_task/config_model_small.yaml
            index = max(i for i, a in enumerate(argv) if a in ("-g", "--upstream_config"))
            argv[index + 1] = str(pretrain_config(upstream, "model", model_config))
    return argv


def run_pretrain(argv: Sequence[str] | None = None) -> None:
    """``run_pretrain.py``: s3prl's pretrain script and runner with our task registered."""
    argv = sys.argv[1:] if argv is None else argv
    compat.enter_s3prl_script_environment()
    registry.register()
    sys.argv = [sys.argv[0]] + prepare_pretrain_argv(argv)
    with compat.pretrain_tasks_listed([registry.OUR_PRETRAIN_TASK]):
        import run_pretrain as script  # s3prl/run_pretrain.py, importable after enter_s3prl_script_environment

        script.main()
