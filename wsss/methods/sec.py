"""SEC (Kolesnikov & Lampert, ECCV 2016): a segmenter trained with seed, expand and constrain losses.

The module only wires the pure ops of :mod:`wsss.functional.sec`. The constrain target is a
dense CRF on the image downscaled to the output grid; it is CPU work, so it runs in a
``ProcessPoolExecutor`` owned by the module (created lazily on the first training step, shut
down in :meth:`teardown`), one image per task, while the accelerator stays with the network.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, ProcessPoolExecutor

import torch.nn.functional as F
from torch import Tensor, nn

from wsss.functional.sec import (
    crf_batch,
    label_map_to_cues,
    probability_floor,
    sec_constrain_loss,
    sec_expand_loss,
    sec_seed_loss,
)
from wsss.methods.base import SegmentationValidation, WSSSModule
from wsss.metrics.segmentation import SegmentationMetric
from wsss.models.backbones import create_backbone

log = logging.getLogger(__name__)

# (images (B, g, g, 3) uint8, probs (B, C+1, g, g)) -> CRF marginals (B, C+1, g, g)
CRFFn = Callable[[Tensor, Tensor], Tensor]


class LargeFOVHead(nn.Module):
    """DeepLab-LargeFOV head: fc6 (3x3, dilated) -> fc7 (1x1) -> fc8 (1x1), ReLU + dropout between.

    fc8 is Gaussian-initialised with std 0.01 as SEC's ``fc8-SEC``.
    """

    def __init__(self, in_channels: int, num_outputs: int, channels: int = 1024,
                 dilation: int = 12, dropout: float = 0.5) -> None:  # fmt: skip
        super().__init__()
        self.fc6 = nn.Conv2d(in_channels, channels, 3, padding=dilation, dilation=dilation)
        self.fc7 = nn.Conv2d(channels, channels, 1)
        self.fc8 = nn.Conv2d(channels, num_outputs, 1)
        self.dropout = nn.Dropout2d(dropout)
        nn.init.normal_(self.fc8.weight, std=0.01)
        nn.init.zeros_(self.fc8.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dropout(F.relu(self.fc6(x), inplace=True))
        x = self.dropout(F.relu(self.fc7(x), inplace=True))
        return self.fc8(x)


class SECModule(SegmentationValidation, WSSSModule):
    """Backbone + LargeFOV head trained with L_seed + L_expand + L_constrain.

    Batches come from :class:`wsss.data.cues.CueDataset`: ``image`` (B, 3, S, S), ``cues`` (B, g, g)
    label maps (255 = no cue), ``labels`` (B, C), ``raw`` (B, g, g, 3) uint8. The losses are
    computed on the cue grid g; if the network's output grid differs (e.g. torchvision VGG gives
    40 for 321 where Caffe gives 41) the scores are resized bilinearly to it.

    Args:
        backbone: ``cfg.backbone`` (:func:`~wsss.models.backbones.create_backbone`); ``output_stride`` overrides its stride (SEC: 8).
        num_classes: foreground classes (background is added).
        head_channels, fc6_dilation, dropout: LargeFOV head (SEC: 1024, 12, 0.5).
        d_fg, d_bg: GWRP decays (0.996, 0.999). min_prob: probability floor (1e-4).
        loss_weights: ``seed``/``expand``/``constrain`` weights (SEC: all 1).
        crf_params: kwargs of :func:`wsss.functional.sec.crf_downscaled` (scale_factor, bi_w, ...).
        crf_workers: processes of the CRF pool; 0 runs the CRF in the training process.
        crf_start_method: multiprocessing start method of the pool (``spawn`` is safe with CUDA).
        infer_size: :meth:`forward` warps inputs to this side and the logits back (SEC's
            ``deploy/demo.py`` at 321); None keeps the input size.
    """

    def __init__(self, backbone: dict, num_classes: int, optimizer: Callable, new_lr_mult: float,
                 poly_power: float, output_stride: int | None = 8, head_channels: int = 1024,
                 fc6_dilation: int = 12, dropout: float = 0.5, d_fg: float = 0.996,
                 d_bg: float = 0.999, min_prob: float = 1e-4,
                 loss_weights: Mapping[str, float] | None = None,
                 crf_params: Mapping[str, float] | None = None, crf_workers: int = 0,
                 crf_start_method: str = "spawn", infer_size: int | None = None) -> None:  # fmt: skip
        super().__init__(optimizer, new_lr_mult, poly_power)
        self.save_hyperparameters(ignore=["optimizer"], logger=False)
        self.num_classes = num_classes + 1
        overrides = {} if output_stride is None else {"output_stride": output_stride}
        self.backbone = create_backbone(backbone, **overrides)
        self.head = LargeFOVHead(self.backbone.out_channels, self.num_classes, head_channels,
                                 fc6_dilation, dropout)  # fmt: skip
        self.d_fg, self.d_bg, self.min_prob = d_fg, d_bg, min_prob
        weights = {"seed": 1.0, "expand": 1.0, "constrain": 1.0, **dict(loss_weights or {})}
        unknown = set(weights) - {"seed", "expand", "constrain"}
        if unknown:
            raise KeyError(f"loss_weights has unknown keys {sorted(unknown)}; use seed/expand/constrain")
        self.loss_weights = weights
        self.crf_params = dict(crf_params or {})
        self.crf_workers, self.crf_start_method = int(crf_workers), crf_start_method
        self.infer_size = infer_size
        self.crf_fn: CRFFn | None = None  # replaces the dense CRF (tests, custom targets)
        self._pool: Executor | None = None
        self.val_metric = SegmentationMetric(self.num_classes, sync=True)

    # -- network -----------------------------------------------------------------------------
    def scores(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, C+1, g, g) raw scores on the output grid (fc8)."""
        return self.head(self.backbone(images)[self.backbone.last])

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C+1, H, W) logits at input resolution (for eval / prediction)."""
        size = images.shape[-2:]
        x = images
        if self.infer_size is not None:
            x = F.interpolate(images, size=(self.infer_size,) * 2, mode="bilinear", align_corners=False)
        return F.interpolate(self.scores(x), size=size, mode="bilinear", align_corners=False)

    def pretrained_parameters(self) -> Iterable[nn.Parameter]:
        return self.backbone.parameters()

    def new_parameters(self) -> Iterable[nn.Parameter]:
        return self.head.parameters()

    # -- CRF pool ----------------------------------------------------------------------------
    def crf_pool(self) -> Executor | None:
        """The module's CRF process pool, created on first use (None when ``crf_workers`` = 0)."""
        if self._pool is None and self.crf_workers > 0:
            context = multiprocessing.get_context(self.crf_start_method)
            self._pool = ProcessPoolExecutor(max_workers=self.crf_workers, mp_context=context)
            log.info("SEC: CRF pool with %d %s workers", self.crf_workers, self.crf_start_method)
        return self._pool

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.crf_pool()

    def teardown(self, stage: str) -> None:
        self.close_pool()

    def close_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __getstate__(self) -> dict:
        state = super().__getstate__()  # a live pool cannot be pickled (spawned workers, deepcopy)
        state["_pool"] = None
        return state

    def constrain_target(self, raw: Tensor, probs: Tensor) -> Tensor:
        """CRF marginals Q of the floored probabilities; never differentiated (SEC's CRFLayer)."""
        detached = probs.detach()
        if self.crf_fn is not None:
            return self.crf_fn(raw, detached).detach()
        return crf_batch(raw, detached, pool=self.crf_pool(), **self.crf_params)

    # -- training ----------------------------------------------------------------------------
    def sec_losses(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        cue_map = batch["cues"]
        scores = self.scores(batch["image"])
        if scores.shape[-2:] != cue_map.shape[-2:]:
            scores = F.interpolate(scores, size=cue_map.shape[-2:], mode="bilinear", align_corners=False)
        probs = probability_floor(scores, self.min_prob)
        cues = label_map_to_cues(cue_map, num_classes=self.num_classes - 1)
        q = self.constrain_target(batch["raw"], probs)
        losses = {
            "seed": sec_seed_loss(probs, cues),
            "expand": sec_expand_loss(probs, batch["labels"], self.d_fg, self.d_bg),
            "constrain": sec_constrain_loss(probs, q, self.min_prob),
        }
        losses["loss"] = sum(self.loss_weights[k] * losses[k] for k in ("seed", "expand", "constrain"))
        return losses

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        losses = self.sec_losses(batch)
        n = len(batch["image"])
        for key, value in losses.items():
            self.log(f"train/{key}", value, prog_bar=key == "loss", batch_size=n)
        return losses["loss"]
