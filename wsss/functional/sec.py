"""SEC: Seed, Expand and Constrain (Kolesnikov & Lampert, ECCV 2016) as pure functions.

Follows the released Caffe/Theano layers (``kolesman/SEC: pylayers/pylayers/pylayers.py``):
probabilities carry a 1e-4 floor, GWRP uses d_fg = 0.996 / d_bg = 0.999, the seed loss is
normalised by the total cue count per image, and the constrain target is a dense CRF run on the
image downscaled to the output grid with position kernels divided by 12. Channel 0 of every
``(C+1)``-channel tensor is background and channel ``c + 1`` is foreground class ``c``.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from functools import partial

import numpy as np
import pydensecrf.densecrf as dcrf
import torch
import torch.nn.functional as F
from scipy.ndimage import zoom
from torch import Tensor, nn

MIN_PROB = 1e-4  # SEC's ``min_prob``: floor of the softmax output and of the CRF marginals


def probability_floor(logits: Tensor, min_prob: float = MIN_PROB) -> Tensor:
    """Softmax over classes, plus ``min_prob`` everywhere, renormalised (SEC ``SoftmaxLayer``).

    The floor keeps every log in the SEC losses finite.

    Args:
        logits: segmentation scores.
        min_prob: added to every probability before renormalising. Default 1e-4.

    Shape:
        logits: (B, C+1, h, w) -> (B, C+1, h, w) float32, summing to 1 over dim 1.
    """
    probs = torch.softmax(logits.float(), dim=1) + min_prob
    return probs / probs.sum(dim=1, keepdim=True)


def gwrp(scores: Tensor, decay: float | Tensor) -> Tensor:
    """Global Weighted Rank Pooling: G_c = sum_j d^j s_(j),c / sum_j d^j, values sorted descending.

    ``decay = 0`` is global max pooling (0^0 = 1) and ``decay = 1`` is global average pooling.

    Args:
        scores: per-position class scores.
        decay: d, a scalar or one value per class.

    Shape:
        scores: (B, C, h, w); decay: scalar or (C,) -> (B, C) float32.
    """
    flat = scores.float().flatten(2).sort(dim=2, descending=True).values
    rank = torch.arange(flat.shape[2], device=flat.device, dtype=torch.float32)
    d = torch.as_tensor(decay, dtype=torch.float32, device=flat.device).reshape(-1, 1)
    weights = d.pow(rank)  # torch defines 0 ** 0 = 1, so decay 0 keeps only the top value
    weights = weights / weights.sum(dim=1, keepdim=True)
    return (flat * weights).sum(dim=2)


def sec_seed_loss(probs: Tensor, cues: Tensor) -> Tensor:
    """Seeding loss: -(1/B) sum_i [sum_c sum_{u in S_c} log f_uc] / sum_c |S_c|.

    Normalised by the *total* cue count of each image (all classes pooled, as in SEC's
    ``SeedLossLayer``), not per class. An image without any cue contributes 0 but still
    counts in the 1/B average (SEC would produce NaN there).

    Args:
        probs: floored probabilities (see :func:`probability_floor`).
        cues: one-hot localisation cues, 0/1, background in channel 0.

    Shape:
        probs, cues: (B, C+1, h, w) -> scalar float32.
    """
    cues = cues.float()
    log_likelihood = (cues * probs.float().log()).sum(dim=(1, 2, 3))
    count = cues.sum(dim=(1, 2, 3)).clamp_min(1.0)
    return -(log_likelihood / count).mean()


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Per-row mean of ``values`` over ``mask``; rows with an empty mask give 0."""
    total = torch.where(mask, values, torch.zeros_like(values)).sum(dim=1)
    return total / mask.sum(dim=1).clamp_min(1)


