"""Class activation maps: computation, normalisation, multi-scale inference and hard labels.

Conventions (docs/methods.md, "Conventions", "PSA / AffinityNet", "IRNet", "CAM baseline"): CAM channels index the 20 *foreground*
classes 0..19; masks use 0 for background and ``c + 1`` for class ``c``. The pipeline is

1. :func:`multiscale_cam` — ReLU'd maps summed over scales and flips, all classes, unnormalised;
2. :func:`restrict_to_keys` — keep the classes present in the image-level label;
3. :func:`normalize_cam` — per-class max-normalisation;
4. :func:`cams_to_label` (constant background) or :func:`background_power` (PSA/SEAM CRF input).

The steps are separate calls on purpose: each repository orders/parameterises them differently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss.data.labels import BACKGROUND

__all__ = [
    "background_power",
    "cam",
    "cams_to_label",
    "irn_multiscale_cam",
    "multiscale_cam",
    "normalize_cam",
    "normalize_cam_minmax",
    "restrict_to_keys",
]


def cam(features: Tensor, classifier_weight: Tensor) -> Tensor:
    """Raw class activation maps: the classifier weights applied at every spatial position.

    ``M_c(x) = w_c^T f(x)`` (Zhou et al. 2016). No bias and no ReLU, so the result is exactly the
    map whose global average pool equals the classifier logits of a GAP + linear head.

    Args:
        features: Backbone feature maps.
        classifier_weight: Linear (``(C, D)``) or 1x1-conv (``(C, D, 1, 1)``) classifier weight.

    Returns:
        Raw CAMs in the promoted dtype of the inputs.

    Shape:
        - features: ``(B, D, h, w)``
        - classifier_weight: ``(C, D)`` or ``(C, D, 1, 1)``
        - output: ``(B, C, h, w)``
    """
    if features.ndim != 4:
        raise ValueError(f"features must be (B, D, h, w), got shape {tuple(features.shape)}")
    weight = classifier_weight
    if weight.ndim == 4:
        if weight.shape[2:] != (1, 1):
            raise ValueError(f"conv classifier weight must be 1x1, got {tuple(weight.shape)}")
        weight = weight.flatten(1)
    if weight.ndim != 2 or weight.shape[1] != features.shape[1]:
        raise ValueError(
            f"classifier weight {tuple(classifier_weight.shape)} does not match "
            f"{features.shape[1]} feature channels"
        )
    return torch.einsum("bdhw,cd->bchw", features, weight.to(features.dtype))


def normalize_cam(cams: Tensor, eps: float = 1e-5) -> Tensor:
    """ReLU, then per-class max-normalisation over the spatial dims (IRN/PSA convention).

    ``relu(M_c) / (max relu(M_c) + eps)``: the peak of each positive map becomes ``1 / (1 + eps)``
    (slightly below 1) and an all-non-positive map becomes all zeros.

    Args:
        cams: CAMs with classes on dim -3.
        eps: Added to the maximum to avoid dividing by zero.

    Returns:
        Float32 maps in ``[0, 1)``.

    Shape:
        - cams: ``(..., C, h, w)``
        - output: same as ``cams``
    """
    if cams.ndim < 2:
        raise ValueError(f"cams must be (..., h, w), got shape {tuple(cams.shape)}")
    cams = F.relu(cams.float())
    return cams / (cams.amax(dim=(-2, -1), keepdim=True) + eps)


def normalize_cam_minmax(cams: Tensor, eps: float = 1e-5) -> Tensor:
    """SEAM's ``infer_SEAM.py`` normalisation of summed multi-scale CAMs (per class, spatial dims).

    Negative values are set to 0; with ``lo``/``hi`` the map's minimum / maximum after that, values
    below ``lo + eps`` are set to 0 and the map becomes ``(M - lo - eps) / (hi - lo + eps)``. A map
    that is positive everywhere thus starts at ~0 (max-normalisation would keep its floor), and the
    zeroed pixels end slightly below 0 (``-(lo + eps) / (hi - lo + eps)``), as in the official code.

    Args:
        cams: Summed CAMs with classes on dim -3.
        eps: SEAM's 1e-5.

    Returns:
        Float32 maps, at most ``(hi - lo - eps) / (hi - lo + eps)`` (< 1).

    Shape:
        - cams: ``(..., C, h, w)``
        - output: same as ``cams``
    """
    if cams.ndim < 2:
        raise ValueError(f"cams must be (..., h, w), got shape {tuple(cams.shape)}")
    cams = cams.float().clamp(min=0)
    hi = cams.amax(dim=(-2, -1), keepdim=True)
    lo = cams.amin(dim=(-2, -1), keepdim=True)
    cams = torch.where(cams < lo + eps, torch.zeros_like(cams), cams)
    return (cams - lo - eps) / (hi - lo + eps)


def restrict_to_keys(cams: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Keep only the CAMs of the classes present in the image-level label.

    Args:
        cams: Maps for all foreground classes.
        labels: Multi-hot image label over the same classes (bool, int or float; > 0 = present).

    Returns:
        ``(cams_present, keys)``: the selected maps and their foreground class indices (int64,
        ascending). ``K`` may be 0.

    Shape:
        - cams: ``(C, H, W)``
        - labels: ``(C,)``
        - output: ``(K, H, W)`` and ``(K,)``
    """
    if cams.ndim != 3 or labels.ndim != 1 or labels.shape[0] != cams.shape[0]:
        raise ValueError(
            f"expected cams (C, H, W) and labels (C,), got {tuple(cams.shape)} and "
            f"{tuple(labels.shape)}"
        )
    keys = torch.nonzero(labels.to(cams.device) > 0).flatten()
    return cams[keys], keys


