"""Entry points behind ``run_downstream.py`` and ``run_pretrain.py`` at the repository root.

They fill in what s3prl's scripts would read from paths relative to ``cd s3prl`` (default
configs, the list of pretrain tasks) and a ``--device`` that exists on this machine, then
hand over to s3prl's own ``main()``: every s3prl option and behaviour is unchanged.

What they add around s3prl: ``--trust-checkpoint``; user errors (a missing, truncated, foreign or
refused checkpoint, a bad corpus or dataset path, settings s3prl would only assert on) as one
``error: ...`` line with exit status 2 (:func:`encodecmae_s3prl.errors.user_errors`, the helper every
command of this project shares; ``ENCODECMAE_DEBUG=1`` shows the traceback); no experiment folder
left behind by a run that failed to start; published checkpoints that fail fast when offline.

The settings (trust, the EnCodec weights, the hub's reachability, the device) are read here, once, from the
flags and the environment (:mod:`encodecmae_s3prl.settings`), and passed down as arguments.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import difflib
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

import yaml

from encodecmae_s3prl import compat, registry, settings
from encodecmae_s3prl.errors import UserError, user_errors  # noqa: F401  (re-exported: the shared helper)
from encodecmae_s3prl.fixes import downstream_fixes, pretrain_fixes
from encodecmae_s3prl.settings import TRUST_ENV, TRUST_FLAG, UpstreamSettings
from encodecmae_s3prl.upstream.hubconf import PUBLISHED_ENTRIES

PRETRAIN_MODEL_SIZES = ("tiny", "small", "base", "large",  # v1's; then the authors' v2 family (config_model_*.yaml)
                        *(f"{kind}-{size}" for kind in ("ec-ec", "mel256-ec") for size in ("small", "base", "large")))
RUNNER_PRESETS = ("cpu",)  # -c cpu: config_runner_cpu.yaml
OUR_PRETRAIN_EXPERT = "encodecmae_s3prl.pretrain_task.pretrain_expert"  # what s3prl's runner builds for -u encodecmae
HELP_EPILOG = (f"\nencodecmae-s3prl adds:\n  {TRUST_FLAG}    load checkpoints (-k, -e) that need classes outside the "
               f"safe allow-list: this runs code stored in the file, only for files you trust (= {TRUST_ENV}=1)\n"
               "  user errors print one 'error: ...' line and exit 2; ENCODECMAE_DEBUG=1 shows the traceback")

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


def take_trust_flag(argv: Sequence[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--trust-checkpoint`` (s3prl's parser does not know it), and whether this run trusts
    checkpoints (the flag, or ``ENCODECMAE_TRUST_CHECKPOINT=1``): they then load with ``weights_only=False``."""
    argv = list(argv)
    return [a for a in argv if a != TRUST_FLAG], settings.trust_checkpoint(TRUST_FLAG in argv)


def check_past_exp(argv: Sequence[str]) -> None:
    """``-e`` must name a checkpoint file or a folder holding ``states-*.ckpt`` (s3prl would trace back)."""
    past = _peek(argv, "-e", "--past_exp")
    if not past:
        return
    path = Path(past)
    if path.is_dir():
        if not any(path.glob("states-*.ckpt")):
            raise UserError(f"-e {past}: the folder holds no states-*.ckpt to resume from; give a checkpoint "
                            f"file (states-N.ckpt, dev-best.ckpt) or the folder of a run that saved one")
    elif not path.is_file():
        raise UserError(f"-e {past}: no such checkpoint file or folder; give a states-N.ckpt / dev-best.ckpt "
                        f"written by this runner, or its experiment folder")


def _check_file_option(argv: Sequence[str], what: str, *options: str) -> None:
    value = _peek(argv, *options)
    if value is not None and not Path(value).is_file():
        raise UserError(f"{options[0]} {value}: no such {what} file; check the path")