def sec_expand_loss(
    probs: Tensor, labels: Tensor, d_fg: float | Tensor = 0.996, d_bg: float = 0.999
) -> Tensor:
    """Expansion loss with GWRP (SEC ``ExpandLossLayer``).

    L = -mean_b[(1/|C+|) sum_{C+} log G_c] - mean_b[(1/|C-|) sum_{C-} log(1 - max_u f_uc)]
    - mean_b[log G_bg]; background is always treated as present. An image with no present
    (or no absent) foreground class contributes 0 to that term instead of NaN.

    Args:
        probs: floored probabilities.
        labels: image-level foreground multi-hot labels (> 0.5 means present).
        d_fg: GWRP decay of foreground classes, scalar or (C,). Default 0.996.
        d_bg: GWRP decay of background. Default 0.999.

    Shape:
        probs: (B, C+1, h, w); labels: (B, C) -> scalar float32.
    """
    probs = probs.float()
    present = labels > 0.5
    fg = probs[:, 1:]
    tiny = torch.finfo(torch.float32).tiny  # only guards unfloored input; no-op after the floor
    log_g = gwrp(fg, d_fg).clamp_min(tiny).log()
    log_absent = (1.0 - fg.amax(dim=(2, 3))).clamp_min(tiny).log()
    log_g_bg = gwrp(probs[:, :1], d_bg)[:, 0].clamp_min(tiny).log()
    loss_present = -_masked_mean(log_g, present).mean()
    loss_absent = -_masked_mean(log_absent, ~present).mean()
    return loss_present + loss_absent - log_g_bg.mean()


def sec_constrain_loss(probs: Tensor, crf_probs: Tensor, min_prob: float = MIN_PROB) -> Tensor:
    """Constrain-to-boundary loss: mean over batch and positions of KL(Q || f).

    Q is a fixed target (SEC's ``CRFLayer`` back-propagates zeros): it is detached, clipped
    below at ``min_prob`` and renormalised, as SEC does before passing log Q on.

    Args:
        probs: floored network probabilities f.
        crf_probs: dense-CRF marginals Q (e.g. from :func:`crf_batch`).
        min_prob: lower clip of Q. Default 1e-4.

    Shape:
        probs, crf_probs: (B, C+1, h, w) -> scalar float32.
    """
    q = crf_probs.detach().to(device=probs.device, dtype=torch.float32).clamp_min(min_prob)
    q = q / q.sum(dim=1, keepdim=True)
    return (q * (q.log() - probs.float().log())).sum(dim=1).mean()


def crf_downscaled(
    image: np.ndarray,
    probs: np.ndarray,
    scale_factor: float = 12.0,
    bi_w: float = 10.0,
    bi_xy: float = 80.0,
    bi_rgb: float = 13.0,
    pos_w: float = 3.0,
    pos_xy: float = 3.0,
    n_iter: int = 10,
) -> np.ndarray:
    """SEC's training CRF: dense CRF on the image resized to the probability grid.

    The image is resized with linear interpolation (``scipy.ndimage.zoom``, order 1, corner
    aligned, then rounded, as in SEC's ``CRFLayer``); position kernels are divided by
    ``scale_factor``. The unary is -log p (SEC feeds raw scores, equal up to a per-pixel
    constant, which mean-field inference ignores).

    Args:
        image: RGB image, uint8.
        probs: class probabilities on the output grid.
        scale_factor: divides ``bi_xy`` and ``pos_xy``. Default 12 (1 = test-time CRF).
        bi_w, bi_xy, bi_rgb: bilateral weight, θ_α, θ_β. Defaults 10, 80, 13.
        pos_w, pos_xy: Gaussian weight and θ_γ. Defaults 3, 3.
        n_iter: mean-field iterations. Default 10.

    Shape:
        image: (H, W, 3); probs: (C+1, h, w) -> (C+1, h, w) float32 marginals.
    """
    n_labels, h, w = probs.shape
    H, W = image.shape[:2]
    small = zoom(image.astype(np.float32), (h / H, w / W, 1.0), order=1)
    small = np.ascontiguousarray(np.clip(np.round(small), 0, 255).astype(np.uint8))
    assert small.shape[:2] == (h, w), small.shape
    unary = -np.log(np.maximum(probs.astype(np.float32), 1e-8)).reshape(n_labels, -1)
    crf = dcrf.DenseCRF2D(w, h, n_labels)  # width first
    crf.setUnaryEnergy(np.ascontiguousarray(unary))
    crf.addPairwiseGaussian(sxy=pos_xy / scale_factor, compat=pos_w)
    crf.addPairwiseBilateral(sxy=bi_xy / scale_factor, srgb=bi_rgb, rgbim=small, compat=bi_w)
    return np.asarray(crf.inference(n_iter), dtype=np.float32).reshape(n_labels, h, w)


