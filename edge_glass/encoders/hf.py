"""Any Hugging Face encoder as a frozen tower: ``preprocess.<vision|audio|text>.backend: hf``.

Projection-only alignment is driven by its frozen towers (SAIL: DINOv2 + GTE; freeze-align: DINOv2 +
RoBERTa), so a user names the tower by hub id or local folder instead of waiting for a backend of its
own. One code path per modality through ``AutoModel`` and the model's own pre-processor
(``AutoImageProcessor``, ``AutoFeatureExtractor``, ``AutoTokenizer``), so the features are those the
model was trained to see:

- tokens: ``last_hidden_state`` (``layer: null``) or ``hidden_states[layer]`` of the real (unpadded)
  positions; a (b, c, h, w) map (ConvNeXt, CLAP's HTSAT) becomes h*w tokens;
- pooled: the model's own pooled output (``pool: model``: ``pooler_output`` / ``*_embeds``, else the CLS
  token of models that have one), or the masked mean of the tokens (``pool: mean``).

A full dual-encoder or encoder-decoder checkpoint runs only the tower the modality needs: a CLIP/SigLIP
checkpoint's ``vision_model`` or ``text_model``, CLAP's ``audio_model``, Whisper's (or T5's) encoder.
``trust_remote_code`` is never set: a checkpoint that needs its own code is refused by transformers.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from functools import partial
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from edge_glass.core.errors import ParamsError
from edge_glass.core.hub import PACKAGED_AUDIO
from edge_glass.core.io import sha256_file
from edge_glass.data.media import load_audio, load_image
from edge_glass.encoders.base import EncoderInfo, FrozenEncoder, module_hashes, source_stamp
from edge_glass.encoders.registry import SECTIONS, register_encoder
from edge_glass.encoders.text import resolve_text_model

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
POOLED_OUTPUTS = ("pooler_output", "image_embeds", "audio_embeds", "text_embeds")


def _key(modality: str, name: str) -> str:
    return f"preprocess.{SECTIONS[modality]}.{name}"


def load_tower(modality: str, model: str, *, random_weights: bool = False) -> torch.nn.Module:
    """``AutoModel`` of ``model`` reduced to the tower ``modality`` needs, in eval mode with no gradients."""
    import transformers

    try:
        if random_weights:  # the architecture only, the same in every run (as EfficientNet's weights: random)
            config = transformers.AutoConfig.from_pretrained(model)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                full = transformers.AutoModel.from_config(config)
        else:
            full = transformers.AutoModel.from_pretrained(model)
    except (OSError, ValueError, KeyError) as exc:
        raise FileNotFoundError(f"{_key(modality, 'model')}={model}: cannot load with transformers' AutoModel ({exc})") from None
    tower = full
    if getattr(full.config, "is_encoder_decoder", False) and hasattr(full, "get_encoder"):
        tower = full.get_encoder()  # Whisper, T5, BART: the encoder's states are the features
    else:
        attr = {"image": "vision_model", "audio": "audio_model", "text": "text_model"}[modality]
        tower = getattr(full, attr, None) or full  # CLIP / SigLIP / CLAP checkpoints hold both towers
    return tower.eval().requires_grad_(False)


def weight_hashes(modality: str, model: str, path: str, tower: torch.nn.Module, random_weights: bool = False) -> dict[str, str]:
    """sha256 of a local folder's weight files, plus the loaded tower's tensors and architecture (every
    source: a hub id has no file at hand, and only the tower that runs is hashed). Random weights read
    no weight file, and their tensors are cached apart from the pretrained ones."""
    folder = Path(path)
    files = {}
    if folder.is_dir() and not random_weights:
        files = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.suffix in WEIGHT_SUFFIXES}
    kind = "random" if random_weights else "pretrained"
    return {**files, **module_hashes([tower], ("hf", modality, kind, model, *source_stamp(path)))}


def _accepted(module: torch.nn.Module) -> set[str] | None:
    """The keyword arguments ``module.forward`` takes (None: it takes ``**kwargs``, so anything goes)."""
    params = inspect.signature(module.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)


def collate(items: list[dict[str, np.ndarray]], pad_value: float = 0.0) -> dict[str, torch.Tensor]:
    """Per-item pre-processor outputs (no batch axis) -> one batch; arrays of unequal length are
    right-padded on their last axis (``pad_value`` for inputs, 0 for masks), as the pre-processors pad."""
    out = {}
    for key in items[0]:
        arrays = [np.asarray(item[key]) for item in items]
        longest = max(a.shape[-1] for a in arrays) if arrays[0].ndim else 0
        if any(a.shape != arrays[0].shape for a in arrays):
            fill = 0 if "mask" in key else pad_value
            arrays = [np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, longest - a.shape[-1])], constant_values=fill) for a in arrays]
        out[key] = torch.from_numpy(np.stack(arrays))
    return out


def as_tokens(states: torch.Tensor) -> torch.Tensor:
    """(b, n, d) as is; a (b, c, h, w) feature map as its h*w positions (b, h*w, c)."""
    if states.ndim == 4:
        return rearrange(states, "b c h w -> b (h w) c")
    if states.ndim != 3:
        raise ValueError(f"expected (b, n, d) or (b, c, h, w) hidden states, got shape {tuple(states.shape)}")
    return states


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


class HFEncoder(FrozenEncoder):
    """The shared part of the three modalities: run the tower, pick the layer, pool."""

    modality: str

    def _setup(self, params, tower: torch.nn.Module) -> None:
        self.tower = tower
        self.layer, self.pool = params.layer, params.pool
        self.batch_size = params.batch_size
        self.accepts = _accepted(tower)
        self.has_cls = getattr(getattr(tower, "embeddings", None), "cls_token", None) is not None

    def modules(self):
        return [self.tower]

    def _run(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, object]:
        """Tokens (b, n, d) float32 on the device, of ``layer``, and the raw model output."""
        feed = {k: v.to(self.device, non_blocking=True) for k, v in inputs.items() if self.accepts is None or k in self.accepts}
        kwargs = {} if self.layer is None else {"output_hidden_states": True}
        with self.autocast():
            out = self.tower(**feed, **kwargs)
        if self.layer is None:
            states = out.last_hidden_state
        else:
            hidden = out.hidden_states
            if not -len(hidden) <= self.layer < len(hidden):
                raise ParamsError(f"{_key(self.modality, 'layer')}={self.layer}: {type(self.tower).__name__} has "
                                  f"{len(hidden)} hidden states (embeddings + each block): use {-len(hidden)}..{len(hidden) - 1}")
            states = hidden[self.layer]
        return as_tokens(states).float(), out

    def _pooled(self, out, tokens: torch.Tensor, mask: torch.Tensor, cls_first: bool) -> torch.Tensor:
        """(b, d) float32: the masked token mean, or the model's own pooled output."""
        if self.pool == "mean":
            return masked_mean(tokens, mask)
        for name in POOLED_OUTPUTS:
            value = getattr(out, name, None)
            if value is not None:
                return value.float().flatten(1)  # ResNet-style poolers keep (b, c, 1, 1)
        if cls_first:
            return as_tokens(out.last_hidden_state)[:, 0].float()
        raise ParamsError(f"{_key(self.modality, 'pool')}=model: {type(self.tower).__name__} has no pooled output "
                          "(pooler_output, *_embeds) and no CLS token; use pool: mean")

    def _describe(self, name: str, weights: dict[str, str], probe, settings: dict) -> None:
        """Run one probe batch on the CPU: it checks ``layer`` and ``pool`` now (a params error at start-up,
        not after the first shard) and gives the widths, which differ by model and pooled output."""
        import transformers

        tokens, pooled = self.forward(probe)
        self.info = EncoderInfo(
            self.modality, f"hf:{name}", int(tokens[0].shape[-1]), int(pooled.shape[-1]), weights,
            {"tower": type(self.tower).__name__, "layer": self.layer, "pool": self.pool,
             "transformers": transformers.__version__, **settings},
        )