def parse_override(override: str | None) -> list[tuple[str, object]]:
    """``-o "config.a.b=1,,args.x=y"`` as s3prl's ``utility.helper.override`` reads it: (key, value) pairs."""
    pairs = []
    if not override or override.lower() == "none":
        return pairs
    for option in override.split(",,"):
        option = option.strip()
        if not option:
            continue
        if "=" not in option:
            raise UserError(f"-o: {option!r} is not KEY=VALUE (options are separated by ',,', e.g. "
                            f"-o \"config.runner.total_steps=100,,config.optimizer.lr=1e-4\")")
        key, value = option.split("=", 1)
        try:
            parsed = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            parsed = value.strip()
        pairs.append((key.strip(), parsed))
    return pairs


def effective_config(argv: Sequence[str]) -> dict:
    """The experiment config as s3prl will see it: ``-c``'s YAML with the ``-o config.*`` overrides applied."""
    config_path = _peek(argv, "-c", "--config")
    config: dict = {}
    if config_path and Path(config_path).is_file():
        with open(config_path) as handle:
            config = yaml.safe_load(handle) or {}
    for key, value in parse_override(_peek(argv, "-o", "--override")):
        first, *fields = key.split(".")
        if first != "config" or not fields:
            continue
        target = config
        for name in fields[:-1]:
            if not isinstance(target.get(name), dict):
                target[name] = {}
            target = target[name]
        target[fields[-1]] = value
    return config


def _flat_keys(config: dict, prefix: str = "config") -> list[str]:
    keys = []
    for name, value in (config or {}).items():
        keys.append(f"{prefix}.{name}")
        if isinstance(value, dict):
            keys += _flat_keys(value, f"{prefix}.{name}")
    return keys


def check_override_keys(argv: Sequence[str], extra: dict[str, Sequence[str]] | None = None) -> None:
    """Every ``-o config.X.Y=...`` must name a key of the ``-c`` YAML (s3prl would add a misspelt key silently and
    run with the YAML's value); ``extra`` maps a section (``config.pretrain_expert.datarc``) to more keys it
    accepts (our typed configs' fields that the shipped YAML leaves at their defaults)."""
    config_path = _peek(argv, "-c", "--config")
    if not config_path or not Path(config_path).is_file():
        return
    with open(config_path) as handle:
        config = yaml.safe_load(handle) or {}
    known = set(_flat_keys(config))
    for section, names in (extra or {}).items():
        if section in known:
            known.update(f"{section}.{name}" for name in names)
    for key, _ in parse_override(_peek(argv, "-o", "--override")):
        if not key.startswith("config.") or key in known:
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else f"keys are the YAML's, e.g. {sorted(known)[0]}"
        raise UserError(f"-o {key}: no such key in {config_path}; {hint} (a key the YAML lacks: add it to a copy of "
                        f"the YAML and pass that with -c)")


def config_paths(config: dict, prefix: str = "config") -> dict[str, str]:
    """Every string value of the config that looks like a path, by its ``-o`` key (lists: ``key[i]``)."""
    paths = {}
    for name, value in (config or {}).items():
        key = f"{prefix}.{name}"
        if isinstance(value, dict):
            paths.update(config_paths(value, key))
        elif isinstance(value, str) and os.sep in value:
            paths[key] = value
        elif isinstance(value, (list, tuple)):
            paths.update({f"{key}[{i}]": v for i, v in enumerate(value) if isinstance(v, str) and os.sep in v})
    return paths


def _uses_published_download(argv: Sequence[str]) -> bool:
    """A published checkpoint is to be fetched: no -k, or (encodecmae_v2) a -k that names a model, not a file."""
    entry, ckpt = _peek(argv, "-u", "--upstream"), _peek(argv, "-k", "--upstream_ckpt")
    return entry in PUBLISHED_ENTRIES and (not ckpt or (entry == "encodecmae_v2" and not os.path.isfile(ckpt)))