def crf_batch(
    images: Sequence[np.ndarray] | np.ndarray | Tensor,
    probs: np.ndarray | Tensor,
    pool: Executor | None = None,
    **crf_kwargs: float,
) -> np.ndarray | Tensor:
    """Run :func:`crf_downscaled` on every image of a batch, optionally in an executor.

    A ``ProcessPoolExecutor`` owned by the caller keeps the CPU-bound CRF off the training
    thread (pydensecrf holds the GIL, so threads only help while other work waits on I/O).

    Args:
        images: uint8 RGB images (a list may mix sizes).
        probs: probabilities; a tensor is detached and moved to the CPU.
        pool: optional ``concurrent.futures`` executor. Default None (run serially).
        **crf_kwargs: forwarded to :func:`crf_downscaled`.

    Shape:
        images: (B, H, W, 3); probs: (B, C+1, h, w) -> (B, C+1, h, w) float32, a tensor on
        ``probs.device`` if ``probs`` is a tensor, else an ndarray.
    """
    probs_np = probs.detach().float().cpu().numpy() if isinstance(probs, Tensor) else probs
    if isinstance(images, Tensor):
        images = images.detach().cpu().numpy()
    run = partial(crf_downscaled, **crf_kwargs)
    args = (list(images), list(probs_np))
    results = list(pool.map(run, *args) if pool is not None else map(run, *args))
    out = np.stack(results).astype(np.float32)
    return torch.from_numpy(out).to(probs.device) if isinstance(probs, Tensor) else out


def localization_cues(
    cams: Tensor,
    keys: Tensor,
    saliency: Tensor,
    fg_fraction: float = 0.2,
    bg_fraction: float = 0.1,
    num_classes: int = 20,
) -> Tensor:
    """SEC localisation cues from CAMs (foreground) and saliency (background).

    * Foreground: class ``keys[k]`` claims pixels with ``cams[k] > fg_fraction * max cams[k]``
      (a class whose CAM maximum is <= 0 claims nothing).
    * Background: pixels strictly below the saliency value at ascending sorted index
      ``int(bg_fraction * h * w)``, i.e. the lowest ``bg_fraction`` of the map. This is SEC's
      ``grad < thr`` in ``weak-localization/background/localization.ipynb``.
    * Conflicts (SEC's released cues never overlap; the rule is not shown in the repo): a pixel
      claimed by several foreground classes goes to the one with the largest max-normalised CAM
      (ties: earliest in ``keys``); a pixel claimed by background and foreground gets no cue.

    Args:
        cams: CAMs of the present classes, raw or normalised.
        keys: foreground class index (0..num_classes-1) of each CAM.
        saliency: class-agnostic saliency, higher = more salient.
        fg_fraction: relative CAM threshold. Default 0.2.
        bg_fraction: fraction of least salient pixels taken as background. Default 0.1.
        num_classes: number of foreground classes. Default 20.

    Shape:
        cams: (K, h, w); keys: (K,); saliency: (h, w) -> (num_classes+1, h, w) uint8 one-hot.
    """
    h, w = saliency.shape
    cues = torch.zeros(num_classes + 1, h, w, dtype=torch.uint8, device=saliency.device)
    saliency = saliency.float()
    index = int(bg_fraction * h * w)
    if index < h * w:
        bg = saliency < saliency.flatten().sort().values[index]
    else:
        bg = torch.ones_like(saliency, dtype=torch.bool)
    fg_any = torch.zeros_like(bg)
    if cams.shape[0] > 0:
        cams = cams.float()
        peak = cams.flatten(1).amax(dim=1).view(-1, 1, 1)
        claims = (cams > fg_fraction * peak) & (peak > 0)
        normalised = torch.where(claims, cams / peak.clamp_min(1e-12), -torch.inf)
        winner = normalised.argmax(dim=0)  # a claiming class always beats the -inf of others
        fg_any = claims.any(dim=0)
        rows, cols = torch.nonzero(fg_any & ~bg, as_tuple=True)
        cues[keys.to(cues.device).long()[winner[rows, cols]] + 1, rows, cols] = 1
    cues[0][bg & ~fg_any] = 1
    return cues


