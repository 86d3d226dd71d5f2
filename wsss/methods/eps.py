"""EPS (Lee et al., CVPR 2021): explicit pseudo-pixel supervision from saliency (docs/methods.md, "EPS").

A ``C + 1`` channel class-map head (background LAST, no ReLU, no dropout, as in
``EPS:network/resnet38_eps.py``) trained with ``L = L_cls + L_sal``
(:func:`wsss.functional.eps.eps_saliency_loss`). Saliency maps come with the batch
(``batch["saliency"]`` (B, 1, H, W) in [0, 1], cropped jointly with the image), which the data
module provides when ``data.module.saliency_dir`` is set; :meth:`EPSModule.datamodule_overrides`
says so to ``train_cls``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch.nn.functional as F
from torch import Tensor, nn

from wsss.data.saliency import DEFAULT_SALIENCY_DIR
from wsss.functional.eps import eps_saliency_loss
from wsss.methods.cam import ClassifierModule


class EPSModule(ClassifierModule):
    """EPS classifier.

    Args:
        tau: Overlap-ratio threshold for a present class to count as foreground (VOC script 0.4,
            COCO 0.4; code default 0.5).
        lam: Foreground/background blend of the saliency estimate (VOC 0.5, COCO 0.9).
        saliency_dir: Saliency folder for training, the value of ``data.module.saliency_dir``
            (the one key; the method reads it by interpolation): a path, or a name under the
            dataset root; ``python -m wsss.data.saliency`` makes one without a saliency model.
            ``None`` = :data:`DEFAULT_SALIENCY_DIR` under the root (EPS's release layout, which
            the synthetic tree ships).
    """

    def __init__(self, backbone: dict, num_classes: int, optimizer: Callable, new_lr_mult: float,
                 poly_power: float, tau: float = 0.4, lam: float = 0.5,
                 saliency_dir: str | None = None) -> None:  # fmt: skip
        super().__init__(backbone, num_classes, optimizer, new_lr_mult, poly_power)
        self.tau, self.lam, self.saliency_dir = tau, lam, saliency_dir
        self.classifier = nn.Conv2d(self.backbone.out_channels, num_classes + 1, 1, bias=False)
        nn.init.xavier_uniform_(self.classifier.weight)

    def datamodule_overrides(self) -> dict[str, str]:
        """Data-module settings this method needs for training (read by ``train_cls``)."""
        return {"saliency_dir": self.saliency_dir or DEFAULT_SALIENCY_DIR}

    def class_maps(self, images: Tensor) -> Tensor:
        """Raw (B, C + 1, h, w) maps, background last."""
        return self.classifier(self.backbone(images)[self.backbone.last])

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C) logits: GAP of the first C channels."""
        return self.class_maps(images).mean(dim=(2, 3))[:, : self.num_classes]

    def cam(self, images: Tensor) -> Tensor:
        """Softmax over all C + 1 channels, foreground part (B, C, h, w), as ``EPS:infer.py``.

        The learned background channel is not returned (EPS uses a constant background too);
        it acts only through the softmax normalisation.
        """
        return F.softmax(self.class_maps(images), dim=1)[:, : self.num_classes]

    def new_parameters(self) -> Iterable[nn.Parameter]:
        return self.classifier.parameters()

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        if "saliency" not in batch:
            raise KeyError(
                "EPS needs saliency maps in the training batch: set data.module.saliency_dir "
                "(e.g. SALImages under the VOC root, or a folder written by "
                "`python -m wsss.data.saliency --root VOC2012 --out DIR`)"
            )
        images, labels = batch["image"], batch["labels"]
        maps = self.class_maps(images)
        loss_cls = F.multilabel_soft_margin_loss(maps.mean(dim=(2, 3))[:, : self.num_classes], labels)
        loss_sal = eps_saliency_loss(maps, batch["saliency"], labels, tau=self.tau, lam=self.lam)
        loss = loss_cls + loss_sal
        n = len(labels)
        self.log_dict({"train/loss_cls": loss_cls, "train/loss_sal": loss_sal}, batch_size=n)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        return loss