def _resume_checkpoint(argv: Sequence[str], kind: str) -> Path | None:
    """The checkpoint a resumed run starts from, chosen as s3prl's scripts choose it: ``-e FILE``, or the
    highest states-N.ckpt of ``-e DIR`` / of ``-a``'s experiment folder; None when the run does not resume."""
    past = _peek(argv, "-e", "--past_exp")
    if not past and _peek(argv, "-a", "--auto_resume", flag=True):
        expdir = Path(_peek(argv, "-p", "--expdir") or f"result/{kind}/{_peek(argv, '-n', '--expname')}")
        past = str(expdir) if any(expdir.glob("states-*.ckpt")) else None
    if not past:
        return None
    path = Path(past)
    if path.is_dir():
        found = sorted(path.glob("states-*.ckpt"), key=lambda p: int(p.stem.split("-")[-1]))
        return found[-1] if found else None
    return path


def check_resume_distribution(argv: Sequence[str], trust: bool = False) -> None:
    """s3prl's run_downstream.py asserts that a resumed training runs as its checkpoint's did (distributed or
    not, and with as many processes); check it first and say how to resume. ``--local_rank`` (given by the
    launcher) makes a run distributed, as in s3prl's script."""
    if _peek(argv, "-m", "--mode") != "train":
        return
    path = _resume_checkpoint(argv, "downstream")
    if path is None or not path.is_file():
        return
    checkpoint = compat.load_runner_checkpoint(path, trust)
    before = getattr(checkpoint["Args"], "local_rank", None) is not None
    now = _peek(argv, "--local_rank") is not None
    if now != before:
        how = "with torchrun / torch.distributed" if before else "as a single process"
        raise UserError(f"-e {path}: that run was trained {how}; resume it the same way "
                        f"(now: {'distributed' if now else 'single process'})")
    world, _ = settings.distributed_environment()
    if now and world != checkpoint.get("WorldSize"):
        raise UserError(f"-e {path}: that run used {checkpoint.get('WorldSize')} processes, this one {world}; resume "
                        f"with the same --nproc_per_node")


# --- a failed start leaves no experiment folder ------------------------------------------------------
class NewExperimentFolder:
    """The experiment folder a new run is about to create (and the parents it will create with it):
    :meth:`remove` deletes them again if the run failed before writing any checkpoint."""

    def __init__(self, argv: Sequence[str], kind: str):
        self.created: list[Path] = []
        if _resumes(argv) or _wants_help(argv):
            return
        expdir = _peek(argv, "-p", "--expdir")
        name = _peek(argv, "-n", "--expname")
        if expdir is None and name is None:
            return
        folder = Path(expdir) if expdir is not None else Path("result") / kind / name
        # this folder and each missing parent: removed (deepest first) only if this run created them
        for path in [folder, *folder.parents]:
            if path.exists() or str(path) in ("", "."):
                break
            self.created.append(path)

    def remove(self, _err: BaseException | None = None) -> None:
        if not self.created or not self.created[0].is_dir():
            return
        folder = self.created[0]
        if any(folder.rglob("*.ckpt")):
            return  # something worth keeping was written
        shutil.rmtree(folder, ignore_errors=True)
        for parent in self.created[1:]:
            try:
                parent.rmdir()  # only if empty
            except OSError:
                break


def downstream_config(name: str) -> Path:
    """Default ``config.yaml`` of ``-d NAME``: ours, else s3prl's (``./downstream`` as s3prl reads it, then
    installed)."""
    candidates = [registry.shipped_recipe_config(name),
                  Path("downstream") / name / "config.yaml",
                  compat.s3prl_package_dir() / "downstream" / name / "config.yaml"]
    for path in candidates:
        if path is not None and path.is_file():
            return path
    raise UserError(
        f"no config.yaml for downstream '{name}'. s3prl's pip package does not ship recipe configs; "
        f"pass one with -c PATH (ours: {', '.join(registry.probe_names() + registry.recipe_names())})."
    )


