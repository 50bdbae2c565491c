"""The only place that patches s3prl 0.4.18 and torchaudio 2.9 so they work together.

Each shim is minimal, idempotent, and says why it exists (its ``Reason:``). Nothing here
edits installed files; everything is applied in-process by :func:`apply`.
"""
from __future__ import annotations

import contextlib
import functools
import glob
import importlib
import logging
import os
import re
import shutil
import sys
import types
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile
import torch
import torchaudio

from encodecmae_s3prl.errors import UserError
from encodecmae_s3prl.package_layout import is_checkout_root
from encodecmae_s3prl.upstream.checkpoint import register_safe_globals

_APPLIED = False


def s3prl_package_dir() -> Path:
    """The installed ``s3prl/`` folder, found without importing s3prl (its import needs the shims)."""
    import importlib.util

    spec = importlib.util.find_spec("s3prl")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("s3prl is not installed in this environment: run `make setup` "
                          "(or pip install s3prl==0.4.18).")
    return Path(list(spec.submodule_search_locations)[0])


# --- torchaudio 2.9 removed its sox/ffmpeg backends -------------------------------------

def _set_audio_backend(_backend=None) -> None:
    """Reason: s3prl calls torchaudio.set_audio_backend('sox_io') at import; 2.9 removed it (soundfile is used)."""


def load_audio(path, frame_offset: int = 0, num_frames: int = -1, normalize: bool = True,
               channels_first: bool = True, **_ignored) -> tuple[torch.Tensor, int]:
    """Reason: torchaudio.load in 2.9 needs torchcodec; s3prl's emotion recipe calls it. soundfile does the same job."""
    stop = None if num_frames is None or num_frames < 0 else frame_offset + num_frames
    data, sample_rate = soundfile.read(str(path), start=frame_offset, stop=stop, dtype="float32", always_2d=True)
    wav = torch.from_numpy(np.ascontiguousarray(data.T if channels_first else data))
    return wav, sample_rate


def apply_effects_tensor(wav: torch.Tensor, sample_rate: int, effects: Sequence[Sequence[str]],
                         channels_first: bool = True) -> tuple[torch.Tensor, int]:
    """The subset of sox effects s3prl recipes use: channels, rate, gain (dB)."""
    if not channels_first:
        wav = wav.transpose(0, 1)
    for name, *values in effects:
        if name == "channels":
            count = int(values[0])
            if count != 1 and wav.shape[0] != count:
                raise NotImplementedError(f"sox effect 'channels {count}' is not supported by the shim (only 1)")
            if count == 1:
                wav = wav.mean(dim=0, keepdim=True)
        elif name == "rate":
            target = int(float(values[0]))
            if target != sample_rate:
                wav = torchaudio.functional.resample(wav, sample_rate, target)
                sample_rate = target
        elif name == "gain":
            wav = wav * (10.0 ** (float(values[-1]) / 20.0))
        else:
            raise NotImplementedError(
                f"sox effect {name!r} is not supported by encodecmae_s3prl.compat (supported: channels, rate, gain)"
            )
    return (wav if channels_first else wav.transpose(0, 1)), sample_rate


def apply_effects_file(path, effects: Sequence[Sequence[str]], normalize: bool = True,
                       channels_first: bool = True, **_ignored) -> tuple[torch.Tensor, int]:
    """Reason: torchaudio.sox_effects is gone in 2.9; s3prl's speech_commands dataset reads every file through it."""
    wav, sample_rate = load_audio(path)
    return apply_effects_tensor(wav, sample_rate, effects, channels_first=channels_first)


def _torchcodec_available() -> bool:
    try:
        import torchcodec  # noqa: F401
    except Exception:
        return False
    return True


