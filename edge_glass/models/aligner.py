"""The alignment model: resamplers over cached media tokens, fusion, MRL heads, the loss's learnable scales."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from edge_glass.config import Params
from edge_glass.config.align import AlignParams
from edge_glass.config.preprocess import SECTIONS
from edge_glass.core.io import write_json
from edge_glass.features.dataset import MEDIA, Batch, FeatureSplit
from edge_glass.models.fusion import build_fusion
from edge_glass.models.mrl import MRLHead
from edge_glass.models.perceiver import MeanPool, PerceiverResampler
from edge_glass.train.checkpoints import save_weights

HEAD_IDS = {"image": 1, "audio": 2, "fused": 3, "text": 4}  # in the keyed-dropout key of each head


class AlignModel(nn.Module):
    """Embeds image, audio, fused (image+audio) and text into one ``projection_dim`` space."""

    def __init__(self, cfg: AlignParams, token_dims: dict[str, int], text_dim: int):
        super().__init__()
        self.cfg = cfg
        p = cfg.perceiver
        self.media = [m for m in MEDIA if m in token_dims]

        def resampler(in_dim):
            if p.pool == "mean":
                return MeanPool(in_dim, cfg.dim)
            return PerceiverResampler(in_dim, cfg.dim, p.num_latents, p.depth, p.heads, p.dim_head)

        self.resamplers = nn.ModuleDict({m: resampler(token_dims[m]) for m in self.media})
        self.heads = nn.ModuleDict({m: MRLHead(cfg.dim, cfg.projection_dim, "mlp", cfg.dropout, dropout_id=HEAD_IDS[m])
                                    for m in self.media})
        self.has_fusion = set(MEDIA) <= set(self.media)
        if self.has_fusion:
            self.fusion = build_fusion(cfg.fusion, cfg.dim, p.heads, p.dim_head)
            self.heads["fused"] = MRLHead(cfg.dim, cfg.projection_dim, "mlp", cfg.dropout, dropout_id=HEAD_IDS["fused"])
        self.heads["text"] = MRLHead(text_dim, cfg.projection_dim, cfg.text_head, cfg.dropout, dropout_id=HEAD_IDS["text"])
        self.linear = None
        if cfg.linear_path:
            # LP-FT: a linear map of the mean token, set to the ridge solution before training, plus the
            # resampler path whose last layer starts at zero, so training starts from the linear probe
            self.linear = nn.ModuleDict({m: nn.Linear(token_dims[m], cfg.projection_dim) for m in self.media})
            for m in [*self.media, "fused"] if self.has_fusion else self.media:
                nn.init.zeros_(self.heads[m].net[-1].weight)
                nn.init.zeros_(self.heads[m].net[-1].bias)
        if cfg.loss.kind == "siglip":
            # one log-scale and one bias per loss pair and MRL dim: each pair and each prefix has its own
            # similarity range, and the bias sets its prior share of positives (1 in b per row)
            n = len(cfg.mrl.dims)
            self.siglip_log_scale = nn.ParameterDict({
                pair: nn.Parameter(torch.full((n,), math.log(cfg.loss.siglip_init_scale)),
                                   requires_grad=cfg.loss.learnable_temperature) for pair in cfg.loss.pairs})
            self.siglip_bias = nn.ParameterDict({
                pair: nn.Parameter(torch.full((n,), float(cfg.loss.siglip_init_bias))) for pair in cfg.loss.pairs})
        else:
            init = math.log(1 / cfg.loss.temperature_init)
            self.logit_scale = nn.Parameter(torch.tensor(init), requires_grad=cfg.loss.learnable_temperature)

    def latents(self, modality: str, tokens: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        resampler = self.resamplers[modality]
        if isinstance(resampler, MeanPool):
            return resampler(tokens, mask, pooled)
        return resampler(tokens, mask)

    def forward(self, batch: Batch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """modality -> (z (b, projection_dim) with zero rows where absent, present (b,))."""
        b = batch.text.shape[0]
        out, lat, lin = {}, {}, {}
        for m in self.media:
            idx = batch.present[m].nonzero().squeeze(1)
            rows = None
            if len(idx):
                if len(idx) == b:  # every item has the medium: no copy
                    tokens, mask = batch.tokens[m], batch.masks[m]
                else:
                    tokens, mask = batch.tokens[m][idx], batch.masks[m][idx]
                mean_token = masked_mean(tokens, mask)  # shared by the mean-pool resampler and the linear path
                lat[m] = self.latents(m, tokens, mask, mean_token)
                rows = self.heads[m](lat[m].mean(dim=1), _rows(batch, idx), batch.noise_key)
                if self.linear is not None:
                    lin[m] = self.linear[m](mean_token)
                    rows = rows + lin[m]
            out[m] = (self._scatter(b, idx, rows), batch.present[m])
        if self.has_fusion:
            both = batch.present["image"] & batch.present["audio"]
            idx = both.nonzero().squeeze(1)
            rows = None
            if len(idx):
                pos = {m: torch.cumsum(batch.present[m].long(), 0) - 1 for m in MEDIA}  # row of each item in lat[m]
                fused = self.fusion(lat["image"][pos["image"][idx]], lat["audio"][pos["audio"][idx]])
                rows = self.heads["fused"](fused.mean(dim=1), _rows(batch, idx), batch.noise_key)
                if self.linear is not None:
                    rows = rows + (lin["image"][pos["image"][idx]] + lin["audio"][pos["audio"][idx]]) / 2
            out["fused"] = (self._scatter(b, idx, rows), both)
        out["text"] = (self.heads["text"](batch.text, batch.positions, batch.noise_key).float(), torch.ones(b, dtype=torch.bool, device=batch.text.device))
        return out

    def pooled_tokens(self, batch: Batch, modality: str) -> torch.Tensor:
        """Masked mean token of every item that has ``modality`` (the linear path's input)."""
        idx = batch.present[modality].nonzero().squeeze(1)
        return masked_mean(batch.tokens[modality][idx], batch.masks[modality][idx])

    def _scatter(self, b: int, idx: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        # float32 output whatever autocast computed the rows in: the loss and the gathers see one dtype
        z = torch.zeros(b, self.cfg.projection_dim, device=idx.device)
        return z if rows is None else z.index_copy(0, idx, rows.float())

    def scale(self) -> torch.Tensor:
        """InfoNCE's logit scale (1 / temperature), at most 100."""
        return self.logit_scale.clamp(max=math.log(100)).exp()

    def siglip_scale_bias(self, pair: str) -> tuple[torch.Tensor, torch.Tensor]:
        """SigLIP's scale (at most 100, as open_clip clamps it) and bias of ``pair``, one per MRL dim."""
        return self.siglip_log_scale[pair].clamp(max=math.log(100)).exp(), self.siglip_bias[pair]

    def loss_parameters(self) -> tuple[nn.Parameter, ...]:
        """The loss's own parameters: they enter the global loss directly, so every rank computes their
        whole gradient (``sync_gradients`` averages them instead of summing)."""
        if self.cfg.loss.kind == "siglip":
            return (*self.siglip_log_scale.values(), *self.siglip_bias.values())
        return (self.logit_scale,)

    @torch.no_grad()
    def clamp_scales_(self) -> None:
        """Keep the stored log-scales at most log(100) after an optimizer step (CLIP, open_clip)."""
        for p in self.siglip_log_scale.values() if self.cfg.loss.kind == "siglip" else (self.logit_scale,):
            p.clamp_(max=math.log(100))

    def loss_scalars(self) -> dict[str, float]:
        """What the training log shows of the loss's parameters (siglip: at the largest MRL dim)."""
        if self.cfg.loss.kind == "siglip":
            out = {}
            for pair in self.siglip_log_scale:
                scale, bias = self.siglip_scale_bias(pair)
                out[f"scale_{pair}"], out[f"bias_{pair}"] = float(scale[0].detach()), float(bias[0].detach())
            return out
        return {"temperature": float(1 / self.scale().detach())}


def _rows(batch: Batch, idx: torch.Tensor):
    """Global batch positions of the rows ``idx`` (None outside training)."""
    return None if batch.positions is None else batch.positions[idx.cpu().numpy()]


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(b, n, d) tokens, (b, n) mask -> (b, d) mean over real tokens."""
    w = mask.to(tokens.dtype)
    # one batched matmul, no (b, n, d) temporary
    return torch.bmm(w.unsqueeze(1), tokens).squeeze(1) / w.sum(dim=1, keepdim=True).clamp(min=1)


# what encoders.json says about each encoder that a rebuilt encoder must match (not the counts of one run)
ENCODER_KEYS = ("modality", "name", "token_dim", "pooled_dim", "weights", "settings", "dtype", "device", "autocast")


def input_settings(params: Params, encoders: dict) -> dict:
    """What turns a raw file or text into the features this model was trained on, so the path can be
    rebuilt without the workspace (``edge_glass.load``): per modality the encoder as preprocess recorded it
    (``encoders.json``: backend name, weight hashes, preprocessing settings, storage dtype, device and
    autocast), download's media checks and normalisation (``download.image``, ``download.audio``,
    ``download.max_file_mb``; captions are cleaned by ``data.manifest.clean_caption``, which has no
    settings) and the ``preprocess`` sections that rebuild each encoder."""
    media = [m for m in SECTIONS if m in encoders]
    d, p = params.download, params.preprocess
    return {
        "encoders": {m: {k: encoders[m][k] for k in ENCODER_KEYS if k in encoders[m]} for m in media},
        "download": {"image": d.image.model_dump(), "audio": d.audio.model_dump(), "max_file_mb": d.max_file_mb,
                     "caption_cleaning": "edge_glass.data.manifest.clean_caption (NFKC, '_' -> ' ', whitespace collapsed)"},
        "preprocess": {"dtype": p.dtype, **{SECTIONS[m]: getattr(p, SECTIONS[m]).model_dump() for m in media}},
    }


def save_model(out_dir: Path, model: AlignModel, params: Params, data: FeatureSplit) -> None:
    """``model.safetensors`` and ``model.json``: the align params and sizes that rebuild the model, and the
    inputs it was trained on (:func:`input_settings`)."""
    save_weights(out_dir / "model.safetensors", model)
    write_json({"align": params.align.model_dump(), "seed": params.seed, "train_seed": params.align_seed, "token_dims": data.token_dims,
                "text_dim": data.text_dim, **input_settings(params, data.encoders)}, out_dir / "model.json")


def load_model(out_dir: str | Path, device: str | torch.device = "cpu") -> AlignModel:
    out_dir = Path(out_dir)
    meta = json.loads((out_dir / "model.json").read_text())
    model = AlignModel(AlignParams.model_validate(meta["align"]), meta["token_dims"], meta["text_dim"])
    model.load_state_dict(load_file(str(out_dir / "model.safetensors"), device=str(device)))
    return model.eval()