def _config_of(processor) -> dict:
    """A pre-processor's settings, JSON-safe (its saved config): they change the inputs, so the features."""
    return json.loads(processor.to_json_string()) if hasattr(processor, "to_json_string") else {"class": type(processor).__name__}


def hf_image_input(source, processor) -> dict[str, np.ndarray]:
    """Decode one image and run the model's image processor (a module function, so loader workers can run it)."""
    image = source if isinstance(source, Image.Image) else load_image(source)  # an image: the start-up probe
    out = processor(images=image, return_tensors="np")
    return {k: np.asarray(v)[0] for k, v in out.items()}


@register_encoder("image", "hf")
class HFVision(HFEncoder):
    """``AutoModel`` + ``AutoImageProcessor`` (DINOv2, ViT, SigLIP / CLIP vision towers, ConvNeXt...).

    Tokens are every output position the model gives (CLS and register tokens included)."""

    modality = "image"

    def __init__(self, params):
        import transformers

        try:
            self.processor = transformers.AutoImageProcessor.from_pretrained(params.model)
        except (OSError, ValueError, KeyError) as exc:
            raise FileNotFoundError(f"preprocess.vision.model={params.model}: no image processor ({exc})") from None
        random_weights = params.weights == "random"
        tower = load_tower("image", params.model, random_weights=random_weights)
        self._setup(params, tower)
        weights = weight_hashes("image", params.model, params.model, tower, random_weights)
        rng = np.random.default_rng(0)
        probe = [self.load(Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)))]
        name = params.model + ("" if params.weights == "pretrained" else "/random")
        self._describe(name, weights, probe, {"processor": _config_of(self.processor)})

    def loader(self):
        return partial(hf_image_input, processor=self.processor)

    @torch.inference_mode()
    def forward(self, batch):
        tokens, out = self._run(collate(batch))
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        pooled = self._pooled(out, tokens, mask, self.has_cls)
        return list(tokens.cpu()), pooled.cpu()