def _patch_torchaudio() -> None:
    if not hasattr(torchaudio, "set_audio_backend"):
        torchaudio.set_audio_backend = _set_audio_backend
    if not _torchcodec_available():
        torchaudio.load = load_audio
    try:
        importlib.import_module("torchaudio.sox_effects")
    except ImportError:
        module = types.ModuleType("torchaudio.sox_effects")
        module.__doc__ = "encodecmae_s3prl.compat: soundfile-backed subset of the removed sox_effects API."
        module.apply_effects_file = apply_effects_file
        module.apply_effects_tensor = apply_effects_tensor
        sys.modules["torchaudio.sox_effects"] = module
        torchaudio.sox_effects = module


# --- huggingface_hub ------------------------------------------------------------------

def _patch_huggingface_hub() -> None:
    """Reason: s3prl's downstream runner imports HfFolder and Repository, removed in huggingface_hub 1.0.

    The pinned 0.36 still has both; this only matters if someone upgrades, and then only
    the (unused by us) --push_to_hf_hub path would fail, not the import.
    """
    import huggingface_hub

    for name in ("HfFolder", "Repository"):
        if not hasattr(huggingface_hub, name):
            def _removed(*_args, _name=name, **_kwargs):
                raise RuntimeError(f"huggingface_hub.{_name} was removed in huggingface_hub 1.0; "
                                   "--push_to_hf_hub needs huggingface_hub<1.0")
            setattr(huggingface_hub, name, _removed)


def apply() -> None:
    """Apply every shim once. Safe to call many times."""
    global _APPLIED
    if _APPLIED:
        return
    _patch_torchaudio()
    _patch_huggingface_hub()
    # Reason: s3prl.hub imports every upstream; espnet_hubert's warns "ESPnet is not installed" on every run of
    # every command. Someone who picks that upstream still gets its own error saying how to install ESPnet.
    for name in ("s3prl.upstream.espnet_hubert.expert", "upstream.espnet_hubert.expert"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Reason: torch >= 2.6 loads weights_only by default and s3prl checkpoints hold an argparse.Namespace.
    register_safe_globals()
    _APPLIED = True


def enter_s3prl_script_environment(trust: bool = False) -> None:
    """Make the top-level names s3prl's pretrain scripts import (``pretrain``, ``optimizers``,
    ``schedulers``, ``utility``, ``upstream``) resolve to the installed s3prl package.

    Reason: s3prl's run_pretrain.py and pretrain/runner.py import relative to the s3prl folder
    (they expect ``cd s3prl``); we put that folder first on sys.path instead of asking the user
    to change directory. Our own folders are only reachable as ``encodecmae_s3prl.*``.
    ``trust``: the runner's ``-e`` checkpoint may need classes outside the safe allow-list (``safe_load``).
    """
    apply()
    folder = str(s3prl_package_dir())
    # a checkout's top-level `upstream/` must not shadow s3prl's `upstream` package here
    sys.path[:] = [p for p in sys.path if not is_checkout_root(p)]
    if folder not in sys.path:
        sys.path.insert(0, folder)
    runner_module = importlib.import_module("pretrain.runner")
    _atomic_runner_checkpoints(runner_module, trust)
    _steps_checked_before_training(runner_module)


def load_runner_checkpoint(path, trust: bool = False, map_location="cpu") -> dict:
    """A checkpoint of s3prl's runners (``-e``): ``safe_load``, then a CheckpointError naming the file unless it
    holds the runner's ``Args`` and ``Config``."""
    from encodecmae_s3prl.upstream.checkpoint import CheckpointError, safe_load

    checkpoint = safe_load(path, trust=trust, map_location=map_location)
    if not (isinstance(checkpoint, dict) and "Args" in checkpoint and "Config" in checkpoint):
        keys = list(checkpoint)[:6] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"-e {path} is not a checkpoint of s3prl's runner (it has {keys}, without 'Args' and 'Config'): give a "
            f"states-N.ckpt or dev-best.ckpt written by run_pretrain.py / run_downstream.py (an upstream's "
            f"weights go with -k instead)")
    return checkpoint


