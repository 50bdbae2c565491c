"""What each command adds to a library error it prints (``errors.user_errors(fixes=...)``): the library names the
value that fixes the mistake; the command, which knows its own options, names the option for that value. Library
modules that hold a command (``codec_cache``, ``self_training``...) take their tables from here, never from ``cli``.
"""
from __future__ import annotations

from encodecmae_s3prl.settings import TRUST_FLAG
from encodecmae_s3prl.upstream.checkpoint import CheckpointNotGivenError, UntrustedCheckpointError
from encodecmae_s3prl.upstream.published import PublishedCheckpointUnavailableError

TRUST_FIXES = {UntrustedCheckpointError: f"or pass {TRUST_FLAG}"}


def upstream_fixes() -> dict[type, str]:
    """What run_downstream.py and extract (-u, -k, ENCODEC_CKPT) add to the upstream's errors."""
    from encodecmae_s3prl.upstream.expert import UnfittedCodecError  # the model code, imported when a command runs

    return {**TRUST_FIXES,
            CheckpointNotGivenError: "pass it with -k /path/to/checkpoint",
            PublishedCheckpointUnavailableError: "with -k /path/to/model.pt",
            UnfittedCodecError: "a checkpoint with -k, the EnCodec weights with "
                                "ENCODEC_CKPT=/path/to/encodec_24khz-d7cc33bc.th"}


def downstream_fixes() -> dict[type, str]:
    """What run_downstream.py adds to the upstream's and the probes' errors."""
    from encodecmae_s3prl.downstream_probes.task import ProbeRootError, UnknownFoldError

    return {**upstream_fixes(),
            ProbeRootError: "or with -o config.downstream_expert.datarc.root=/path/to/dataset",
            UnknownFoldError: "with -o config.downstream_expert.datarc.test_fold=NAME"}


def pretrain_fixes() -> dict[type, str]:
    """What run_pretrain.py adds to our pretraining task's errors."""
    from encodecmae_s3prl.pretrain_task.corpus import CorpusListError

    return {**TRUST_FIXES, CorpusListError: "set it in the runner config, or with "
                                            "-o \"config.pretrain_expert.datarc.corpus=['/path/to/audio']\""}


def corpus_option_fixes() -> dict[type, str]:
    """What the commands that take ``--corpus`` (codec cache, self-training, quantizer weights) add to its errors."""
    from encodecmae_s3prl.pretrain_task.corpus import CorpusListError

    return {CorpusListError: "fix --corpus"}
