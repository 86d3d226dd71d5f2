"""SEAM: pixel correlation module and equivariance losses (docs/methods.md, "SEAM").

Follows ``SEAM:network/resnet38_SEAM.py`` and ``SEAM:train_SEAM.py``. SEAM's maps have
``C + 1`` channels with the background slot FIRST (channel 0). A training step reads

1. ``cam_o, cam_rv_o`` (view 1) and ``cam_t, cam_rv_t`` (view 2 = view 1 rescaled by 0.3),
   the raw CAM and :func:`pcm` output, both upsampled to their input size;
2. ``L_rvmin = mean of adaptive_min_pooling_loss(cam_rv, labels)`` over the views (code only);
3. maps ``y = max_norm(.) * [1, labels]``, with the view-1 maps rescaled by the same transform;
4. ``L_ER = equivariant_regularization(y_o, y_t)``;
5. ``L_ECR = equivariant_cross_regularization(y_t, pcm_y_o) + (y_o, pcm_y_t)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "adaptive_min_pooling_loss",
    "background_from_foreground",
    "equivariant_cross_regularization",
    "equivariant_regularization",
    "max_norm",
    "max_onehot",
    "pcm",
    "pcm_seed",
]


def max_norm(cam: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-channel min-max normalisation of ReLU'd maps (``SEAM:tool/visualization.py``).

    ``p = ReLU(x)``, then ``ReLU(p - min p - eps) / (max p - min p + eps)`` per sample and channel.

    Args:
        cam: Maps; every channel is normalised, background slot included.
        eps: Default 1e-5.

    Shape:
        - cam: ``(B, K, h, w)``
        - output: ``(B, K, h, w)`` in ``[0, 1)``
    """
    p = F.relu(cam)
    flat = p.flatten(2)
    max_v = flat.amax(-1)[..., None, None]
    min_v = flat.amin(-1)[..., None, None]
    return F.relu(p - min_v - eps) / (max_v - min_v + eps)


def background_from_foreground(cam: Tensor) -> Tensor:
    """Return a copy whose channel 0 is ``1 - max`` over the foreground channels 1..C.

    Shape:
        - cam: ``(B, C + 1, h, w)``, background slot first
        - output: ``(B, C + 1, h, w)``
    """
    bg = 1 - cam[:, 1:].amax(1, keepdim=True)
    return torch.cat([bg, cam[:, 1:]], dim=1)


def max_onehot(cam: Tensor) -> Tensor:
    """Keep only the per-pixel maximum foreground value; channel 0 is passed through.

    Non-mutating version of SEAM's ``max_onehot``. Ties at the maximum are all kept.

    Shape:
        - cam: ``(B, C + 1, h, w)``
        - output: ``(B, C + 1, h, w)``
    """
    fg = cam[:, 1:]
    fg = torch.where(fg == fg.amax(1, keepdim=True), fg, torch.zeros_like(fg))
    return torch.cat([cam[:, :1], fg], dim=1)


@torch.no_grad()
def pcm_seed(cam: Tensor, eps: float = 1e-5) -> Tensor:
    """The detached, processed CAM that SEAM feeds to the PCM (``Net.forward``, under no_grad).

    ``x = ReLU(cam)``; ``x = ReLU(x - eps) / (max x + eps)`` per channel; channel 0 becomes
    ``1 - max_fg``; foreground values below the per-pixel foreground maximum are zeroed.

    Args:
        cam: Raw CAM at feature resolution (fc8 output).
        eps: Default 1e-5.

    Shape:
        - cam: ``(B, C + 1, h, w)``, background slot first
        - output: ``(B, C + 1, h, w)``, no gradient
    """
    x = F.relu(cam.detach().float())
    x = F.relu(x - eps) / (x.flatten(2).amax(-1)[..., None, None] + eps)
    return max_onehot(background_from_foreground(x))


