"""CLIP models (open_clip) for training-free CAMs, with a clear message when weights are missing.

``build_clip(name, weights)``: ``weights`` is ``openai`` (open_clip's release of OpenAI's weights,
read from the Hugging Face cache; offline it fails with what to download and where), a path
(OpenAI's TorchScript ``ViT-B-16.pt`` as used by CLIP-ES, or an open_clip state dict), or ``null``
(random init). ``model_cfg`` builds ``open_clip.CLIP(**model_cfg)`` instead (tests: a 2-layer model).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def build_clip(name: str = "ViT-B-16", weights: str | None = "openai", model_cfg: dict[str, Any] | None = None,
               quick_gelu: bool = True) -> nn.Module:
    """An open_clip ``CLIP`` in eval mode (fp32). ``quick_gelu``: OpenAI's models use QuickGELU."""
    import open_clip

    if model_cfg is not None:
        if weights not in (None, "none"):
            raise ValueError("clip.model_cfg builds a randomly initialised model; set clip.weights=null")
        from omegaconf import DictConfig, OmegaConf

        cfg = OmegaConf.to_container(model_cfg, resolve=True) if isinstance(model_cfg, DictConfig) else dict(model_cfg)
        cfg.setdefault("quick_gelu", quick_gelu)
        return open_clip.CLIP(**cfg).eval()
    if weights in (None, "none"):
        return open_clip.create_model(name, pretrained=None, force_quick_gelu=quick_gelu).eval()
    path = Path(str(weights)).expanduser()
    if path.suffix in (".pt", ".pth", ".bin", ".safetensors") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"clip.weights file not found: {path}")
        try:  # OpenAI's TorchScript release (CLIP-ES README: ViT-B-16.pt)
            return open_clip.load_openai_model(str(path), device="cpu", jit=False).float().eval()
        except RuntimeError:
            return open_clip.create_model(name, pretrained=str(path), force_quick_gelu=quick_gelu).eval()
    try:
        return open_clip.create_model(name, pretrained=str(weights), force_quick_gelu=quick_gelu).eval()
    except Exception as err:  # offline: huggingface_hub / urllib errors
        from open_clip.pretrained import get_pretrained_cfg

        cfg = get_pretrained_cfg(name, str(weights)) or {}
        cache = os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub"
        raise RuntimeError(
            f"could not load CLIP weights {name}/{weights} ({type(err).__name__}: {err}). Offline? Either "
            f"download OpenAI's file\n  {cfg.get('url', '(see open_clip.list_pretrained())')}\nand pass "
            f"clip.weights=/path/to/{Path(str(cfg.get('url', 'ViT-B-16.pt'))).name}, or on a machine with "
            f"internet run python -c \"import open_clip; open_clip.create_model('{name}', pretrained='{weights}')\" "
            f"and copy the Hugging Face cache entry {cfg.get('hf_hub', '')} to {cache} (then set HF_HUB_OFFLINE=1)"
        ) from err