def _check_keys(cams: Tensor, keys: Tensor) -> None:
    if cams.ndim != 3 or keys.ndim != 1 or keys.shape[0] != cams.shape[0]:
        raise ValueError(
            f"expected cams (K, H, W) and keys (K,), got {tuple(cams.shape)} and {tuple(keys.shape)}"
        )


def cams_to_label(cams: Tensor, keys: Tensor, bg_threshold: float) -> Tensor:
    """Hard mask from present-class CAMs with a constant background score.

    The background channel ``bg_threshold`` is prepended and the argmax taken; on ties the
    background wins (it comes first, as with IRN's ``np.pad`` + ``argmax``). So a pixel is
    foreground iff its maximum CAM is strictly above ``bg_threshold``.

    Args:
        cams: Normalised CAMs of the present classes.
        keys: Foreground class index (0..19) of each map.
        bg_threshold: Constant background score, e.g. 0.2 (PSA), 0.15 (IRN eval).

    Returns:
        int64 mask: 0 for background, ``key + 1`` for foreground. All background when ``K == 0``.

    Shape:
        - cams: ``(K, H, W)``
        - keys: ``(K,)``
        - output: ``(H, W)``
    """
    _check_keys(cams, keys)
    _, h, w = cams.shape
    cams = cams.float()
    background = torch.full((1, h, w), float(bg_threshold), dtype=cams.dtype, device=cams.device)
    index = torch.cat([background, cams], dim=0).argmax(dim=0)
    # Lookup table from channel index to mask value: channel 0 -> background, k -> keys[k-1] + 1.
    values = torch.cat(
        [torch.tensor([BACKGROUND], device=cams.device), keys.to(cams.device).long() + 1]
    )
    return values[index]


def background_power(cams: Tensor, alpha: float) -> Tensor:
    """PSA/SEAM CRF-input background score ``(1 - max_k cams)^alpha``.

    ``1 - max`` is clamped at 0 so unnormalised peaks above 1 cannot give NaN for fractional
    ``alpha``. With no present class (``K == 0``) the background is all ones.

    Args:
        cams: Normalised CAMs of the present classes.
        alpha: Exponent; low alpha (4) inflates the background, high alpha (24/32) shrinks it.

    Returns:
        Float32 background score.

    Shape:
        - cams: ``(K, H, W)``
        - output: ``(H, W)``
    """
    if cams.ndim != 3:
        raise ValueError(f"cams must be (K, H, W), got shape {tuple(cams.shape)}")
    _, h, w = cams.shape
    if cams.shape[0] == 0:
        return torch.ones((h, w), dtype=torch.float32, device=cams.device)
    return (1.0 - cams.float().amax(dim=0)).clamp_min(0.0).pow(alpha)


