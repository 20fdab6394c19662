"""Everything a device smoke run needs that cannot travel to the device: media, and the models' architectures.

A device call carries at most 64 MiB, so the packaged weights (MiniLM 83 MB, Whisper 71 MB, SmolLM2
93 MB) stay behind. ``write_smoke_assets`` makes, from nothing but code and a seed:

- **synthetic media** as a researcher's ``table`` dataset (``captions.csv``: image, audio, caption):
  PNG images of coloured shapes and WAV tones whose captions name the colour/shape/pitch;
- **random-weight models with the default architectures**, as local folders the stages load like
  any other: a sentence-transformers MiniLM-L6 (text), a transformers Whisper tiny.en (audio) and a
  SmolLM2-135M causal LM (decode), each with a small tokenizer built from the captions. The image
  encoder needs no folder: ``preprocess.vision.weights: random``.

Throughput and device handling are what a smoke run measures; the features mean nothing.

    python -m edge_glass.tools.smoke --out /tmp/smoke --items 64 [--tiny]
"""

from __future__ import annotations

import argparse
import json
import wave
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40),
           "purple": (140, 50, 180), "orange": (240, 140, 30)}
SHAPES = ("circle", "square", "triangle")
PITCHES = {"low": 220.0, "middle": 440.0, "high": 880.0}
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _image(colour: str, shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    img = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 60, 3)))
    draw = ImageDraw.Draw(img)
    a, b = int(size * rng.uniform(0.1, 0.3)), int(size * rng.uniform(0.7, 0.9))
    if shape == "circle":
        draw.ellipse([a, a, b, b], fill=COLOURS[colour])
    elif shape == "square":
        draw.rectangle([a, a, b, b], fill=COLOURS[colour])
    else:
        draw.polygon([(a, b), (b, b), ((a + b) // 2, a)], fill=COLOURS[colour])
    return img


def _tone(path: Path, hz: float, seconds: float, rng: np.random.Generator, sr: int = 16000) -> None:
    t = np.arange(int(seconds * sr)) / sr
    wav = 0.3 * np.sin(2 * np.pi * hz * t) + 0.01 * rng.standard_normal(t.size)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sr)
        f.writeframes((np.clip(wav, -1, 1) * 32767).astype("<i2").tobytes())


def write_media(root: str | Path, n: int, *, seed: int = 0, image_size: int = 256) -> Path:
    """N items with an image, a tone and two captions in ``root/captions.csv`` (download.local ``table``)."""
    root = Path(root)
    (root / "media").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        pitch, seconds = rng.choice(list(PITCHES)), float(rng.uniform(1.0, 6.0))
        _image(colour, shape, image_size, rng).save(root / "media" / f"{i:05d}.png")
        _tone(root / "media" / f"{i:05d}.wav", PITCHES[pitch], seconds, rng)
        rows.append({"key": f"{i:05d}", "image": f"media/{i:05d}.png", "audio": f"media/{i:05d}.wav",
                     "caption": f"{colour} {shape} number {i} with a {pitch} tone",  # unique first captions
                     "caption_2": f"a {pitch} pitched sound and a {colour} {shape}"})
    path = root / "captions.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def caption_words(captions: list[str]) -> list[str]:
    return sorted({w for c in captions for w in c.lower().split()})


def _seeded(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def write_text_model(out: str | Path, captions: list[str], *, layers: int = 6, seed: int = 0, vocab_size: int = 30522) -> Path:
    """all-MiniLM-L6-v2's architecture (BERT, 384-d, 12 heads) with random weights and a word-level vocabulary."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = Path(out)
    bert_dir = out / "bert"
    bert_dir.mkdir(parents=True, exist_ok=True)
    words = caption_words(captions)
    chars = sorted({ch for w in words for ch in w})
    (bert_dir / "vocab.txt").write_text("\n".join([*SPECIALS, *words, *chars, *[f"##{c}" for c in chars]]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(bert_dir / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(str(bert_dir))
    config = BertConfig(vocab_size=max(vocab_size, len(tokenizer)), hidden_size=384, num_hidden_layers=layers, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512)
    _seeded(seed, lambda: BertModel(config)).save_pretrained(str(bert_dir))
    bert = models.Transformer(str(bert_dir), max_seq_length=64)
    model = SentenceTransformer(modules=[bert, models.Pooling(384, "mean"), models.Normalize()], device="cpu")
    model.save(str(out))
    import shutil

    shutil.rmtree(bert_dir)  # the saved model holds its own copy
    return out


def write_whisper_model(out: str | Path, *, layers: int = 4, seed: int = 0) -> Path:
    """Whisper tiny.en's architecture (80 mels, 384-d, 6 heads) with random weights, as a transformers folder."""
    from transformers import WhisperConfig, WhisperModel

    config = WhisperConfig(vocab_size=51864, num_mel_bins=80, d_model=384, encoder_layers=layers, decoder_layers=1,
                           encoder_attention_heads=6, decoder_attention_heads=6, encoder_ffn_dim=1536,
                           decoder_ffn_dim=1536, max_source_positions=1500)
    _seeded(seed, lambda: WhisperModel(config)).save_pretrained(str(out))
    return Path(out)


def write_lm(out: str | Path, captions: list[str], *, layers: int = 30, seed: int = 0, vocab_size: int = 49152) -> Path:
    """SmolLM2-135M's architecture (Llama, 576-d, 9/3 heads, 49,152 vocabulary) with random weights and a
    word-level tokenizer of the captions (EOS ``<|endoftext|>``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<|endoftext|>", "<unk>", *caption_words(captions)])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    from tokenizers import decoders

    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", unk_token="<unk>",
                                        pad_token="<|endoftext|>")
    config = LlamaConfig(vocab_size=max(vocab_size, len(vocab)), hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                         rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         bos_token_id=0, eos_token_id=0, pad_token_id=0)
    _seeded(seed, lambda: LlamaForCausalLM(config)).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return Path(out)


def write_smoke_assets(out: str | Path, n: int, *, seed: int = 0, tiny: bool = False) -> dict[str, str]:
    """Media and the three model folders under ``out``; ``tiny`` keeps 2 layers per model and only the
    captions' words in the vocabularies (CPU tests)."""
    out = Path(out)
    table = write_media(out / "raw", n, seed=seed)
    frame = pd.read_csv(table)
    captions = [*frame.caption, *frame.caption_2]
    paths = {
        "table": table,
        "text_model": write_text_model(out / "models" / "text", captions, layers=2 if tiny else 6, seed=seed,
                                       vocab_size=0 if tiny else 30522),
        "audio_model": write_whisper_model(out / "models" / "whisper", layers=2 if tiny else 4, seed=seed),
        "lm": write_lm(out / "models" / "lm", captions, layers=2 if tiny else 30, seed=seed, vocab_size=0 if tiny else 49152),
    }
    return {k: str(v) for k, v in paths.items()}


def smoke_params(base: dict, assets: dict[str, str], device: str, *, items: int, steps: int = 20, batch: int = 32,
                 workers: int = 2) -> dict:
    """``base`` params (params.yaml) pointed at the smoke assets, on ``device``, with short training.

    A PCA text head needs at least ``projection_dim`` training captions; below that (tiny CPU runs)
    the smoke run uses the linear head instead."""
    p = json.loads(json.dumps(base))
    if p["align"]["text_head"] == "pca" and 2 * items * p["download"]["split"]["train"] < p["align"]["projection_dim"]:
        p["align"].update(text_head="linear", freeze_text_head=False)  # a frozen linear head is a random projection
    p["download"].update(sources=[], local=[{
        "name": "smoke", "format": "table", "path": assets["table"], "split": "hash", "image_key": "image",
        "audio_key": "audio", "caption_keys": ["caption", "caption_2"], "id_key": "key"}])
    pre = p["preprocess"]
    pre.update(device=device, num_workers=workers, shard_size=64)
    pre["vision"]["weights"] = "random"
    pre["audio"]["model"] = assets["audio_model"]
    pre["text"]["model"] = assets["text_model"]
    p["align"]["device"] = device
    p["align"]["train"].update(steps=steps, batch_size=batch, warmup_steps=min(5, steps // 2), eval_every=max(steps // 2, 1),
                               checkpoint_every=max(steps // 2, 1), log_every=5)
    d = p["decode"]
    d.update(device=device)
    d["lm"]["model"] = assets["lm"]
    d["train"].update(steps=steps, batch_size=min(batch, 16), warmup_steps=min(5, steps // 2),
                      checkpoint_every=max(steps // 2, 1), log_every=5)
    p["evaluate"]["device"] = device
    # the smoke media are synthetic, not OpenMoji: no emoji-groups zero-shot set (the stages above are what it checks)
    p["evaluate"]["zeroshot"] = []
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="2 layers per model (CPU tests)")
    parser.add_argument("--params", help="also write smoke params from this params.yaml to OUT/params.yaml")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    assets = write_smoke_assets(args.out, args.items, seed=args.seed, tiny=args.tiny)
    if args.params:
        import yaml

        base = yaml.safe_load(Path(args.params).read_text())
        params = smoke_params(base, assets, args.device, items=args.items, steps=args.steps, batch=args.batch,
                              workers=args.workers)
        (Path(args.out) / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    print(json.dumps(assets))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