def _with_device(argv: Sequence[str]) -> list[str]:
    """A copy of argv with ``--device`` set to what this machine has (s3prl defaults to cuda), unless given."""
    argv = list(argv)
    if not _wants_help(argv) and _peek(argv, "--device") is None:
        argv += ["--device", settings.default_device()]
    return argv


def _evaluation_beside_checkpoint(argv: list[str]) -> list[str]:
    """``-m evaluate -e CKPT``: s3prl takes the output folder from the checkpoint's arguments, a path relative to
    wherever training ran; write next to the checkpoint instead, unless ``-o args.expdir=...`` says otherwise."""
    past = _peek(argv, "-e", "--past_exp")
    override = _peek(argv, "-o", "--override")
    if _peek(argv, "-m", "--mode") != "evaluate" or not past or "args.expdir" in (override or ""):
        return argv
    folder = Path(past).resolve() if Path(past).is_dir() else Path(past).resolve().parent
    extra = f"args.expdir={folder}"
    if override and override.lower() != "none":
        index = max(i for i, a in enumerate(argv) if a in ("-o", "--override"))
        argv[index + 1] = f"{override},,{extra}"
    else:
        argv += ["-o", extra]
    return argv


def prepare_downstream_argv(argv: Sequence[str]) -> list[str]:
    argv = _evaluation_beside_checkpoint(_with_device(argv))
    if _wants_help(argv):
        return argv
    downstream = _peek(argv, "-d", "--downstream")
    if downstream and _peek(argv, "-c", "--config") is None and not _resumes(argv):
        argv += ["-c", str(downstream_config(downstream))]
    return argv


def _new_run(argv: Sequence[str]) -> bool:
    """Whether the command starts a new run: not for -h, nor for a resume (whose -e is checked here)."""
    if _wants_help(argv):
        return False
    check_past_exp(argv)
    return not _resumes(argv)


def _check_downstream_start(argv: Sequence[str]) -> None:
    if not _new_run(argv):
        return
    if not _peek(argv, "-d", "--downstream") and not _peek(argv, "-c", "--config"):
        raise UserError("run_downstream.py needs -d DOWNSTREAM (e.g. -d esc50) to start, or -e CKPT to resume / "
                        "evaluate")
    upstream = _peek(argv, "-u", "--upstream")
    if upstream:
        registry.require_hub_entry(upstream)
    _check_file_option(argv, "config", "-c", "--config")


_PATH_HINTS = {
    "config.downstream_expert.datarc.meta_data":
        "IEMOCAP's meta_data is written by `python -m encodecmae_s3prl.iemocap_preprocess /data/IEMOCAP_full_release`",
}


def run_downstream(argv: Sequence[str] | None = None) -> None:
    """``run_downstream.py``: s3prl's downstream script with our upstreams and probes registered."""
    argv, trust = take_trust_flag(sys.argv[1:] if argv is None else argv)
    folder = NewExperimentFolder(argv, "downstream")
    paths: dict[str, str] = {}
    with _interrupt_says_how_to_resume("downstream", argv, folder), \
            user_errors(path_keys=paths, path_hints=_PATH_HINTS, on_user_error=folder.remove, fixes=downstream_fixes()):
        registry.register()
        _check_downstream_start(argv)
        # the hub asked once, only when a published checkpoint is to be downloaded; offline, the cached copy loads
        # at once or the error comes at once
        online = settings.hub_reachable() if _uses_published_download(argv) else None
        upstream_settings = UpstreamSettings.from_environment(trust, online)
        compat.apply()
        argv = prepare_downstream_argv(argv)
        if not _resumes(argv) and not _wants_help(argv):
            check_override_keys(argv)
            paths.update(config_paths(effective_config(argv)))
        check_resume_distribution(argv, trust)
        import s3prl.downstream.runner as runner
        import s3prl.run_downstream as script

        registry.use_settings_in_hub(upstream_settings)
        compat.route_checkpoint_loads(script, runner, trust=trust)
        compat.evaluate_at_checkpoint_step(runner)
        compat.inference_input_checked(runner)
        sys.argv = [sys.argv[0]] + argv
        before = _empty_result_folders()
        try:
            _main_with_help(script.main, argv)
        finally:
            if _peek(argv, "-m", "--mode") == "evaluate":  # s3prl creates the training run's (relative) folder first
                for folder in sorted(_empty_result_folders() - before, key=lambda p: -len(p.parts)):
                    folder.rmdir()


