"""Test data: tiny datasets in the publishers' layouts, HEAR tasks, and random EnCodecMAE checkpoints.

What the tests and the benchmarks write (the benchmarks put this folder on ``sys.path``); the audio itself and the
datasets the offline demo also writes come from ``encodecmae_s3prl.demo_data``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from encodecmae_s3prl.demo_data import espeak_word, harmonic_tone, sound_class, write_wav

SPEECH_COMMANDS_WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]


def write_speech_commands(root: Path, per_word: int = 12, test_per_word: int = 3, extra_words=("bed", "cat"),
                          seed: int = 0, spoken: bool = False) -> tuple[Path, Path]:
    """Speech Commands v0.01 layout: ``train/<word>/<speaker>_nohash_<n>.wav``, ``train/_background_noise_``,
    ``validation_list.txt``, ``testing_list.txt``, and the separate ``test/<class>/`` root.

    Words are espeak-ng speech when ``spoken`` and available, else one harmonic tone per word.
    Returns (train_root, test_root).
    """
    rng = np.random.default_rng(seed)
    train_root, test_root = Path(root) / "train", Path(root) / "test"
    words = list(SPEECH_COMMANDS_WORDS) + list(extra_words)
    validation, testing = [], []

    def one(path: Path, word_index: int, word: str) -> None:
        if spoken and espeak_word(word, path, pitch=int(rng.integers(30, 70)), speed=int(rng.integers(140, 200))):
            return
        freq = 220.0 * 2 ** (word_index / 3)  # a minor third apart: easy to tell apart
        write_wav(path, harmonic_tone(freq * rng.uniform(0.98, 1.02), 1.0, 16000, rng), 16000)

    for index, word in enumerate(words):
        for n in range(per_word):
            name = f"{word}/{n:04x}beef_nohash_0.wav"
            one(train_root / name, index, word)
            (validation if n % 6 == 1 else testing if n % 6 == 2 else []).append(name)
        label = word if word in SPEECH_COMMANDS_WORDS else "_unknown_"
        for n in range(test_per_word):
            one(test_root / label / f"{word}_{n:04x}cafe_nohash_0.wav", index, word)
    noise_dir = train_root / "_background_noise_"
    for n in range(2):
        write_wav(noise_dir / f"noise_{n}.wav", (0.1 * rng.standard_normal(16000 * 3)).astype(np.float32), 16000)
    for n in range(test_per_word):
        write_wav(test_root / "_silence_" / f"silence_{n}.wav",
                  (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
    (train_root / "validation_list.txt").write_text("\n".join(validation) + "\n")
    (train_root / "testing_list.txt").write_text("\n".join(testing) + "\n")
    return train_root, test_root


IEMOCAP_EMOTIONS = {"neu": 0, "hap": 1, "ang": 2, "sad": 3}


def write_iemocap(root: Path, sessions: int = 5, per_emotion: int = 4, seed: int = 0) -> tuple[Path, Path]:
    """IEMOCAP_full_release layout: ``SessionN/sentences/wav/<dialog>/<utt>.wav`` and
    ``SessionN/dialog/EmoEvaluation/<dialog>.txt``, plus the ``meta_data/SessionN/{train,test}_meta_data.json``
    that s3prl's ``IEMOCAP_preprocess.py`` writes. Each emotion is a tone band. Returns (root, meta_data)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    entries: dict[int, list[dict]] = {}
    for s in range(1, sessions + 1):
        dialog = f"Ses0{s}F_impro01"
        lines = []
        entries[s] = []
        for emotion, index in IEMOCAP_EMOTIONS.items():
            for n in range(per_emotion):
                utt = f"{dialog}_F{index}{n:02d}"
                rel = f"Session{s}/sentences/wav/{dialog}/{utt}.wav"
                freq = 200.0 * 2 ** (index / 2) * rng.uniform(0.97, 1.03)
                write_wav(root / rel, harmonic_tone(freq, rng.uniform(0.8, 1.6), 16000, rng), 16000)
                lines.append(f"[0.0 - 1.0]\t{utt}\t{emotion}\t[2.5, 2.5, 2.5]\n")
                entries[s].append({"path": rel, "label": emotion, "speaker": f"Ses0{s}F"})
        label_dir = root / f"Session{s}/dialog/EmoEvaluation"
        label_dir.mkdir(parents=True, exist_ok=True)
        (label_dir / f"{dialog}.txt").write_text("".join(lines))
    meta = root / "meta_data"
    for s in entries:
        folder = meta / f"Session{s}"
        folder.mkdir(parents=True, exist_ok=True)
        train = [e for other, items in entries.items() if other != s for e in items]
        (folder / "train_meta_data.json").write_text(json.dumps({"labels": IEMOCAP_EMOTIONS, "meta_data": train}))
        (folder / "test_meta_data.json").write_text(json.dumps({"labels": IEMOCAP_EMOTIONS,
                                                                "meta_data": entries[s]}))
    return root, meta