def hf_audio_input(source, extractor) -> dict[str, np.ndarray]:
    """Decode one clip, resample it to the extractor's ``sampling_rate`` and run the feature extractor."""
    wav = source if isinstance(source, np.ndarray) else load_audio(source, extractor.sampling_rate)  # array: the probe
    out = extractor(wav, sampling_rate=extractor.sampling_rate, return_tensors="np", return_attention_mask=True)
    return {k: np.asarray(v)[0] for k, v in out.items()}


@register_encoder("audio", "hf")
class HFAudio(HFEncoder):
    """``AutoModel`` + ``AutoFeatureExtractor`` (wav2vec2, HuBERT, WavLM, Whisper's encoder, CLAP's audio tower).

    Clips are resampled to the extractor's rate; tokens are the states of the clip's real length (padding
    dropped, by the model's own conv arithmetic where it has one), averaged over ``token_pool`` states as
    for the Whisper backend. Whisper's extractor pads to its 30 s window, as the model was trained."""

    modality = "audio"

    def __init__(self, params):
        import transformers

        if params.model in PACKAGED_AUDIO:
            raise ParamsError(f"preprocess.audio.model={params.model} is a packaged CTranslate2 Whisper (backend: whisper); "
                              "backend hf needs a transformers model, e.g. openai/whisper-tiny.en or facebook/wav2vec2-base")
        try:
            self.extractor = transformers.AutoFeatureExtractor.from_pretrained(params.model)
        except (OSError, ValueError, KeyError) as exc:
            raise FileNotFoundError(f"preprocess.audio.model={params.model}: no feature extractor ({exc})") from None
        tower = load_tower("audio", params.model)
        self._setup(params, tower)
        self.token_pool = params.token_pool
        self.sampling_rate = int(self.extractor.sampling_rate)
        # models trained without an attention mask (wav2vec2-base) expect zero padding and no mask
        self.pass_mask = bool(getattr(self.extractor, "return_attention_mask", False))
        self.pad_value = float(getattr(self.extractor, "padding_value", 0.0))
        weights = weight_hashes("audio", params.model, params.model, tower)
        probe = [self.load(np.random.default_rng(0).standard_normal(self.sampling_rate).astype(np.float32) * 0.1)]
        self._describe(params.model, weights, probe,
                       {"sampling_rate": self.sampling_rate, "token_pool": self.token_pool,
                        "attention_mask": self.pass_mask, "extractor": _config_of(self.extractor)})

    def loader(self):
        return partial(hf_audio_input, extractor=self.extractor)

    def _valid_states(self, inputs: dict[str, torch.Tensor], n_out: int) -> torch.Tensor:
        """How many output states of each clip come from real input (not padding)."""
        main = inputs.get("input_values", inputs.get("input_features"))
        if "attention_mask" not in inputs or main is None:
            return torch.full((next(iter(inputs.values())).shape[0],), n_out)
        lengths = inputs["attention_mask"].sum(dim=-1)
        if hasattr(self.tower, "_get_feat_extract_output_lengths"):  # the conv stem's own arithmetic
            valid = self.tower._get_feat_extract_output_lengths(lengths)
        else:
            valid = torch.ceil(lengths * n_out / inputs["attention_mask"].shape[-1])
        return valid.long().clamp(1, n_out).cpu()

    @torch.inference_mode()
    def forward(self, batch):
        inputs = collate(batch, self.pad_value)
        feed = inputs if self.pass_mask else {k: v for k, v in inputs.items() if k != "attention_mask"}
        tokens, out = self._run(feed)
        valid = self._valid_states(inputs, tokens.shape[1])
        mask = torch.arange(tokens.shape[1])[None, :] < valid[:, None]
        pooled = self._pooled(out, tokens, mask.to(tokens.device), False).cpu()
        tokens = tokens.cpu()  # one device-to-host copy; pooling on the host
        pool, items = self.token_pool, []
        for x, n in zip(tokens, valid.tolist()):
            x = x[:n]
            k = n // pool * pool
            items.append(x[:k].reshape(-1, pool, x.shape[-1]).mean(dim=1) if k else x.mean(dim=0, keepdim=True))
        return items, pooled


