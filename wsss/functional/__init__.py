"""Pure tensor functions: losses and ops of every method, shapes documented in each docstring.

Import from here (``from wsss.functional import cam, sec_seed_loss``) or from the submodules.
"""

from wsss.functional.affinity import affinity_labels, affinity_loss, pairwise_affinity
from wsss.functional.cam import (
    background_power,
    cam,
    cams_to_label,
    multiscale_cam,
    normalize_cam,
    restrict_to_keys,
)
from wsss.functional.crf import dense_crf, dense_crf_labels
from wsss.functional.eps import eps_saliency_loss
from wsss.functional.irn import (
    instance_centroids,
    instances_from_displacement,
    irn_losses,
    irn_total_loss,
)
from wsss.functional.oaa import accumulate_attention, attention_drop, oaa_iam_loss
from wsss.functional.random_walk import random_walk_from_boundary, random_walk_from_features
from wsss.functional.refine import confident_label, superpixel_refine
from wsss.functional.seam import (
    equivariant_cross_regularization,
    equivariant_regularization,
    pcm,
)
from wsss.functional.sec import (
    gwrp,
    localization_cues,
    probability_floor,
    sec_constrain_loss,
    sec_expand_loss,
    sec_seed_loss,
)
from wsss.functional.segmentation import multiscale_probs

__all__ = [
    "accumulate_attention", "affinity_labels", "affinity_loss", "attention_drop", "background_power",
    "cam", "cams_to_label", "confident_label", "dense_crf", "dense_crf_labels",
    "eps_saliency_loss", "equivariant_cross_regularization", "equivariant_regularization", "gwrp",
    "instance_centroids", "instances_from_displacement", "irn_losses", "irn_total_loss",
    "localization_cues", "multiscale_cam", "multiscale_probs", "normalize_cam", "oaa_iam_loss",
    "pairwise_affinity", "pcm", "probability_floor", "random_walk_from_boundary",
    "random_walk_from_features", "restrict_to_keys", "sec_constrain_loss", "sec_expand_loss",
    "sec_seed_loss", "superpixel_refine",
]  # fmt: skip
