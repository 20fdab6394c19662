import subprocess
import sys

import pytest
import torch
import yaml
from helpers.setup import REPO

from edge_glass.config import load_params, parse_params
from edge_glass.core.errors import ParamsError
from edge_glass.params import compose


@pytest.mark.parametrize(
    "override, key, words",
    [
        ({"align": {"perceiver": {"num_latents": 0}}}, "align.perceiver.num_latents", "greater than or equal to 1"),
        ({"align": {"mrl": {"dims": [64, 128, 256]}}}, "align.mrl.dims", "strictly descending"),
        ({"align": {"projection_dim": 256, "mrl": {"dims": [512, 256]}}}, "align", "larger than projection_dim"),
        ({"align": {"fusion": "sum"}}, "align.fusion", "'concat', 'cross_attention' or 'gated'"),
        ({"preprocess": {"shard_size": "big"}}, "preprocess.shard_size", "valid integer"),
        ({"preprocess": {"vision": {"bakend": "open_clip"}}}, "preprocess.vision.bakend", "unknown key"),
        ({"preprocess": {"vision": {"pool": "max"}}}, "preprocess.vision.pool", "'model' or 'mean'"),
        ({"preprocess": {"audio": {"layer": 1.5}}}, "preprocess.audio.layer", "valid integer"),
        ({"download": {"sources": ["laion"]}}, "download.sources[0]", "openmoji"),
        ({"download": {"split": {"train": 0.9, "val": 0.2, "test": 0.1}}}, "download.split", "sum to 1"),
        ({"align": {"mrl": {"weights": [1.0]}}}, "align.mrl", "weights has 1 entries"),
    ],
)
def test_bad_params_name_the_key(override, key, words):
    with pytest.raises(ParamsError) as err:
        parse_params(override, source="params.yaml")
    msg = str(err.value)
    assert f"params.yaml: {key}: " in msg
    assert words in msg


def test_defaults_validate_and_match_schema_defaults():
    p = parse_params({})
    assert p.align.perceiver.num_latents == 64
    assert p.align.mrl.dims == [256, 128, 64, 32]


def test_params_yaml_is_the_hydra_composition_of_conf():
    composed = compose(conf_dir=REPO / "conf")
    on_disk = yaml.safe_load((REPO / "params.yaml").read_text())
    assert on_disk == composed, "params.yaml is stale: python -m edge_glass.params --write"
    load_params(REPO / "params.yaml")


def test_hydra_overrides_reach_the_schema():
    composed = compose(["align.perceiver.num_latents=32", "download=coco"], conf_dir=REPO / "conf")
    p = parse_params(composed)
    assert p.align.perceiver.num_latents == 32
    assert p.download.sources == ["coco"]
    with pytest.raises(ParamsError, match="align.perceiver.num_latents"):
        parse_params(compose(["align.perceiver.num_latents=0"], conf_dir=REPO / "conf"))


def test_stage_exits_with_message_naming_key(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"preprocess": {"dtype": "int8"}}))
    proc = subprocess.run(
        [sys.executable, str(REPO / "stages" / "preprocess.py"), "--params", str(tmp_path / "params.yaml")],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "preprocess.dtype" in proc.stderr and "'float16' or 'float32'" in proc.stderr
    assert "Traceback" not in proc.stderr


EXPERIMENTS = ["vision_text_qwen", "trimodal_qwen", "trimodal_trm", "mrl_ablation", "perceiver_ablation", "siglip"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_seed_experiments_compose_and_validate(name):
    base = compose(conf_dir=REPO / "conf")
    raw = compose([f"+experiment={name}"], conf_dir=REPO / "conf")
    params = parse_params(raw, source=name)
    assert raw != base, f"experiment {name} changes nothing"
    assert raw["download"] == base["download"] and raw["preprocess"] == base["preprocess"]  # reuse cached features
    if name.endswith("_trm") or "ablation" in name:
        assert params.decode.kind == "trm"
    if name == "perceiver_ablation":
        assert params.align.perceiver.pool == "perceiver"
    if name == "siglip":  # the loss alone differs from the default: a paired comparison isolates it
        assert params.align.loss.kind == "siglip" and parse_params(base).align.loss.kind == "infonce"
        base["align"]["loss"]["kind"] = "siglip"
        assert raw == base


def test_encoder_and_decoder_registries_match_the_params_schema():
    import typing

    import edge_glass.decoders.lora_lm  # noqa: F401  (fill the registries)
    import edge_glass.decoders.trm  # noqa: F401
    import edge_glass.encoders.audio  # noqa: F401
    import edge_glass.encoders.hf  # noqa: F401
    import edge_glass.encoders.text  # noqa: F401
    import edge_glass.encoders.vision  # noqa: F401
    from edge_glass.config.decode import DecodeParams
    from edge_glass.config.preprocess import PreprocessParams
    from edge_glass.decoders.registry import DECODERS
    from edge_glass.encoders.registry import ENCODERS, SECTIONS

    sections = PreprocessParams.model_fields
    schema = {(m, b) for m, section in SECTIONS.items()
              for b in typing.get_args(sections[section].annotation.model_fields["backend"].annotation)}
    assert set(ENCODERS) == schema
    assert set(DECODERS) == set(typing.get_args(DecodeParams.model_fields["kind"].annotation))


def test_encoders_take_their_batch_size_from_their_own_section():
    from edge_glass.encoders.registry import build_encoder

    params = parse_params({"preprocess": {"device": "cpu", "vision": {"batch_size": 7, "weights": "random"},
                                          "text": {"batch_size": 5}}})
    vision, text = build_encoder("image", params), build_encoder("text", params)
    assert (vision.batch_size, text.batch_size) == (7, 5)
    # random weights: no weight file, but the loaded tensors are hashed (preprocess fingerprints them)
    assert vision.info.name == "efficientnet-lite0/random" and set(vision.info.weights) == {"state_dict", "architecture"}
    tokens, pooled = vision.forward([torch.zeros(3, 224, 224)] * 2)
    assert tokens[0].shape == (49, 1280) and pooled.dtype == torch.float32 and pooled.device.type == "cpu"


def test_config_py_defaults_are_the_conf_defaults():
    """conf/ is the home of defaults; the config/ schemas repeat them only as fallbacks and must agree,
    so a reader of config/ (or a test building Params() from a partial dict) sees what actually runs."""
    from edge_glass.config import Params

    def leaves(tree, path=""):
        if isinstance(tree, dict):
            for k, v in tree.items():
                yield from leaves(v, f"{path}.{k}" if path else k)
        else:
            yield path, tree

    conf = dict(leaves(parse_params(compose(conf_dir=REPO / "conf")).model_dump()))
    schema = dict(leaves(Params().model_dump()))
    assert {k: (schema[k], v) for k, v in conf.items() if schema[k] != v} == {}