@torch.no_grad()
def multiscale_cam(
    model: Callable[[Tensor], Tensor],
    image: Tensor,
    scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
    flip: bool = True,
    output_size: tuple[int, int] | None = None,
    prepared: Sequence[Tensor] | None = None,
) -> Tensor:
    """Multi-scale (+ horizontal flip) CAM inference, summed over all passes (PSA/IRN).

    For each scale the image is resized bilinearly (align_corners=False) and run together with
    its horizontal flip as one batch of two. Each output is ReLU'd, the flipped one is flipped
    back, and both are upsampled bilinearly to ``output_size`` and summed, over all scales.

    The result is **not** normalised and covers **all** classes: call :func:`restrict_to_keys`
    and :func:`normalize_cam` afterwards. The model's train/eval mode is left to the caller.

    Args:
        model: Callable mapping a normalised image batch ``(B, 3, h, w)`` to raw CAMs
            ``(B, C, h', w')``.
        image: One normalised image.
        scales: Resize factors of the input (PSA/IRN default ``(1.0, 0.5, 1.5, 2.0)``).
        flip: Also run the horizontally flipped image at each scale.
        output_size: ``(H_out, W_out)`` of the result; defaults to the image size.
        prepared: One normalised ``(1, 3, h_s, w_s)`` input per scale made elsewhere (PSA's
            ``infer_cls.py``: PIL bicubic on the uint8 image); replaces the bilinear resizing
            of ``image``, whose size is then only the default output size.

    Returns:
        float32 sum of ``len(scales) * (2 if flip else 1)`` ReLU'd maps.

    Shape:
        - image: ``(1, 3, H, W)`` or ``(3, H, W)``
        - output: ``(C, H_out, W_out)``
    """
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"image must be (1, 3, H, W) or (3, H, W), got {tuple(image.shape)}")
    if not scales:
        raise ValueError("scales must not be empty")
    height, width = image.shape[-2:]
    size = (int(height), int(width)) if output_size is None else tuple(output_size)
    if prepared is not None and len(prepared) != len(scales):
        raise ValueError(f"got {len(prepared)} prepared inputs for {len(scales)} scales")
    total: Tensor | None = None
    for index, scale in enumerate(scales):
        if scale <= 0:
            raise ValueError(f"scales must be positive, got {scale}")
        scaled_size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = image
        if prepared is not None:
            scaled = prepared[index].reshape(1, *prepared[index].shape[-3:])
        elif scaled_size != (height, width):
            scaled = F.interpolate(image, size=scaled_size, mode="bilinear", align_corners=False)
        batch = torch.cat([scaled, scaled.flip(-1)]) if flip else scaled
        maps = F.relu(model(batch).float())
        if maps.ndim != 4 or maps.shape[0] != batch.shape[0]:
            raise ValueError(f"model must return (B, C, h, w), got {tuple(maps.shape)}")
        if flip:
            # Bilinear resizing with align_corners=False commutes with flipping, so flip first.
            maps = torch.stack([maps[0], maps[1].flip(-1)])
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False).sum(dim=0)
        total = maps if total is None else total + maps
    assert total is not None
    return total


@torch.no_grad()
def irn_multiscale_cam(
    model: Callable[[Tensor], Tensor],
    prepared: Sequence[Tensor],
    size: tuple[int, int],
    stride: int = 4,
    up_stride: int = 16,
) -> tuple[Tensor, Tensor]:
    """IRN's ``step/make_cam.py``: stride-``stride`` and high-resolution CAMs, unnormalised.

    Per scale, the input and its flip run as one batch; the ReLU'd maps are fused at the
    network's resolution (``x[0] + x[1].flip(-1)``, IRN's ``CAM.forward``), then resized
    bilinearly (align_corners=False) to ``ceil(H / stride) x ceil(W / stride)`` (the strided
    CAM) and to ``ceil(H / up_stride) * up_stride`` per side, cropped to ``H x W`` (the high-res
    CAM); both summed over scales. Normalise with :func:`restrict_to_keys` + :func:`normalize_cam`.

    Args:
        model: Normalised image batch ``(2, 3, h, w)`` -> raw CAMs ``(2, C, h', w')``.
        prepared: One normalised input per scale (IRN: PIL bicubic on the uint8 image).
        size: ``(H, W)`` of the original image.
        stride, up_stride: IRN's 4 and 16.

    Returns:
        ``(strided, highres)`` float32 sums.

    Shape:
        - prepared: each ``(1, 3, h_s, w_s)`` or ``(3, h_s, w_s)``
        - output: ``(C, ceil(H / stride), ceil(W / stride))`` and ``(C, H, W)``
    """
    if not prepared:
        raise ValueError("prepared must hold one input per scale")
    height, width = (int(v) for v in size)
    strided_size = ((height - 1) // stride + 1, (width - 1) // stride + 1)
    up_size = tuple(((v - 1) // up_stride + 1) * up_stride for v in (height, width))
    strided: Tensor | None = None
    highres: Tensor | None = None
    for image in prepared:
        image = image.reshape(1, *image.shape[-3:])
        maps = F.relu(model(torch.cat([image, image.flip(-1)])).float())
        fused = (maps[0] + maps[1].flip(-1))[None]
        small = F.interpolate(fused, strided_size, mode="bilinear", align_corners=False)[0]
        large = F.interpolate(fused, up_size, mode="bilinear", align_corners=False)[0, :, :height, :width]
        strided = small if strided is None else strided + small
        highres = large if highres is None else highres + large
    assert strided is not None and highres is not None
    return strided, highres