def write_gtzan(root: Path, genres=("blues", "classical", "metal"), per_genre: int = 20, seconds: float = 2.0,
                seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for index, genre in enumerate(genres):
        for n in range(per_genre):
            write_wav(Path(root) / "genres" / genre / f"{genre}.{n:05d}.wav",
                      sound_class(index * 2 + 1, seconds, 22050, rng), 22050)
    return Path(root)


def write_fsd50k(root: Path, labels=("Bark", "Siren", "Rain"), per_split=(24, 8, 8), seed: int = 0) -> Path:
    """Multi-label clips: each a mixture of one or two of ``labels``, label c a harmonic tone band of its own."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    truth = root / "FSD50K.ground_truth"
    truth.mkdir(parents=True, exist_ok=True)
    (truth / "vocabulary.csv").write_text("".join(f"{i},{label},/m/{i:04d}\n" for i, label in enumerate(labels)))
    dev, evaluation, fname = ["fname,labels,mids,split"], ["fname,labels,mids"], 0
    for split, count in zip(("train", "val", "eval"), per_split, strict=True):
        for _ in range(count):
            chosen = sorted(rng.choice(len(labels), size=int(rng.integers(1, 3)), replace=False).tolist())
            wav = sum(sound_class(2 * c + 1, 1.0, 16000, rng) for c in chosen)
            folder = "FSD50K.eval_audio" if split == "eval" else "FSD50K.dev_audio"
            write_wav(root / folder / f"{fname}.wav", np.clip(wav, -1, 1), 16000)
            names = ",".join(labels[c] for c in chosen)
            mids = ",".join(f"/m/{c:04d}" for c in chosen)
            if split == "eval":
                evaluation.append(f'{fname},"{names}","{mids}"')
            else:
                dev.append(f'{fname},"{names}","{mids}",{split}')
            fname += 1
    (truth / "dev.csv").write_text("\n".join(dev) + "\n")
    (truth / "eval.csv").write_text("\n".join(evaluation) + "\n")
    return root


def write_hear_task(root: Path, classes: int = 4, per_split=(16, 6, 6), seed: int = 0,
                    task_name: str = "synthetic_sounds", prediction_type: str = "multiclass",
                    folds: int = 0, seconds: float = 1.0, rate: int = 16000) -> Path:
    """A HEAR 2021 scene task as hear-preprocess writes it: multiclass (one sound class per clip) or
    multilabel (a mixture of one or two classes), ``trainvaltest`` or, with ``folds`` > 0,
    ``presplit_kfold`` with ``fold00``.. each holding ``per_split[0]`` clips; clips of ``seconds`` in ``<rate>/``."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    if folds:
        splits, counts, mode = [f"fold{k:02d}" for k in range(folds)], [per_split[0]] * folds, "presplit_kfold"
    else:
        splits, counts, mode = ["train", "valid", "test"], list(per_split), "trainvaltest"
    for split, count in zip(splits, counts, strict=True):
        labels = {}
        for n in range(count):
            if prediction_type == "multilabel":
                chosen = sorted(rng.choice(classes, size=int(rng.integers(1, 3)), replace=False).tolist())
                wav = np.clip(sum(sound_class(2 * c + 1, seconds, rate, rng) for c in chosen), -1, 1)
            else:
                chosen = [n % classes]
                wav = sound_class(chosen[0], seconds, rate, rng)
            name = f"{split}_{n:03d}.wav"
            write_wav(root / str(rate) / split / name, wav, rate)
            labels[name] = [f"class{c}" for c in chosen]
        (root / f"{split}.json").write_text(json.dumps(labels))
    (root / "labelvocabulary.csv").write_text("idx,label\n" + "".join(f"{i},class{i}\n" for i in range(classes)))
    (root / "task_metadata.json").write_text(json.dumps({
        "task_name": task_name, "version": "synthetic", "embedding_type": "scene",
        "prediction_type": prediction_type, "split_mode": mode, "splits": splits, "sample_duration": seconds,
        "evaluation": ["mAP", "d_prime"] if prediction_type == "multilabel" else ["top1_acc"]}))
    return root


# Table 1's HEAR tasks as HEAR distributes them: folder, task_name, split mode, folds (0: train/valid/test), type,
# evaluation, real clip duration (s); FSD50K's clips vary up to 30 s (HEAR pads or trims to sample_duration)
HEAR_TABLE1_TASKS = (
    ("nsynth_pitch-v2.2.3-50h", "nsynth_pitch", "trainvaltest", 0, "multiclass", ["pitch_acc", "chroma_acc"], 4.0),
    ("gtzan_genre-1.0.0-full", "gtzan_genre", "new_split_kfold", 10, "multiclass", ["top1_acc"], 30.0),
    ("speech_commands-v0.0.2-full", "speech_commands", "trainvaltest", 0, "multiclass", ["top1_acc"], 1.0),
    ("tfds_crema_d-1.0.0-full", "tfds_crema_d", "new_split_kfold", 5, "multiclass", ["top1_acc"], 5.0),
    ("fsd50k-v1.0-full", "fsd50k", "trainvaltest", 0, "multilabel", ["mAP", "d_prime"], 10.0),
    ("esc50-v2.0.0-full", "esc50", "presplit_kfold", 5, "multiclass", ["top1_acc"], 5.0),
)


def write_hear_table1_tasks(root: Path, clips: int = 24, classes: int = 4, seconds: float | None = 1.0,
                            rate: int = 48_000, seed: int = 0, per_task: int | None = None) -> Path:
    """Stand-ins of Table 1's six HEAR tasks in the layout HEAR distributes (folder names, task names, split
    modes, fold counts, metrics as the real ones; audio at ``rate`` only, 48000 as HEAR ships): ``clips`` clips
    per split or fold (``per_task``: that many per task, shared out over its splits) of ``seconds`` each (None: the
    real tasks' clip durations), ``classes`` learnable classes
    (NSynth: MIDI pitches 60.., harmonic notes; the others sound classes; FSD50K mixtures of one or two)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for folder, name, mode, folds, kind, evaluation, real_seconds in HEAR_TABLE1_TASKS:
        task = root / folder
        duration = real_seconds if seconds is None else seconds
        splits = [f"fold{k:02d}" for k in range(folds)] if folds else ["train", "valid", "test"]
        count = clips if per_task is None else max(2, per_task // len(splits))
        labels_of = ([str(60 + i) for i in range(classes)] if name == "nsynth_pitch"
                     else [f"{name}_class{i}" for i in range(classes)])
        for split in splits:
            labels = {}
            for n in range(count):
                if kind == "multilabel":
                    chosen = sorted(rng.choice(classes, size=int(rng.integers(1, 3)), replace=False).tolist())
                    wav = np.clip(sum(sound_class(2 * c + 1, duration, rate, rng) for c in chosen), -1, 1)
                elif name == "nsynth_pitch":
                    chosen = [n % classes]
                    wav = harmonic_tone(440.0 * 2 ** ((60 + chosen[0] - 69) / 12), duration, rate, rng,
                                        harmonics=2 + n % 3)
                else:
                    chosen = [n % classes]
                    wav = sound_class(chosen[0], duration, rate, rng)
                file = f"{split}_{n:04d}.wav"
                write_wav(task / str(rate) / split / file, np.asarray(wav, np.float32), rate)
                labels[file] = [labels_of[c] for c in chosen]
            (task / f"{split}.json").write_text(json.dumps(labels))
        (task / "labelvocabulary.csv").write_text("idx,label\n" + "".join(f"{i},{label}\n"
                                                                          for i, label in enumerate(labels_of)))
        (task / "task_metadata.json").write_text(json.dumps({
            "task_name": name, "version": folder.split("-")[1], "embedding_type": "scene", "prediction_type": kind,
            "split_mode": mode, "splits": splits, "sample_duration": duration, "evaluation": evaluation}))
    return root


# --- the authors' v2 file format ----------------------------------------------------------------------------
# our key -> v2's (the inverse of upstream/import_v2.py's rules, written out here so that a slip there shows)
V2_KEYS = [
    (r"codec\.encoder\.(.+)",
     {"encodec": r"wav_encoder.encoder.model.\1", "mel256": r"target_encoder.encodec_encoder.\1"}),
    (r"codec\.quantizer\.(.+)", r"target_encoder.model.\1"),
    (r"feature_projection\.(.+)", r"wav_encoder.post_net.\1"),
    (r"positions\.scale", r"masker.positional_encoder.scale"),
    (r"decoder_positions\.scale", r"decoder.positional_encoder.scale"),
    (r"decoder_projection\.(.+)", r"visible_encoder.post_net.\1"),
    (r"encoder\.layers\.(\d+)\.attention\.(w[qkvo])\.weight", r"visible_encoder.encoder_layers.\1.att_layer.\2.weight"),
    (r"decoder\.layers\.(\d+)\.attention\.(w[qkvo])\.weight", r"decoder.encoder_layers.\1.att_layer.\2.weight"),
    (r"encoder\.layers\.(\d+)\.feed_forward\.(.+)", r"visible_encoder.encoder_layers.\1.ff_layer.\2"),
    (r"decoder\.layers\.(\d+)\.feed_forward\.(.+)", r"decoder.encoder_layers.\1.ff_layer.\2"),
    (r"encoder\.layers\.(\d+)\.(norm[12])\.(.+)", r"visible_encoder.encoder_layers.\1.\2.\3"),
    (r"decoder\.layers\.(\d+)\.(norm[12])\.(.+)", r"decoder.encoder_layers.\1.\2.\3"),
    (r"encoder\.final_norm\.(.+)", r"visible_encoder.final_norm.\1"),
    (r"decoder\.final_norm\.(.+)", r"decoder.final_norm.\1"),
    (r"(?:extra_)?head\.(.+)", r"head.layer.\1"),
]
V2_IMPORTS = "encodecmae.models.encoders: encodecmae.models.encoders\nencodecmae.models: encodecmae.models\n"


def v2_gin(dim: int, layers: int, heads: int, ff_dim: int, input: str, self_trained: bool, extra: str = "") -> str:
    """A v2 config string as ``gin.config_str()`` prints the authors' composed gin files (macros first, a
    '\\'-continued list, short configurable names)."""
    mel = input == "mel256"
    return "\n".join([
        "# Macros:", "# " + "=" * 78,
        "MASK_GAP_SIZE = 15", "MASK_PROP = 0.5", "MASKED_LOSS_WEIGHT = 0.9", "MAX_AUDIO_DURATION = 4",
        f"MODEL_DIM = {dim}", f"NUM_DECODER_HEADS = {heads}", "NUM_DECODER_LAYERS = 2", "NUM_ENCODEC_TARGETS = 8",
        f"NUM_ENCODER_HEADS = {heads}", f"NUM_ENCODER_LAYERS = {layers}", "NUM_TARGET_TOKENS = 1024",
        f"NUM_TOTAL_TARGETS = {1 if self_trained else 8}", *(["NUM_MEL_BINS = 256"] if mel else []),
        "QUANTIZER_WEIGHTS = \\", "    [0.22407463,", "     0.1759858,", "     0.14499009,", "     0.12150037,",
        "     0.10315603,", "     0.08831368,", "     0.07608274,", "     0.06589669]", "",
        "# Parameters for EncodecMAE:", "# " + "=" * 78,
        "EncodecMAE.decoder = @decoder/TransformerEncoder", "EncodecMAE.head = @FrameLevelClassificationHead",
        "EncodecMAE.loss = @EnCodecMAEClassificationLoss", "EncodecMAE.masker = @PatchoutMask",
        "EncodecMAE.optimizer = @torch.optim.AdamW",
        f"EncodecMAE.target_encoder = @{'IdentityTarget' if self_trained else 'EncodecQuantizer'}",
        "EncodecMAE.visible_encoder = @encoder/TransformerEncoder", "EncodecMAE.wav_encoder = @WavEncoder", "",
        "EnCodecMAEClassificationLoss.masked_weight = %MASKED_LOSS_WEIGHT",
        f"EnCodecMAEClassificationLoss.quantizer_weights = {'[1.0]' if self_trained else '%QUANTIZER_WEIGHTS'}",
        *([] if self_trained else ["EncodecQuantizer.n = %NUM_ENCODEC_TARGETS",
                                   f"EncodecQuantizer.use_encodec_encoder = {mel}"]),
        "FrameLevelClassificationHead.model_dim = %MODEL_DIM", "FrameLevelClassificationHead.num_streams = "
        "%NUM_TOTAL_TARGETS", "FrameLevelClassificationHead.num_tokens = %NUM_TARGET_TOKENS",
        "PatchoutMask.masker = @TimeGapMask", "PatchoutMask.positional_encoder = @SinusoidalPositionalEmbeddings",
        "ReadAudioProcessor.max_length = %MAX_AUDIO_DURATION",
        "SinusoidalPositionalEmbeddings.embedding_dim = %MODEL_DIM",
        "TimeGapMask.gap_size = %MASK_GAP_SIZE", "TimeGapMask.p_mask = %MASK_PROP",
        "decoder/MultiHeadAttention.model_dim = %MODEL_DIM",
        "decoder/MultiHeadAttention.num_heads = %NUM_DECODER_HEADS",
        "decoder/TransformerEncoder.attention_layer = @decoder/MultiHeadAttention",
        "decoder/TransformerEncoder.compile = False", f"decoder/TransformerEncoder.ff_dim = {ff_dim}",
        "decoder/TransformerEncoder.model_dim = %MODEL_DIM",
        "decoder/TransformerEncoder.num_layers = %NUM_DECODER_LAYERS",
        "decoder/TransformerEncoder.positional_encoder = @SinusoidalPositionalEmbeddings",
        "encoder/MultiHeadAttention.model_dim = %MODEL_DIM",
        "encoder/MultiHeadAttention.num_heads = %NUM_ENCODER_HEADS",
        "encoder/TransformerEncoder.attention_layer = @encoder/MultiHeadAttention",
        "encoder/TransformerEncoder.compile = False", f"encoder/TransformerEncoder.ff_dim = {ff_dim}",
        "encoder/TransformerEncoder.model_dim = %MODEL_DIM",
        "encoder/TransformerEncoder.num_layers = %NUM_ENCODER_LAYERS",
        "encoder/TransformerEncoder.post_net = @decoder_proj/torch.nn.Linear",
        "get_model.model = @EncodecMAE", "get_model.processor = @SequentialProcessor",
        *(["MelspectrogramProcessor.dither = 0.0", "MelspectrogramProcessor.frame_length = 26.56",
           "MelspectrogramProcessor.frame_shift = 13.28", "MelspectrogramProcessor.htk_compat = True",
           "MelspectrogramProcessor.norm_stats = [-6.12, 4.82]", "MelspectrogramProcessor.num_mel_bins = %NUM_MEL_BINS",
           "MelspectrogramProcessor.sample_frequency = 24000", "MelspectrogramProcessor.use_energy = False",
           "MelspectrogramProcessor.window_type = 'hanning'",
           "SequentialProcessor.processors = [@ReadAudioProcessor, @MelspectrogramProcessor]",
           "WavEncoder.encoder = @torch.nn.Identity", "WavEncoder.fs = 24000", "WavEncoder.hop_length = 320",
           "WavEncoder.key_in = 'wav_features'"] if mel else
          ["SequentialProcessor.processors = [@ReadAudioProcessor]",
           "WavEncoder.encoder = @EncodecEncoder"]),
        "WavEncoder.post_net = @wav_encoder_proj/torch.nn.Linear",
        "decoder_proj/torch.nn.Linear.in_features = %MODEL_DIM",
        "decoder_proj/torch.nn.Linear.out_features = %MODEL_DIM",
        f"wav_encoder_proj/torch.nn.Linear.in_features = {256 if mel else 128}",
        "wav_encoder_proj/torch.nn.Linear.out_features = %MODEL_DIM", extra, ""])


def write_v2_checkpoint(path: Path, input: str = "encodec", self_trained: bool = False, seed: int = 0,
                        extra_gin: str = "") -> tuple[Path, object]:
    """A small random v2 model in the authors' file format ({'imports', 'config', 'state_dict'}, v2's key names and
    gin config); returns (path, the EncodecMAE it was written from). ``input``: 'encodec' (ec-ec) or 'mel256'
    (mel256-ec); ``self_trained``: an _st model (one k-means head, and no EnCodec in the file for mel)."""
    import re
    from dataclasses import replace

    import torch

    from encodecmae_s3prl.upstream.config import get_config
    from encodecmae_s3prl.upstream.model import build_model

    config = replace(get_config("tiny"), input=input, decoder_positions="own", recipe="v1", mask_token="zeros",
                     standardise_features=False, interleaved_heads=True, shared_feed_forward=True,
                     **({"codec_targets": False, "extra_targets": 1024, "extra_target_weight": 1.0}
                        if self_trained else {}))
    model = build_model(config, seed=seed).eval()
    with torch.no_grad():  # the scales are 1 at init: make a slip between the two position modules show
        model.positions.scale.fill_(0.7)
        model.decoder_positions.scale.fill_(1.3)
    state = {}
    for key, value in model.state_dict().items():
        if key in ("codec.feature_mean", "codec.feature_std", "codec.random_weights", "codec.corpus_initialised"):
            continue
        if self_trained and input == "mel256" and key.startswith("codec."):
            continue  # v2's mel _st files hold no EnCodec: IdentityTarget reads stored k-means codes
        for pattern, template in V2_KEYS:
            match = re.fullmatch(pattern, key)
            if match:
                state[match.expand(template[input] if isinstance(template, dict) else template)] = value.clone()
                break
        else:
            raise KeyError(f"no v2 name for {key}")
    text = v2_gin(config.dim, config.encoder_layers, config.heads, config.ff_dim, input, self_trained, extra_gin)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"imports": V2_IMPORTS, "config": text, "state_dict": state}, path)
    return path, model