@register_encoder("text", "hf")
class HFText(HFEncoder):
    """``AutoModel`` + ``AutoTokenizer`` (BERT, RoBERTa, E5 / GTE / BGE-style encoders, T5's encoder, CLIP text).

    Tokens are the states of the real tokens (padding dropped); ``pool: mean`` is the masked mean that
    sentence encoders of this kind are trained with. The packaged MiniLM name resolves as for
    sentence_transformers."""

    modality = "text"
    decodes_media = False

    def __init__(self, params):
        import transformers

        path = resolve_text_model(params.model)
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, KeyError) as exc:
            raise FileNotFoundError(f"preprocess.text.model={params.model}: no tokenizer ({exc})") from None
        if self.tokenizer.pad_token is None:  # decoder-style tokenizers: padding is masked out anyway
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        tower = load_tower("text", path)
        self._setup(params, tower)
        self.max_length = self.max_tokens = params.max_length  # longer texts are truncated (the API warns)
        weights = weight_hashes("text", params.model, path, tower)
        self._describe(params.model, weights, ["a probe caption"],
                       {"max_length": self.max_length, "tokenizer": self._tokenizer_hash()})

    def _tokenizer_hash(self) -> str:
        """sha256 of the vocabulary and rules: a changed tokenizer changes the features."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        text = backend.to_str() if backend is not None else json.dumps(sorted(self.tokenizer.get_vocab().items()))
        return hashlib.sha256(text.encode()).hexdigest()

    def loader(self):
        return str  # captions need no decoding

    def token_count(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    @torch.inference_mode()
    def forward(self, batch):
        enc = self.tokenizer(list(batch), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        inputs = dict(enc)
        tokens, out = self._run(inputs)
        mask = inputs["attention_mask"].bool()
        cls = self.tokenizer.cls_token_id
        cls_first = cls is not None and bool((inputs["input_ids"][:, 0] == cls).all())
        pooled = self._pooled(out, tokens, mask.to(tokens.device), cls_first).cpu()
        tokens = tokens.cpu()
        return [t[m] for t, m in zip(tokens, mask)], pooled
