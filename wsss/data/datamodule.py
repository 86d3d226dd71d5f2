"""Lightning DataModule over any dataset source (VOC, COCO, Context, a folder); every setting
comes from the Hydra config."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from wsss.data.datasets import (
    ClassificationDataset,
    InferenceDataset,
    SegmentationDataset,
    collate_single,
)
from wsss.data.sources import Source, open_source
from wsss.data.transforms import build_eval_transform, build_train_transform

log = logging.getLogger(__name__)

MODES = ("classification", "segmentation")


class WSSSDataModule(L.LightningDataModule):
    """Train / val / full-image inference loaders over a dataset source (``data.source``).

    ``mode="classification"``: train batches dict(image (B,3,crop,crop), labels (B,20), name, index
    [, saliency]); val is the same (without saliency) over ``val_split`` with images resized (long side = crop) and
    padded to the crop so they batch. ``mode="segmentation"``: train batches add mask (B,crop,crop)
    int64 from GT (or ``label_dir`` pseudo labels); val is full-size batch-1 :class:`InferenceDataset`
    samples with GT masks (see :func:`collate_single`) over the val images that have one
    (:meth:`has_val_masks` is False when none has: train without validation then).

    Args:
        root: the dataset root (VOC: ``VOCdevkit/VOC2012``). train_split/val_split: generic split
            names (mapped through ``splits``) or .txt paths.
        mask_dir: preferred GT mask folder (VOC: ``SegmentationClassAug`` or ``SegmentationClass``;
            None = the source's default).
        crop_size: train crop side (or (H, W)). scale_range: random rescale range (factors, or
            long-side pixels when ``scale_mode="long_side"``).
        color_jitter: ``v2.ColorJitter`` kwargs or None. mean/std: normalisation of [0, 1] RGB.
        label_dir: pseudo-label folder for segmentation training (None = GT).
        saliency_dir: saliency folder (path or name under root, e.g. ``SALImages``) or None.
        val_mask_dir: GT folder for validation / inference masks (None = ``mask_dir``); real VOC
            evaluation uses ``SegmentationClass`` (with the 255 void band).
        hflip_prob: horizontal flip probability. drop_last: drop the last incomplete train batch.
        source: ``data.source`` node (``_target_`` + kwargs) or a callable; None = VOC.
        splits: generic -> dataset split names (``data.splits``), e.g. COCO ``val: val2014``.
    """

    def __init__(self, *, root: str | os.PathLike, train_split: str, val_split: str,
                 mask_dir: str | None,
                 batch_size: int, num_workers: int, crop_size: int | Sequence[int],
                 scale_range: Sequence[float], color_jitter: Mapping[str, float] | None,
                 mean: Sequence[float], std: Sequence[float], mode: str,
                 label_dir: str | os.PathLike | None = None,
                 saliency_dir: str | os.PathLike | None = None,
                 val_mask_dir: str | None = None, scale_mode: str = "factor",
                 hflip_prob: float = 0.5, drop_last: bool = True, source: Any = None,
                 splits: Mapping[str, str] | None = None) -> None:  # fmt: skip
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.root, self.train_split, self.val_split = root, train_split, val_split
        self.mask_dir, self.val_mask_dir = mask_dir, val_mask_dir or mask_dir
        self.batch_size, self.num_workers, self.mode = int(batch_size), int(num_workers), mode
        self.crop_size = crop_size
        self.mean, self.std = list(mean), list(std)
        self.label_dir, self.saliency_dir = label_dir, saliency_dir
        self.predict_split: str = val_split  # what predict_dataloader() iterates by default
        self.train_transform = build_train_transform(
            crop_size=crop_size, scale_range=scale_range, mean=self.mean, std=self.std,
            color_jitter=dict(color_jitter) if color_jitter else None, hflip_prob=hflip_prob,
            scale_mode=scale_mode)  # fmt: skip
        self.drop_last = drop_last
        self.source_spec, self.splits = source, dict(splits or {})
        self._datasets: dict[str, Dataset] = {}

    @property
    def num_classes(self) -> int:
        return self.source(self.train_split).num_classes

    def source(self, split: str, mask_dir: str | None = None) -> Source:
        return open_source(self.source_spec, self.root, split, splits=self.splits,
                           mask_dir=mask_dir or self.mask_dir)  # fmt: skip

    def setup(self, stage: str | None = None) -> None:
        """Build datasets lazily (fails early with FileNotFoundError on a broken tree)."""
        if stage in (None, "fit") and "train" not in self._datasets:
            src = self.source(self.train_split)
            if self.mode == "classification":
                ds: Dataset = ClassificationDataset(src, self.train_transform, self.saliency_dir)
            else:
                ds = SegmentationDataset(
                    src, self.train_transform, self.label_dir, self.saliency_dir
                )
            self._datasets["train"] = ds
            log.info("train: %s (%s, %d images)", self.train_split, self.mode, len(src))
        if stage in (None, "fit", "validate") and "val" not in self._datasets:
            if self.mode == "classification":
                side = (
                    max(self.crop_size) if isinstance(self.crop_size, Sequence) else self.crop_size
                )
                tf = build_eval_transform(mean=self.mean, std=self.std, resize_long_side=int(side),
                                          pad_to=self.crop_size)  # fmt: skip
                # No saliency: validation scores classification only (EPS's saliency loss is a
                # training loss), so saliency maps need to cover only the training split.
                self._datasets["val"] = ClassificationDataset(
                    self.source(self.val_split, self.val_mask_dir), tf
                )
            else:  # mIoU needs GT: only the val images with a mask (none: no val batches)
                val = self.inference_dataset(self.val_split, with_mask=True)
                with_masks = [name for name in val.source.ids if val.source.has_mask(name)]
                if len(with_masks) < len(val.source.ids):
                    log.warning("val: %d of %d images of %s have no GT mask; validating on the other %d",
                                len(val.source.ids) - len(with_masks), len(val.source.ids),
                                self.val_split, len(with_masks))  # fmt: skip
                    val.source.ids = with_masks
                self._datasets["val"] = val

    def has_val_masks(self) -> bool:
        """Whether segmentation-mode validation has any image to score (val GT masks exist)."""
        self.setup("validate")
        return len(self._datasets["val"]) > 0

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool, **kw: Any) -> DataLoader:
        workers = self.num_workers
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                          persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
                          **kw)  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self._loader(
            self._datasets["train"], self.batch_size, True, drop_last=self.drop_last
        )

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        if self.mode == "classification":
            return self._loader(self._datasets["val"], self.batch_size, False)
        return self._loader(self._datasets["val"], 1, False, collate_fn=collate_single)

    def inference_dataset(self, split: str, with_mask: bool | None = None,
                          resize_long_side: int | None = None) -> InferenceDataset:  # fmt: skip
        """Full-size (or long-side resized) normalised images of ``split`` for CAM/eval stages."""
        tf = build_eval_transform(mean=self.mean, std=self.std, resize_long_side=resize_long_side)
        return InferenceDataset(self.source(split, self.val_mask_dir), tf, with_mask,
                                self.saliency_dir)  # fmt: skip

    def predict_dataloader(
        self, split: str | None = None, with_mask: bool | None = None
    ) -> DataLoader:
        """Batch-1 loader of :meth:`inference_dataset` (default split: ``self.predict_split``)."""
        dataset = self.inference_dataset(split or self.predict_split, with_mask)
        return self._loader(dataset, 1, False, collate_fn=collate_single)


VOCDataModule = WSSSDataModule  # the name configs and user code used before other datasets