class _TorchWithSafeLoad(types.ModuleType):
    """``torch`` as one s3prl script/runner module sees it: identical, except ``load`` of a path goes through
    :func:`load_runner_checkpoint`, with the command's ``trust`` (``--trust-checkpoint``).

    Reason: those modules ``torch.load`` only the ``-e`` checkpoint; a truncated, foreign or refused file gave a
    bare PytorchStreamReader / UnpicklingError / KeyError('Args') traceback. ``safe_load`` names the file and
    the fix.
    """

    def __init__(self, trust: bool = False):
        super().__init__("torch")
        self.trust = trust

    def __getattr__(self, name):
        return getattr(torch, name)

    def load(self, f, map_location=None, *args, **kwargs):
        if not isinstance(f, (str, os.PathLike)) or args or set(kwargs) - {"weights_only"}:
            return torch.load(f, map_location, *args, **kwargs)
        return load_runner_checkpoint(f, self.trust, "cpu" if map_location is None else map_location)


_EPOCH_CHECKPOINT = re.compile(r"states-epoch-\d+\.ckpt")


class _TorchWithAtomicSave(_TorchWithSafeLoad):
    """``torch`` for s3prl's pretrain runner: also ``save`` writes atomically, only on rank 0, and never
    under the name ``states-epoch-N.ckpt``."""

    @staticmethod
    def save(obj, path, *args, **kwargs):
        from encodecmae_s3prl.upstream.checkpoint import atomic_save

        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_rank() != 0:
            return
        named = _step_named(path, obj)
        if named != str(path):  # s3prl's log line named the epoch file; _RunnerLog held it back
            _RunnerLog.write(f"[Runner] - Save the checkpoint to: {named}")
        atomic_save(obj, named)
        _keep_newest_checkpoints(named, obj)


def _keep_newest_checkpoints(saved: str, states) -> None:
    """Reason: s3prl's runner deletes the oldest checkpoints *before* writing the new one (``check_ckpt_num``), so a
    write that fails (a full disk) could leave none; it finds nothing to delete (``_RunnerGlob``) and this keeps
    the newest ``runner.max_keep`` once the new one is whole."""
    max_keep = ((states.get("Config") or {}).get("runner") or {}).get("max_keep") if isinstance(states, dict) else None
    if not isinstance(max_keep, int) or max_keep < 1:
        return
    step = re.compile(r"states-(\d+)\.ckpt")
    found = sorted((int(m.group(1)), path) for path in glob.glob(os.path.join(os.path.dirname(saved), "states-*.ckpt"))
                   if (m := step.fullmatch(os.path.basename(path))))
    for _, path in found[:-max_keep]:
        if os.path.abspath(path) != os.path.abspath(saved):
            os.remove(path)


class _RunnerGlob(types.ModuleType):
    """``glob`` for s3prl's pretrain runner: its pre-save pruning finds no checkpoint (see _keep_newest_checkpoints)."""

    def __init__(self):
        super().__init__("glob")

    def __getattr__(self, name):
        return getattr(glob, name)

    @staticmethod
    def glob(pattern, *args, **kwargs):
        if os.path.basename(str(pattern)) == "states-*.ckpt":
            return []
        return glob.glob(pattern, *args, **kwargs)


def _step_named(path, states) -> str:
    """Reason: s3prl's pretrain runner names its last checkpoint ``states-epoch-{n_epochs}.ckpt`` whenever it
    counts at least one epoch (n_epochs > 0, or total_steps x accumulation >= the corpus's file count, i.e.
    almost always), and names every other one ``states-{global_step}.ckpt``. Its own ``-e DIR`` / ``-a`` resume
    and ``max_keep`` then sort the epoch file by its epoch number, as if it were the oldest step. Keep the
    step name for it: ``states-{global_step}.ckpt``, what s3prl writes at every other save (the runner stores
    ``Step`` = global_step - 1, its progress bar's count before the update, unless the task's
    ``add_state_to_save`` counted the step itself and says so with ``StepCounted``, as ours does)."""
    path = str(path)
    step = states.get("Step") if isinstance(states, dict) else None
    if _EPOCH_CHECKPOINT.fullmatch(os.path.basename(path)) and isinstance(step, int):
        global_step = step if states.get("StepCounted") else step + 1
        return os.path.join(os.path.dirname(path), f"states-{global_step}.ckpt")
    return path


