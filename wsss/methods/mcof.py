"""MCOF's RegionNet: a classifier of superpixel regions (Wang et al., CVPR 2018).

MCOF's RegionNet pools backbone features inside each superpixel and classifies the region with
fully connected layers (softmax over background + classes). Here the features come from a
frozen backbone (the trained classifier's; see ``wsss.pipeline.stages.mcof``), pooled once per
image with :func:`wsss.functional.mcof.region_pool`, so only the FC layers train: a CPU-sized
RegionNet. :func:`fit_region_net` is a plain loop over pooled features (no images involved).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.data.labels import IGNORE


class RegionNet(nn.Module):
    """FC layers over pooled region features -> (R, num_classes + 1) logits (background first).

    Args:
        in_features: Width of the pooled region feature.
        num_classes: Foreground classes.
        hidden: Width of the hidden FC layer.
        dropout: Dropout before the last layer.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 256, dropout: float = 0.3) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_features)
        self.fc = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                nn.Linear(hidden, num_classes + 1))  # fmt: skip

    def forward(self, features: Tensor) -> Tensor:
        """(R, in_features) -> (R, num_classes + 1) logits."""
        return self.fc(self.norm(features))


def fit_region_net(net: RegionNet, features: Tensor, labels: Tensor, epochs: int, lr: float,
                   batch_size: int = 512, weight_decay: float = 1e-4, balance: bool = True,
                   seed: int = 0) -> list[float]:  # fmt: skip
    """Train ``net`` on region features with cross-entropy (``IGNORE`` labels skipped).

    ``balance`` weights classes by inverse frequency of the labelled regions (background
    regions outnumber object regions; without it the net drifts towards background).

    Shape:
        - features: ``(N, D)`` pooled region features of all training images
        - labels: ``(N,)`` int64 (0 background, ``c + 1``, ``IGNORE``)
    Returns the mean loss of each epoch.
    """
    keep = labels != IGNORE
    x, y = features[keep].float(), labels[keep].long()
    if len(y) == 0:
        raise ValueError("RegionNet has no labelled region to train on (all IGNORE)")
    n_out = net.fc[-1].out_features
    weight = None
    if balance:
        counts = torch.bincount(y, minlength=n_out).float()
        weight = torch.where(counts > 0, counts.sum() / (counts * (counts > 0).sum()).clamp(min=1), 0.0)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    history = []
    net.train()
    for _ in range(int(epochs)):
        order = torch.randperm(len(y), generator=generator)
        total = 0.0
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(net(x[idx]), y[idx], weight=weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss) * len(idx)
        history.append(total / len(y))
    net.eval()
    return history


@torch.no_grad()
def region_probs(net: RegionNet, features: Tensor, keys: Tensor) -> Tensor:
    """Softmax over background + the image's classes ``keys`` only (image labels are known).

    Shape:
        - features: ``(R, D)``; keys: ``(K,)`` 0-based classes
        - output: ``(R, 1 + K)`` probabilities, column 0 background, column k+1 class keys[k]
    """
    logits = net(features.float())
    cols = torch.cat([torch.zeros(1, dtype=torch.long), keys.long() + 1])
    return logits[:, cols].softmax(dim=1)