def cues_to_label_map(cues: Tensor, ignore_index: int = 255) -> Tensor:
    """One-hot cues to a label map (class index, ``ignore_index`` where no cue).

    Shape:
        cues: (..., C+1, h, w) -> (..., h, w) uint8.
    """
    label = cues.argmax(dim=-3).to(torch.uint8)
    return torch.where(cues.amax(dim=-3) > 0, label, torch.full_like(label, ignore_index))


def label_map_to_cues(label: Tensor, num_classes: int = 20, ignore_index: int = 255) -> Tensor:
    """Label map (0 background, c+1 class c, ``ignore_index`` no cue) to one-hot cues.

    Shape:
        label: (..., h, w) -> (..., num_classes+1, h, w) uint8.
    """
    label = label.long()
    label = torch.where(label == ignore_index, torch.full_like(label, num_classes + 1), label)
    one_hot = F.one_hot(label, num_classes + 2)[..., : num_classes + 1]
    return one_hot.movedim(-1, -3).to(torch.uint8)


def cue_statistics(cues: Tensor, gt: Tensor, ignore_index: int = 255) -> dict[str, float]:
    """Coverage and precision of cues against ground truth on the cue grid.

    ``coverage`` = cue pixels / all pixels; ``precision`` = cue pixels whose class equals GT /
    cue pixels with GT != ``ignore_index`` (NaN if there are none). The raw counts are returned
    too so that a dataset-level value can be summed over images.

    Shape:
        cues: (C+1, h, w) one-hot; gt: (h, w) labels already resized to the cue grid.
    """
    has_cue = cues.amax(dim=0) > 0
    label = cues.argmax(dim=0)
    valid = has_cue & (gt != ignore_index)
    correct = valid & (label == gt.long())
    n_cue, n_valid, n_correct = int(has_cue.sum()), int(valid.sum()), int(correct.sum())
    return {
        "coverage": n_cue / has_cue.numel(),
        "precision": n_correct / n_valid if n_valid else float("nan"),
        "pixels": has_cue.numel(),
        "cue_pixels": n_cue,
        "valid_cue_pixels": n_valid,
        "correct_cue_pixels": n_correct,
    }


def gradient_saliency(model: nn.Module, image: Tensor) -> Tensor:
    """SEC background saliency: |d(sum of class logits)/d input|, max over channels, median 3x3.

    SEC back-propagates to ``conv4_1``; the input image is used here so that any classifier
    works (the resulting map is at input resolution). Setting every class-score gradient to 1
    is the gradient of the sum of the logits. The model's train/eval mode is left untouched
    (call ``model.eval()`` first), and no parameter ``.grad`` is written.

    Args:
        model: classifier mapping (1, 3, H, W) images to (1, C) logits.
        image: the (normalised) input image.

    Shape:
        image: (1, 3, H, W) -> (H, W) float32, higher = more salient.
    """
    x = image.detach().float().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(model(x).sum(), x)
    sal = grad.abs().amax(dim=1, keepdim=True)  # (1, 1, H, W)
    # Replicate padding equals scipy.ndimage.median_filter's default 'reflect' for a 3x3 window.
    patches = F.unfold(F.pad(sal, (1, 1, 1, 1), mode="replicate"), kernel_size=3)
    return patches.median(dim=1).values.view(sal.shape[-2:])
