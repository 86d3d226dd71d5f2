"""Vision Transformer backbones (timm ViT / DeiT) under the backbone contract.

``forward(x)`` maps a normalised (B, 3, H, W) image to named levels, all at stride 16:

- ``tokens``: the final (LayerNorm'd) patch tokens reshaped to (B, D, H // 16, W // 16);
- ``block<i>``: the raw output patch tokens of block ``i`` (0-based) for every index in
  ``aux_layers`` (ToCo's auxiliary classifier reads block ``depth - 3``, i.e. ``aux_layers=[-3]``);
- ``cls``: the final class token (B, D) (not a spatial level: absent from ``channels``/``strides``).

Position embeddings are interpolated to the input size (timm ``dynamic_img_size``), so any image
size works; the image is zero-padded (bottom/right) to whole patches, so levels are
``ceil(H / 16) x ceil(W / 16)`` as the contract says. Built from ``conf/backbone/vit_*.yaml`` as a
partial (``_partial_: true``) that methods call through ``create_backbone``.
Weights: ``null`` (random), ``timm`` / ``imagenet`` (timm's release through its Hugging Face cache;
offline it fails with what to download and where) or a path to a state dict.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ViTBackbone(nn.Module):
    """A timm ``VisionTransformer`` whose patch tokens are a stride-16 feature map."""

    def __init__(self, model: nn.Module, aux_layers: Sequence[int] = ()) -> None:
        super().__init__()
        self.model = model
        depth = len(model.blocks)
        self.aux_layers = sorted({int(i) % depth for i in aux_layers})
        for index in aux_layers:
            if not -depth <= int(index) < depth:
                raise ValueError(f"backbone.aux_layers: {index} is out of range for a {depth}-block ViT")
        self.embed_dim = int(model.embed_dim)
        patch = model.patch_embed.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        names = [f"block{i}" for i in self.aux_layers] + ["tokens"]  # shallow first
        self.channels = dict.fromkeys(names, self.embed_dim)
        self.strides = dict.fromkeys(names, self.patch_size)
        self.out_channels = self.embed_dim
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))

    @property
    def last(self) -> str:
        return "tokens"

    @property
    def levels(self) -> dict[str, tuple[int, int]]:
        return {name: (self.channels[name], self.strides[name]) for name in self.channels}

    def _grid(self, tokens: Tensor, h: int, w: int) -> Tensor:
        patches = tokens[:, self.num_prefix_tokens:]
        return patches.transpose(1, 2).reshape(len(tokens), self.embed_dim, h, w)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """(B, 3, H, W) -> {tokens / block<i>: (B, D, H//16, W//16), cls: (B, D)}."""
        m = self.model
        p = self.patch_size
        h, w = -(-x.shape[-2] // p), -(-x.shape[-1] // p)  # ceil: the contract's level size
        if (h * p, w * p) != tuple(x.shape[-2:]):  # zero padding = the mean colour once normalised
            x = F.pad(x, [0, w * p - x.shape[-1], 0, h * p - x.shape[-2]])
        t = m.patch_embed(x)
        t = m._pos_embed(t)
        t = m.patch_drop(t)
        t = m.norm_pre(t)
        out: dict[str, Tensor] = {}
        for index, block in enumerate(m.blocks):
            t = block(t)
            if index in self.aux_layers:
                out[f"block{index}"] = self._grid(t, h, w)
        t = m.norm(t)
        out["tokens"] = self._grid(t, h, w)
        out["cls"] = t[:, 0]
        return out


def build_vit(
    name: str = "vit_base_patch16_224", weights: str | None = None, aux_layers: Sequence[int] = (),
    model_kwargs: dict[str, Any] | None = None, drop_path_rate: float = 0.0,
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, **unused: Any,
) -> ViTBackbone:
    """Build a ViT backbone.

    Args:
        name: a timm model name (``vit_base_patch16_224.orig_in21k_ft_in1k``, ``deit_base_patch16_224``),
            or ``custom`` to build ``timm.models.vision_transformer.VisionTransformer(**model_kwargs)``
            (tests: ``{depth: 2, embed_dim: 64, num_heads: 2}``).
        weights: ``None`` (random), ``"timm"``/``"imagenet"`` (timm's pretrained release, read from
            the Hugging Face cache; set ``HF_HUB_OFFLINE=1`` on machines without internet) or a path
            to a state dict (timm key names; ``head.*`` is dropped; position embeddings are resized).
        aux_layers: block indices (negative from the end) whose patch tokens are returned as extra levels.
        drop_path_rate: stochastic depth rate (ToCo: 0).
        mean, std: the input normalisation, kept on the module (data configs read ``${backbone.mean}``).
        unused: keys of other backbone configs (``output_stride``, ``frozen_stages``, ``frozen_bn``)
            are ignored (``pipeline=toco`` with the default ``backbone=resnet18`` merges them in);
            ``frozen_bn: true`` is an error (a ViT has no BatchNorm to freeze).
    """
    import timm
    from timm.models.vision_transformer import VisionTransformer

    kwargs = dict(num_classes=0, dynamic_img_size=True, drop_path_rate=drop_path_rate, **(model_kwargs or {}))
    if unused.get("frozen_bn"):
        raise ValueError("backbone.frozen_bn=true: a ViT has no BatchNorm to freeze (use frozen_bn=false)")
    ignored = {k: v for k, v in unused.items()
               if k not in ("output_stride", "frozen_stages", "frozen_bn", "_target_")}  # fmt: skip
    if ignored:
        raise TypeError(f"build_vit got unknown backbone keys {sorted(ignored)}")
    pretrained = weights in ("timm", "imagenet")
    if name == "custom":
        if pretrained:
            raise ValueError("backbone.name=custom has no pretrained release; use weights=null or a file")
        model = VisionTransformer(**kwargs)
    elif pretrained:
        model = _timm_pretrained(name, kwargs)
    else:
        model = timm.create_model(name, pretrained=False, **kwargs)
    if weights is not None and not pretrained:
        _load_file(model, weights)
    backbone = ViTBackbone(model, aux_layers)
    backbone.mean, backbone.std = tuple(mean), tuple(std)
    return backbone


def _timm_pretrained(name: str, kwargs: dict) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as err:  # offline: huggingface_hub raises various OSError/LocalEntryNotFound errors
        cfg = timm.models.get_pretrained_cfg(name)
        hub = getattr(cfg, "hf_hub_id", None) or name
        url = getattr(cfg, "url", None)
        cache = os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub"
        raise RuntimeError(
            f"could not load timm's pretrained weights for backbone.name={name} ({type(err).__name__}: {err}). "
            f"Offline? On a machine with internet run\n  python -c \"import timm; timm.create_model('{name}', "
            f"pretrained=True)\"\nand copy the Hugging Face cache entry for {hub} to {cache} (then run with "
            f"HF_HUB_OFFLINE=1), or download {url or hub} and pass backbone.weights=/path/to/the/file"
        ) from err


def _load_file(model: nn.Module, path: str) -> None:
    from timm.models.vision_transformer import checkpoint_filter_fn

    path_ = Path(path).expanduser()
    if not path_.is_file():
        raise FileNotFoundError(f"backbone.weights file not found: {path_}")
    if path_.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path_))
    else:
        state = torch.load(path_, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):  # DeiT releases wrap the weights in {"model": ...}
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path_}: expected a state dict (name -> tensor), got {type(state).__name__}")
    state = checkpoint_filter_fn(state, model)  # resizes pos_embed, converts old layouts
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "head_dist.", "fc_norm."))
             or k in model.state_dict()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise KeyError(f"{path_} does not fit backbone {type(model).__name__}: missing {missing[:5]}, "
                       f"unexpected {unexpected[:5]}")