class _RunnerLog:
    """``tqdm`` for s3prl's pretrain runner: its "Save the checkpoint to: .../states-epoch-N.ckpt" line is left to
    ``_TorchWithAtomicSave.save``, which names the file it really writes."""

    def __getattr__(self, name):
        from tqdm import tqdm

        return getattr(tqdm, name)

    def __call__(self, *args, **kwargs):
        from tqdm import tqdm

        return tqdm(*args, **kwargs)

    @staticmethod
    def write(text, *args, **kwargs):
        from tqdm import tqdm

        if "Save the checkpoint to:" in str(text) and _EPOCH_CHECKPOINT.search(str(text)):
            return
        tqdm.write(text, *args, **kwargs)


def _atomic_runner_checkpoints(runner_module, trust: bool = False) -> None:
    """Reason: s3prl's pretrain runner writes states-N.ckpt with a plain torch.save (a kill mid-write leaves a
    truncated file that -e then cannot load) from every DDP rank at once; route it through atomic_save."""
    runner_module.torch = _TorchWithAtomicSave(trust)
    if not isinstance(getattr(runner_module, "tqdm", None), _RunnerLog):
        runner_module.tqdm = _RunnerLog()
    if not isinstance(getattr(runner_module, "glob", None), _RunnerGlob):
        runner_module.glob = _RunnerGlob()


def route_checkpoint_loads(*modules, trust: bool = False) -> None:
    """Give s3prl's script/runner modules the ``torch`` whose ``load`` is our ``safe_load`` with ``trust`` (see
    :class:`_TorchWithSafeLoad`); the pretrain runner's (atomic save) already has it."""
    for module in modules:
        if not isinstance(getattr(module, "torch", None), _TorchWithAtomicSave):
            module.torch = _TorchWithSafeLoad(trust)


# --- what s3prl's runners only assert, checked first and said as a sentence -------------------------------
def check_runner_steps(config: dict, files: int | None = None) -> None:
    """s3prl's pretrain runner asserts ``total_steps > log_step`` and ``> save_step`` (a bare AssertionError);
    a UserError saying which setting to change instead. With ``n_epochs`` > 0 the total is ``n_epochs x files /
    gradient_accumulate_steps`` as the runner counts it, known once the corpus is (``files``; None: not yet)."""
    runner = config.get("runner") or {}
    epochs = runner.get("n_epochs") or -1
    by_epochs = epochs > 0
    if by_epochs:
        if files is None:
            return
        total = int(epochs * files / (runner.get("gradient_accumulate_steps") or 1))
        source = f"{total} steps (from config.runner.n_epochs = {epochs})"
    else:
        total = runner.get("total_steps")
        source = f"config.runner.total_steps = {total}"
    for name in ("log_step", "save_step"):
        value = runner.get(name)
        if isinstance(total, int) and isinstance(value, int) and not total > value:
            raise UserError(f"{source} must be greater than config.runner.{name} = {value} (s3prl's runner needs "
                            f"it): raise {'n_epochs' if by_epochs else 'total_steps'} or lower {name}, e.g. -o "
                            f"\"config.runner.{name}={max(1, total // 2)}\"")


def _patch_runner_method(runner_module, name: str, wrap) -> None:
    """Replace ``runner_module.Runner.<name>`` by ``wrap(original)``, once per process: a second call (another
    command in the same interpreter, a test) finds the patched method marked and leaves it."""
    runner_class = runner_module.Runner
    original = getattr(runner_class, name)
    if getattr(original, "_encodecmae_patched", False):
        return
    patched = functools.wraps(original)(wrap(original))
    patched._encodecmae_patched = True
    setattr(runner_class, name, patched)