@contextlib.contextmanager
def _interrupt_says_how_to_resume(kind: str, argv: Sequence[str], folder: "NewExperimentFolder"):
    """Ctrl-C: one line (where the checkpoints are, how to resume), exit status 130, no empty experiment folder."""
    try:
        yield
    except KeyboardInterrupt:
        folder.remove()
        expdir = _peek(argv, "-p", "--expdir") or (f"result/{kind}/{_peek(argv, '-n', '--expname')}"
                                                   if _peek(argv, "-n", "--expname") else None)
        where = f"; checkpoints written so far are in {expdir}, resume with: python run_{kind}.py -e {expdir}" \
            if expdir and Path(expdir).is_dir() else "; nothing was saved"
        print(f"\nrun_{kind}.py: interrupted{where}", file=sys.stderr, flush=True)
        raise SystemExit(130) from None


def _empty_result_folders() -> set[Path]:
    """Folders under ./result (./result included) that hold no file at any depth."""
    root = Path("result")
    if not root.is_dir():
        return set()
    return {p for p in [root, *root.rglob("*")] if p.is_dir() and not any(q.is_file() for q in p.rglob("*"))}


def _main_with_help(main, argv: Sequence[str]) -> None:
    try:
        main()
    except SystemExit:
        if _wants_help(argv):
            print(HELP_EPILOG)
        raise


def pretrain_config(upstream: str, kind: str, size: str | None = None) -> Path:
    """``config_runner.yaml`` / ``config_model[_size].yaml`` of a pretrain task: ours or s3prl's."""
    name = f"config_{kind}.yaml" if size is None else f"config_{kind}_{size}.yaml"
    if upstream == registry.OUR_PRETRAIN_TASK:
        folder = registry.package_folder("encodecmae_s3prl.pretrain_task")
    else:
        folder = compat.s3prl_package_dir() / "pretrain" / upstream
        if not folder.is_dir():
            tasks = [registry.OUR_PRETRAIN_TASK] + sorted(
                p.name for p in folder.parent.iterdir() if p.is_dir() and not p.name.startswith("_"))
            close = difflib.get_close_matches(upstream, tasks, n=3, cutoff=0.6)
            raise UserError(f"-u {upstream}: no such pretrain task; "
                            + (f"did you mean {', '.join(close)}?" if close else f"tasks: {', '.join(tasks)}"))
    path = folder / name
    if not path.is_file():
        raise UserError(
            f"{path} does not exist. s3prl's pip package omits the pretrain configs of '{upstream}'; "
            f"pass -c (runner) and -g (model) explicitly."
        )
    return path


def prepare_pretrain_argv(argv: Sequence[str]) -> list[str]:
    argv = _with_device(argv)
    if _wants_help(argv):
        return argv
    upstream = _peek(argv, "-u", "--upstream")
    if upstream and not _resumes(argv):
        runner_config = _peek(argv, "-c", "--config")
        if runner_config is None:
            argv += ["-c", str(pretrain_config(upstream, "runner"))]
        elif runner_config in RUNNER_PRESETS and not Path(runner_config).exists():
            # `-c cpu` is shorthand for our pretrain_task/config_runner_cpu.yaml
            index = max(i for i, a in enumerate(argv) if a in ("-c", "--config"))
            argv[index + 1] = str(pretrain_config(upstream, f"runner_{runner_config}"))
        model_config = _peek(argv, "-g", "--upstream_config")
        if model_config is None:
            argv += ["-g", str(pretrain_config(upstream, "model"))]
        elif model_config in PRETRAIN_MODEL_SIZES and not Path(model_config).exists():
            # `-g small` is shorthand for our pretrain_task/config_model_small.yaml
            index = max(i for i, a in enumerate(argv) if a in ("-g", "--upstream_config"))
            argv[index + 1] = str(pretrain_config(upstream, "model", model_config))
    return argv