def pcm(cam: Tensor, features: Tensor, preprocess: bool = True, eps: float = 1e-5) -> Tensor:
    """Pixel correlation module: propagate CAM scores along feature-similarity affinities.

    Exactly SEAM's ``Net.PCM``: the CAM is bilinearly resized (align_corners=True) to the
    feature size; each feature vector is L2-normalised (``f / (||f|| + eps)``); the affinity
    ``A = ReLU(F^T F)`` is normalised per target pixel (``A / (sum_i A_ij + eps)``); the output
    is ``y_hat_j = sum_i y_i A_ij``. Gradients flow only through the features.

    Args:
        cam: Raw CAM (``preprocess=True``, default: :func:`pcm_seed` is applied, as SEAM does)
            or an already-processed map (``preprocess=False``).
        features: Projected features, i.e. SEAM's ``f9`` output (1x1 conv 195 -> 192 of
            [image resized bilinearly with align_corners=True, ReLU(f8_3(conv4)),
            ReLU(f8_4(conv5))]); the projection belongs to the head.
        preprocess: Apply :func:`pcm_seed` to ``cam`` first. Default True.
        eps: Added to the feature norm and the affinity column sums. Default 1e-5.

    Shape:
        - cam: ``(B, K, h', w')``
        - features: ``(B, D, h, w)``
        - output: ``(B, K, h, w)`` float32 (upsample to the input size in the caller)
    """
    b, _, h, w = features.shape
    seed = pcm_seed(cam, eps) if preprocess else cam.float()
    seed = F.interpolate(seed, (h, w), mode="bilinear", align_corners=True).flatten(2)
    f = features.float().flatten(2)
    f = f / (f.norm(dim=1, keepdim=True) + eps)
    aff = F.relu(f.transpose(1, 2) @ f)  # (B, hw, hw), symmetric
    aff = aff / (aff.sum(dim=1, keepdim=True) + eps)
    return (seed @ aff).view(b, -1, h, w)


def equivariant_regularization(cam_a: Tensor, cam_b: Tensor) -> Tensor:
    """SEAM's ER loss: mean absolute difference over the foreground channels 1..C.

    ``cam_a`` is the transformed view-1 map ``A(max_norm(y_o)) * labels`` and ``cam_b`` the
    view-2 map ``max_norm(y_t) * labels``; the mean runs over ``B * C * h * w`` elements.

    Shape:
        - cam_a, cam_b: ``(B, C + 1, h, w)``, background slot first (ignored)
        - output: scalar float32
    """
    return (cam_a[:, 1:].float() - cam_b[:, 1:].float()).abs().mean()


def equivariant_cross_regularization(
    cam: Tensor, pcm_cam: Tensor, topk_ratio: float = 0.2
) -> Tensor:
    """One ECR term: hardest-``topk_ratio`` mean of ``|max_onehot(cam) - pcm_cam|``.

    The target is built from ``cam`` (detached): channel 0 := ``1 - max_fg``, then
    :func:`max_onehot`. Per sample, the ``k = int((C + 1) * h * w * topk_ratio)`` largest errors
    over all channels and pixels are averaged (code-only OHEM; ``21 * h * w * 0.2`` in SEAM);
    the result is the mean over the batch. SEAM's L_ECR is
    ``ecr(y_t, A(pcm_o)) + ecr(A(y_o), pcm_t)`` on normalised, label-masked maps.

    Args:
        cam: The other view's normalised CAM (the target; its channel 0 is recomputed).
        pcm_cam: This view's normalised PCM map (receives the gradient).
        topk_ratio: Fraction of channel-pixels averaged. Default 0.2.

    Shape:
        - cam, pcm_cam: ``(B, C + 1, h, w)``
        - output: scalar float32
    """
    target = max_onehot(background_from_foreground(cam.detach().float()))
    err = (target - pcm_cam.float()).abs().flatten(1)
    _, k1, h, w = pcm_cam.shape
    k = max(1, int(k1 * h * w * topk_ratio))
    return err.topk(k, dim=-1).values.mean()


def adaptive_min_pooling_loss(pcm_cam: Tensor, labels: Tensor, ratio: float = 0.25) -> Tensor:
    """Code-only SEAM term pushing the lowest-scoring pixels of the PCM output towards 0.

    ``x = max_c(pcm_cam[:, 1:] * labels)`` per pixel; the ``k = int(h * w * ratio)`` smallest
    values (``h*w // 4`` in SEAM) are ReLU'd and summed, divided by ``k * B``. SEAM applies it
    to the raw (un-normalised) PCM output at input resolution and adds the two views' mean to
    L_cls. The code comment says it changes the best background threshold, not peak mIoU.

    Args:
        pcm_cam: Raw PCM output, background slot first.
        labels: Image-level multi-hot foreground labels.
        ratio: Fraction of pixels pooled. Default 0.25.

    Shape:
        - pcm_cam: ``(B, C + 1, H, W)``
        - labels: ``(B, C)``
        - output: scalar float32
    """
    b, _, h, w = pcm_cam.shape
    x = (pcm_cam[:, 1:].float() * labels.float()[:, :, None, None]).amax(1).flatten(1)
    k = max(1, int(h * w * ratio))
    smallest = x.topk(k, dim=-1, largest=False).values
    return F.relu(smallest).sum() / (k * b)
