"""backend: hf — any Hugging Face encoder, tested offline on tiny random-weight models written here."""

import io
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from edge_glass.config import parse_params
from edge_glass.config.preprocess import AudioEncoderParams, TextEncoderParams, VisionEncoderParams
from edge_glass.core.errors import ParamsError

WIDTHS = {"image": 24, "audio": 40, "text": 32}  # distinct, so a width can only come from its own model


def write_dinov2(folder, seed=0, width=WIDTHS["image"]):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    Dinov2Model(Dinov2Config(hidden_size=width, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                             image_size=32, patch_size=8)).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32},
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return str(folder)


def write_wav2vec2(folder, sampling_rate=8000, attention_mask=True, width=WIDTHS["audio"]):
    """wav2vec2 with layer-norm conv features, the variant (large-lv60 style) trained with an attention
    mask; group-norm ones (base) see their padding, as in transformers."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    Wav2Vec2Model(Wav2Vec2Config(hidden_size=width, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                                 conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                                 num_conv_pos_embedding_groups=2, feat_extract_norm="layer" if attention_mask else "group",
                                 do_stable_layer_norm=attention_mask)).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(sampling_rate=sampling_rate, return_attention_mask=attention_mask).save_pretrained(folder)
    return str(folder)


def write_bert(folder, width=WIDTHS["text"]):
    """A tiny BERT with the packaged MiniLM WordPiece tokenizer (its files copied beside the weights)."""
    from transformers import BertConfig, BertModel

    from edge_glass.encoders.text import resolve_text_model

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=width, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=48, max_position_embeddings=128)).save_pretrained(folder)
    packaged = resolve_text_model("all-MiniLM-L6-v2")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(f"{packaged}/{name}", folder / name)
    return str(folder)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_models")
    return {"image": write_dinov2(root / "dinov2"), "audio": write_wav2vec2(root / "wav2vec2"), "text": write_bert(root / "bert")}


def _image():
    return Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8))


@pytest.mark.slow
def test_hf_encoders_run_preprocess_then_align_with_their_widths(models, small_download, tmp_path):
    """Tiny DINOv2, wav2vec2 and BERT models in a folder: preprocess caches tokens of their hidden widths
    (audio resampled from the stored 16 kHz to the extractor's 8 kHz), and align trains on them."""
    import json

    from helpers.setup import TINY_ALIGN

    from edge_glass.align import train
    from edge_glass.features.store import FeatureStore
    from edge_glass.preprocess import run_preprocess

    root, raw, _ = small_download
    params = parse_params({**raw, "preprocess": {**raw["preprocess"],
                                                 "vision": {"backend": "hf", "model": models["image"], "batch_size": 8},
                                                 "audio": {"backend": "hf", "model": models["audio"], "batch_size": 8},
                                                 "text": {"backend": "hf", "model": models["text"]}}})
    manifest = root / "data" / "download" / "manifest.parquet"
    features = tmp_path / "features"
    stats = run_preprocess(params, manifest, features)
    encoders = json.loads((features / "encoders.json").read_text())
    for modality, width in WIDTHS.items():
        store = FeatureStore(features / modality)
        assert len(store) == stats[modality]["encoded"] == stats[modality]["items"] > 0
        assert store.dims == (width, width)
        assert encoders[modality]["token_dim"] == width and encoders[modality]["name"].startswith("hf:")
    assert encoders["audio"]["settings"]["sampling_rate"] == 8000
    image_store = FeatureStore(features / "image")
    assert set(image_store.n_tokens) == {17}  # CLS + (32 / 8)^2 patches
    summary = train(parse_params({"seed": 0, "align": TINY_ALIGN}), features, manifest, tmp_path / "align", None)
    assert (tmp_path / "align" / "model.safetensors").exists() and summary


def test_layer_picks_that_hidden_state(models):
    from transformers import AutoModel

    from edge_glass.encoders.hf import HFText, HFVision

    vision = HFVision(VisionEncoderParams(backend="hf", model=models["image"], layer=1, pool="mean"))
    x = vision.load(_image())
    tokens, pooled = vision.forward([x])
    ref = AutoModel.from_pretrained(models["image"])(pixel_values=torch.from_numpy(x["pixel_values"])[None],
                                                     output_hidden_states=True).hidden_states
    assert torch.allclose(tokens[0], ref[1][0], atol=1e-5)
    assert not torch.allclose(tokens[0], ref[2][0], atol=1e-3)
    assert torch.allclose(pooled[0], ref[1][0].mean(0), atol=1e-5)

    text = HFText(TextEncoderParams(backend="hf", model=models["text"], layer=-2))
    tokens, _ = text.forward(["a red apple"])
    enc = text.tokenizer(["a red apple"], return_tensors="pt")
    ref = AutoModel.from_pretrained(models["text"])(**enc, output_hidden_states=True).hidden_states
    assert torch.allclose(tokens[0], ref[-2][0], atol=1e-5)
    assert text.token_count("a red apple") == enc["input_ids"].shape[1]  # what the API's truncation warning counts
    assert text.token_count("word " * 100) > text.max_tokens == 64 and len(text.forward(["word " * 100])[0][0]) == 64
    default = HFText(TextEncoderParams(backend="hf", model=models["text"]))  # layer null: the model's output
    assert torch.allclose(default.forward(["a red apple"])[0][0], ref[-1][0], atol=1e-5)


def test_mean_pool_and_tokens_ignore_padding(models):
    """A short caption batched beside a long one (so padded) gives the same tokens and masked mean as alone."""
    from edge_glass.encoders.hf import HFText

    text = HFText(TextEncoderParams(backend="hf", model=models["text"]))
    short, long = "a cat", "a very long caption about a small grey cat sitting on a warm red chair"
    tokens, pooled = text.forward([short, long])
    alone_tokens, alone_pooled = text.forward([short])
    assert tokens[0].shape[0] < tokens[1].shape[0]
    assert torch.allclose(tokens[0], alone_tokens[0], atol=1e-5)
    assert torch.allclose(pooled[0], alone_pooled[0], atol=1e-5)
    assert torch.allclose(pooled[0], tokens[0].mean(0), atol=1e-5)
    model_pool = HFText(TextEncoderParams(backend="hf", model=models["text"], pool="model"))
    assert not torch.allclose(model_pool.forward([short])[1][0], alone_pooled[0], atol=1e-3)  # BERT's pooler, not the mean


def _flac(seconds: float, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format="FLAC")
    return buf.getvalue()


def test_audio_is_resampled_to_the_extractor_rate_and_padding_is_dropped(models, tmp_path):
    from edge_glass.encoders.hf import HFAudio

    audio = HFAudio(AudioEncoderParams(backend="hf", model=models["audio"], token_pool=1))
    one, half = audio.load(_flac(1.0)), audio.load(_flac(0.5))  # stored at 16 kHz
    assert one["input_values"].shape == (8000,) and half["input_values"].shape == (4000,)
    tokens, pooled = audio.forward([one, half])
    lengths = audio.tower._get_feat_extract_output_lengths(torch.tensor([8000, 4000])).tolist()
    assert [t.shape[0] for t in tokens] == lengths
    alone_tokens, alone_pooled = audio.forward([half])  # the extractor's attention mask: padding changes nothing
    assert torch.allclose(tokens[1], alone_tokens[0], atol=1e-4)
    assert torch.allclose(pooled[1], alone_pooled[0], atol=1e-4)
    at16k = HFAudio(AudioEncoderParams(backend="hf", model=write_wav2vec2(tmp_path / "w16", 16000), token_pool=2))
    assert at16k.load(_flac(1.0))["input_values"].shape == (16000,)
    n16 = at16k.tower._get_feat_extract_output_lengths(torch.tensor(16000)).item()
    assert at16k.forward([at16k.load(_flac(1.0))])[0][0].shape == (n16 // 2, WIDTHS["audio"])  # token_pool 2


def test_fingerprint_follows_the_weights(tmp_path):
    from edge_glass.encoders.hf import HFVision
    from edge_glass.preprocess import encoder_fingerprint

    folder = tmp_path / "dino"
    params = VisionEncoderParams(backend="hf", model=write_dinov2(folder, seed=0))
    a = HFVision(params)
    again = HFVision(params)
    write_dinov2(folder, seed=1)  # same folder, same config, other weights
    b = HFVision(params)
    assert a.info.weights == again.info.weights
    assert a.info.weights["model.safetensors"] != b.info.weights["model.safetensors"]
    assert a.info.weights["state_dict"] != b.info.weights["state_dict"]
    assert encoder_fingerprint(a, "float16") == encoder_fingerprint(again, "float16") != encoder_fingerprint(b, "float16")
    random = [HFVision(VisionEncoderParams(backend="hf", model=str(folder), weights="random")) for _ in range(2)]
    assert random[0].info.weights == random[1].info.weights  # seeded: the same architecture-only tower each run
    assert "model.safetensors" not in random[0].info.weights  # reads no weight file
    assert random[0].info.weights["state_dict"] != b.info.weights["state_dict"]  # not the cached pretrained hash
    assert random[0].info.name.endswith("/random")


def test_bad_pool_and_layer_name_the_key(models):
    from edge_glass.encoders.hf import HFAudio, HFVision

    with pytest.raises(ParamsError, match=r"preprocess\.vision\.pool"):
        parse_params({"preprocess": {"vision": {"backend": "hf", "pool": "max"}}})
    with pytest.raises(ParamsError, match=r"preprocess\.text\.layer"):
        parse_params({"preprocess": {"text": {"backend": "hf", "layer": "last"}}})
    with pytest.raises(ParamsError, match=r"preprocess\.vision.*model"):
        parse_params({"preprocess": {"vision": {"backend": "hf", "model": ""}}})
    with pytest.raises(ParamsError, match=r"preprocess\.vision\.layer=7.*-3\.\.2"):
        HFVision(VisionEncoderParams(backend="hf", model=models["image"], layer=7))
    with pytest.raises(ParamsError, match=r"preprocess\.audio\.pool=model.*Wav2Vec2Model"):
        HFAudio(AudioEncoderParams(backend="hf", model=models["audio"], pool="model"))
    with pytest.raises(ParamsError, match=r"preprocess\.audio\.model=whisper-tiny\.en"):
        HFAudio(AudioEncoderParams(backend="hf"))
    with pytest.raises(FileNotFoundError, match=r"preprocess\.vision\.model=.*missing"):
        HFVision(VisionEncoderParams(backend="hf", model=str(models["image"]) + "-missing"))


def test_full_dual_and_encoder_decoder_checkpoints_run_their_tower(tmp_path):
    """A whole CLIP checkpoint runs its vision_model; a Whisper checkpoint its encoder, whose states
    follow the clip's length inside the 30 s window (50 Hz)."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperModel,
    )

    from edge_glass.encoders.hf import HFAudio, HFVision

    torch.manual_seed(0)
    clip = tmp_path / "clip"
    CLIPModel(CLIPConfig(text_config={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                      "intermediate_size": 32, "vocab_size": 99,
                                      "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
                         vision_config={"hidden_size": 20, "num_hidden_layers": 1, "num_attention_heads": 2,
                                        "intermediate_size": 32, "image_size": 32, "patch_size": 16},
                         projection_dim=12)).save_pretrained(clip)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(clip)
    vision = HFVision(VisionEncoderParams(backend="hf", model=str(clip)))
    assert vision.info.settings["tower"] in ("CLIPVisionModel", "CLIPVisionTransformer")  # not CLIPModel
    assert (vision.info.token_dim, vision.info.pooled_dim) == (20, 20)  # pooler_output: the normed CLS
    assert vision.forward([vision.load(_image())])[0][0].shape == (5, 20)

    whisper = tmp_path / "whisper"
    WhisperModel(WhisperConfig(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                               decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=99,
                               pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)).save_pretrained(whisper)
    WhisperFeatureExtractor().save_pretrained(whisper)
    audio = HFAudio(AudioEncoderParams(backend="hf", model=str(whisper)))
    assert audio.info.settings["tower"] == "WhisperEncoder"
    tokens, pooled = audio.forward([audio.load(_flac(1.0)), audio.load(_flac(0.5))])
    assert [t.shape for t in tokens] == [(25, 16), (12, 16)] and pooled.shape == (2, 16)  # 50 Hz / token_pool 2


def test_hf_hub_ids_turn_the_hub_on_and_local_folders_do_not(models):
    from edge_glass.cli import hub_uses

    hub = parse_params({"preprocess": {"vision": {"backend": "hf", "model": "facebook/dinov2-base"}}})
    assert "preprocess.vision.model=facebook/dinov2-base" in hub_uses(hub, "preprocess")
    local = parse_params({"preprocess": {"vision": {"backend": "hf", "model": models["image"]},
                                         "text": {"backend": "hf", "model": models["text"]}}})
    assert hub_uses(local, "preprocess") == []
    default = parse_params({})  # the default vision.model is a hub id, unused by the default backend
    assert hub_uses(default, "preprocess") == []