def _check_pretrain_start(argv: Sequence[str]) -> None:
    """What s3prl's run_pretrain.py would only assert on, or trace back for, after creating the folder."""
    if not _new_run(argv):
        return
    if not _peek(argv, "-u", "--upstream"):
        raise UserError(f"run_pretrain.py needs -u TASK to start (ours: -u {registry.OUR_PRETRAIN_TASK}), "
                        f"or -e CKPT / -a to resume")
    if not _peek(argv, "-n", "--expname"):
        raise UserError("run_pretrain.py needs -n NAME (the experiment name) to start a new experiment, also "
                        "with -p DIR")
    _check_file_option(argv, "runner config", "-c", "--config")
    if _peek(argv, "--multi_gpu", flag=True) and _peek(argv, "-u", "--upstream") == registry.OUR_PRETRAIN_TASK:
        raise UserError("--multi_gpu (s3prl's single-process DataParallel) is not supported for encodecmae: launch "
                        "DDP instead, e.g. torchrun --nproc_per_node 4 run_pretrain.py -u encodecmae ...")
    model_config = _peek(argv, "-g", "--upstream_config")
    if model_config is not None and not Path(model_config).is_file():
        raise UserError(f"-g {model_config}: no such model config file; give a YAML or one of our sizes: "
                        f"{', '.join(PRETRAIN_MODEL_SIZES)}")


def _pretrain_extra_keys(upstream: str | None) -> dict[str, Sequence[str]]:
    """Our pretraining datarc's fields: all valid in -o, also those the shipped YAML leaves at their defaults."""
    if upstream != registry.OUR_PRETRAIN_TASK:
        return {}
    import dataclasses

    from encodecmae_s3prl.pretrain_task.pretrain_expert import PretrainDataConfig

    return {"config.pretrain_expert.datarc": [f.name for f in dataclasses.fields(PretrainDataConfig)]}


def run_pretrain(argv: Sequence[str] | None = None) -> None:
    """``run_pretrain.py``: s3prl's pretrain script and runner with our task registered."""
    argv, trust = take_trust_flag(sys.argv[1:] if argv is None else argv)
    folder = NewExperimentFolder(argv, "pretrain")
    paths: dict[str, str] = {}
    with _interrupt_says_how_to_resume("pretrain", argv, folder), \
            user_errors(path_keys=paths, on_user_error=folder.remove, fixes=pretrain_fixes()):
        compat.enter_s3prl_script_environment(trust)
        registry.register()
        argv = prepare_pretrain_argv(argv)
        _check_pretrain_start(argv)
        if not _resumes(argv) and not _wants_help(argv):
            check_override_keys(argv, _pretrain_extra_keys(_peek(argv, "-u", "--upstream")))
            config = effective_config(argv)
            compat.check_runner_steps(config)
            paths.update(config_paths(config))
        sys.argv = [sys.argv[0]] + argv
        with compat.pretrain_tasks_listed([registry.OUR_PRETRAIN_TASK]), \
                compat.pretrain_expert_settings(OUR_PRETRAIN_EXPERT, trust=trust,
                                                encodec_weights=settings.encodec_weights()):
            import run_pretrain as script  # s3prl/run_pretrain.py, importable after enter_s3prl_script_environment

            compat.route_checkpoint_loads(script, trust=trust)
            _main_with_help(script.main, argv)