def _steps_checked_before_training(runner_module) -> None:
    """Reason: with ``n_epochs`` s3prl's pretrain runner knows its step count only from the dataloader it gets
    in ``train()``; check it there (:func:`check_runner_steps`) before the runner's assertion does."""

    def wrap(original):
        def train(self):
            upstream = self.upstream
            get_loader = upstream.get_train_dataloader

            def checked_loader():
                loader = get_loader()
                check_runner_steps(self.config, len(loader.dataset))
                return loader

            upstream.get_train_dataloader = checked_loader
            try:
                return original(self)
            finally:
                del upstream.get_train_dataloader

        return train

    _patch_runner_method(runner_module, "train", wrap)


def check_inference_audio(path, reads_any_rate: bool = False) -> None:
    """What ``run_downstream.py -m inference`` asserts of ``-t``: an audio file, at 16 kHz unless the downstream
    reads audio itself (``reads_any_rate``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"-m inference: {path} is not a file; give the audio file to run with -t/--evaluate_split")
    if not reads_any_rate:
        rate = soundfile.info(str(path)).samplerate
        if rate != 16000:
            raise UserError(f"-m inference: {path} is {rate} Hz; s3prl's inference mode reads 16 kHz audio, "
                            f"resample the file first")


def inference_input_checked(runner_module) -> None:
    """Reason: s3prl's downstream runner asserts that ``-t`` is a file and 16 kHz (bare AssertionErrors); check
    both first (:func:`check_inference_audio`)."""

    def wrap(original):
        def inference(self):
            check_inference_audio(self.args.evaluate_split, hasattr(self.downstream.model, "load_audio"))
            return original(self)

        return inference

    _patch_runner_method(runner_module, "inference", wrap)


@contextlib.contextmanager
def pretrain_expert_settings(module_name: str, **settings):
    """Reason: s3prl's pretrain runner builds a task's ``UpstreamPretrainExpert`` with (datarc, upstream_config,
    device, multi_gpu) only; for the duration, the command's settings (``trust``, ``encodec_weights``) go with
    them as keyword arguments."""
    module = importlib.import_module(module_name)
    expert = module.UpstreamPretrainExpert
    module.UpstreamPretrainExpert = functools.partial(expert, **settings)
    try:
        yield
    finally:
        module.UpstreamPretrainExpert = expert


def evaluate_at_checkpoint_step(runner_module) -> None:
    """Reason: ``run_downstream.py -m evaluate`` calls ``Runner.evaluate()`` with global_step 0, so the scores of a
    checkpoint from step N are logged as step 0; pass the checkpoint's ``Step`` (the same temporary TensorBoard
    writer s3prl uses in that mode)."""

    def wrap(original):
        def evaluate(self, split=None, logger=None, global_step=0):
            step = (getattr(self, "init_ckpt", None) or {}).get("Step", 0)
            if split is not None or logger is not None or global_step != 0 or not step:
                return original(self, split, logger, global_step)
            import tempfile

            from torch.utils.tensorboard import SummaryWriter

            tempdir = tempfile.mkdtemp()
            writer = SummaryWriter(tempdir)
            try:
                return original(self, self.args.evaluate_split, writer, step)
            finally:
                writer.close()
                shutil.rmtree(tempdir, ignore_errors=True)

        return evaluate

    _patch_runner_method(runner_module, "evaluate", wrap)


@contextlib.contextmanager
def pretrain_tasks_listed(extra_tasks: Sequence[str]):
    """Reason: s3prl's run_pretrain.py builds its ``-u`` choices from ``os.listdir('pretrain/')``
    relative to the working directory; list s3prl's installed tasks plus ours instead."""
    real_listdir = os.listdir
    installed = sorted(p.name for p in (s3prl_package_dir() / "pretrain").iterdir() if p.is_dir()
                       and not p.name.startswith("__"))

    def listdir(path="."):
        if os.path.normpath(str(path)) == "pretrain":  # whatever folder of that name the cwd may hold
            return installed + [t for t in extra_tasks if t not in installed]
        return real_listdir(path)

    os.listdir = listdir
    try:
        yield
    finally:
        os.listdir = real_listdir
