import numpy as np
import pytest
import torch
from helpers.setup import ASTERISK

from edge_glass.data.media import load_audio
from edge_glass.encoders.audio import resolve_ctranslate2_dir
from edge_glass.encoders.whisper import (
    batch_mels,
    encoder_from_ctranslate2,
    encoder_from_transformers,
    log_mel,
    read_ctranslate2,
)


@pytest.fixture(scope="module")
def tiny_dir():
    return resolve_ctranslate2_dir("whisper-tiny.en")


@pytest.fixture(scope="module")
def encoder(tiny_dir):
    return encoder_from_ctranslate2(tiny_dir)


def test_ctranslate2_reader_finds_encoder_and_tied_projection(tiny_dir):
    v = read_ctranslate2(tiny_dir / "model.bin")
    assert v["encoder/conv1/weight"].shape == (384, 80, 3)
    assert v["encoder/layer_0/self_attention/linear_0/weight"].shape == (1152, 384)
    assert v["encoder/position_encodings/encodings"].shape == (1500, 384)
    assert v["decoder/projection/weight"] is v["decoder/embeddings/weight"]  # alias


def test_encoder_matches_ctranslate2_runtime(tiny_dir, encoder):
    ctranslate2 = pytest.importorskip("ctranslate2")
    mel = log_mel(load_audio(ASTERISK / "agent-pass.wav"), pad_to_30s=True)
    assert mel.shape == (80, 3000)
    with torch.inference_mode():
        ours, _ = encoder(mel[None])
    runtime = ctranslate2.models.Whisper(str(tiny_dir), device="cpu", compute_type="float32")
    ref = np.array(runtime.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None].numpy())), to_cpu=True))
    assert ref.shape == tuple(ours.shape) == (1, 1500, 384)
    assert np.abs(ref - ours.numpy()).max() < 1e-3


def test_trimmed_tokens_follow_clip_length_and_batching_is_exact(encoder):
    a = log_mel(load_audio(ASTERISK / "agent-pass.wav"))
    b = log_mel(load_audio(ASTERISK / "added.wav"))
    assert a.shape[-1] % 2 == 0 and abs(a.shape[-1] - 100 * len(load_audio(ASTERISK / "agent-pass.wav")) / 16000) <= 2
    with torch.inference_mode():
        alone_a, _ = encoder(a[None])
        alone_b, _ = encoder(b[None])
        batch, lengths = batch_mels([a, b])
        together, mask = encoder(batch, lengths)
    assert alone_a.shape[1] == a.shape[-1] // 2 and alone_b.shape[1] == b.shape[-1] // 2
    assert mask.sum(1).tolist() == [a.shape[-1] // 2, b.shape[-1] // 2]
    assert torch.allclose(together[0, : alone_a.shape[1]], alone_a[0], atol=1e-4)
    assert torch.allclose(together[1, : alone_b.shape[1]], alone_b[0], atol=1e-4)


def test_transformers_weight_mapping_reproduces_hf_encoder():
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFEncoder

    torch.manual_seed(0)
    cfg = WhisperConfig(num_mel_bins=80, d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=256,
                        max_source_positions=1500, decoder_layers=1, decoder_attention_heads=4)
    hf = HFEncoder(cfg).eval()
    for p in hf.parameters():
        torch.nn.init.normal_(p, std=0.05)
    ours = encoder_from_transformers(hf)
    mel = torch.randn(2, 80, 3000)
    with torch.inference_mode():
        ref = hf(mel).last_hidden_state
        got, _ = ours(mel)
    assert torch.allclose(got, ref, atol=1e-4)


def test_log_mel_matches_transformers_whisper_feature_extractor():
    from transformers import WhisperFeatureExtractor

    wav = load_audio(ASTERISK / "auth-thankyou.wav")
    ref = WhisperFeatureExtractor(feature_size=80)(wav, sampling_rate=16000, return_tensors="np").input_features[0]
    ours = log_mel(wav, pad_to_30s=True).numpy()
    assert ours.shape == ref.shape == (80, 3000)
    assert np.abs(ours - ref).max() < 1e-3
    trimmed = log_mel(wav).numpy()
    # the trimmed mel is the padded one cut at the clip's frames (the per-clip max is the same)
    n = len(wav) // 160 - 1
    assert np.abs(trimmed[:, :n] - ref[:, :n]).max() < 1e-3


def test_mel_filters_match_transformers_slaney_bank():
    from transformers.audio_utils import mel_filter_bank

    from edge_glass.encoders.whisper import mel_filters

    ref = mel_filter_bank(num_frequency_bins=201, num_mel_filters=80, min_frequency=0.0, max_frequency=8000.0,
                          sampling_rate=16000, norm="slaney", mel_scale="slaney").T
    assert np.abs(ref - mel_filters(80)).max() < 1e-7


def _tiny_hf_whisper(path, seed: int):
    from transformers import WhisperConfig, WhisperModel

    torch.manual_seed(seed)
    cfg = WhisperConfig(num_mel_bins=80, d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=128,
                        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, max_source_positions=1500,
                        vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    WhisperModel(cfg).save_pretrained(path)
    return str(path)


def test_whisper_through_transformers_gets_a_weights_hash(tmp_path):
    """A transformers Whisper (folder or hub id) has no model.bin: the converted encoder's tensors are hashed
    (before, its weights entry was empty and two models shared one fingerprint)."""
    from edge_glass.encoders.audio import load_whisper_encoder, resolve_ctranslate2_dir
    from edge_glass.encoders.base import module_hashes

    a, b = _tiny_hf_whisper(tmp_path / "a", 0), _tiny_hf_whisper(tmp_path / "b", 1)
    assert resolve_ctranslate2_dir(a) is None  # the transformers path
    enc_a, weights_a = load_whisper_encoder(a)
    _, weights_b = load_whisper_encoder(b)
    assert set(weights_a) == {"state_dict", "architecture"}
    assert weights_a["state_dict"] != weights_b["state_dict"] and weights_a["architecture"] == weights_b["architecture"]
    assert weights_a == module_hashes([enc_a])
    _, packaged = load_whisper_encoder("whisper-tiny.en")  # CTranslate2: the file hash and the tensors'
    assert {"model.bin", "state_dict", "architecture"} == set(packaged)
