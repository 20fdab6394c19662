"""core.hub: every packaged model has a licence, under each name the params and encoder records use."""

import pytest

from edge_glass.core.hub import PACKAGED_AUDIO, PACKAGED_LMS, PACKAGED_TEXT, model_licence


@pytest.mark.parametrize("name", sorted(PACKAGED_AUDIO | PACKAGED_TEXT | set(PACKAGED_LMS) | {"efficientnet_lite0"}))
def test_every_packaged_model_has_a_licence(name):
    assert model_licence(name), name


@pytest.mark.parametrize("record, licence", [
    ("whisper-encoder:whisper-tiny.en", "MIT"),                       # encoders/audio.py's record name
    ("sentence-transformers:all-MiniLM-L6-v2", "Apache-2.0"),         # encoders/text.py's
    ("efficientnet-lite0/random", "Apache-2.0"),                      # encoders/vision.py's, random weights
    ("open_clip:ViT-B-32/openai", "MIT"),
])
def test_encoder_record_names_resolve(record, licence):
    assert model_licence(record).startswith(licence)


def test_a_hub_model_has_no_packaged_licence():
    assert model_licence("HuggingFaceTB/SmolLM2-360M-Instruct") is None
    assert model_licence("open_clip:ViT-B-32/laion2b_s34b_b79k") is None
