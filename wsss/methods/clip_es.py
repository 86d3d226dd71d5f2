"""CLIP-ES (Lin et al., CVPR 2023): training-free CAMs from a frozen CLIP ViT.

For an image with known classes: the image's patch tokens go through all but the last block
without gradients; the last block runs with gradients, the image embedding is the mean of the
final patch tokens projected by CLIP, and the logits are a *softmax* over the cosine similarities
to the prompts of the image's classes plus a set of background words ("softmax Grad-CAM"). Each
class's Grad-CAM (gradients at the last block's first LayerNorm) is then refined by class-aware
attention affinity (CAA) and upsampled. Pure maths: :mod:`wsss.functional.clip_es`.

Prompts come from the dataset's class names: names of VOC and COCO get the paper's synonyms
(``"person"`` -> ``"person with clothes,people,human"``), any other dataset uses its own names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from wsss.functional.clip_es import attention_affinity, caa_refine, grad_cam, minmax
from wsss.models.clip import OPENAI_MEAN, OPENAI_STD

TEMPLATE = "a clean origami {}."

# The paper's background words (clip_text.py); COCO's set drops the COCO classes keyboard / sign.
BACKGROUND_VOC = (
    "ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river", "sea", "railway",
    "railroad", "keyboard", "helmet", "cloud", "house", "mountain", "ocean", "road", "rock", "street", "valley",
    "bridge", "sign",
)
BACKGROUND_COCO = (
    "ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river", "sea", "railway",
    "railroad", "helmet", "cloud", "house", "mountain", "ocean", "road", "rock", "street", "valley", "bridge",
)

# The paper's class prompts where they differ from the class name, keyed by our sources' names.
SYNONYMS_VOC = {
    "bird": "bird avian", "chair": "chair seat", "person": "person with clothes,people,human",
    "tvmonitor": "tvmonitor screen",
}
# CLIP-ES writes COCO classes with VOC-style names; keyed by the official COCO names (wsss.data.coco).
SYNONYMS_COCO = {
    "person": "person with clothes,people,human", "motorcycle": "motorbike", "airplane": "aeroplane",
    "bird": "bird avian", "backpack": "backpack,bag", "umbrella": "umbrella,parasol", "handbag": "handbag,purse",
    "tie": "necktie", "snowboard": "sknowboard", "baseball glove": "glove", "spoon": "dessertspoon",
    "chair": "chair seat", "couch": "sofa", "potted plant": "pottedplant", "dining table": "diningtable",
    "tv": "tvmonitor screen", "remote": "remote control", "hair drier": "hairdrier,blowdrier",
}
_COCO_MARKERS = {"motorcycle", "airplane", "potted plant", "dining table", "couch", "tv"}


def class_prompts(class_names: Sequence[str], prompt_set: str = "auto",
                  synonyms: Mapping[str, str] | None = None) -> tuple[list[str], tuple[str, ...]]:
    """(class prompts, background words) for a dataset's class names.

    ``prompt_set``: ``voc`` / ``coco`` (the paper's synonyms and background words), ``plain``
    (names as they are, ``_`` -> space, VOC background words minus the dataset's own classes) or
    ``auto`` (``coco`` when the names are COCO's, ``voc`` for VOC-style names, else ``plain``).
    ``synonyms`` add to or override the chosen table.
    """
    names = [str(n) for n in class_names]
    if prompt_set == "auto":
        if len(names) == 80 and _COCO_MARKERS <= set(names):
            prompt_set = "coco"
        elif set(names) <= {"aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
                            "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
                            "train", "tvmonitor"}:
            prompt_set = "voc"
        else:
            prompt_set = "plain"
    tables = {"voc": (SYNONYMS_VOC, BACKGROUND_VOC), "coco": (SYNONYMS_COCO, BACKGROUND_COCO), "plain": ({}, None)}
    if prompt_set not in tables:
        raise ValueError(f"prompt_set must be auto, voc, coco or plain, got {prompt_set!r}")
    table, background = tables[prompt_set]
    table = {**table, **(synonyms or {})}
    prompts = [table.get(n, n.replace("_", " ")) for n in names]
    if background is None:
        own = {n.lower() for n in names} | {p.lower() for p in prompts}
        background = tuple(w for w in BACKGROUND_VOC if w not in own)
    return prompts, tuple(background)


def preprocess(rgb: np.ndarray, patch_size: int = 16, scale: float = 1.0) -> Tensor:
    """(H, W, 3) uint8 -> (1, 3, H', W') CLIP-normalised, H', W' = ceil(scale * side / patch) * patch
    (bicubic resize, as CLIP-ES)."""
    h, w = rgb.shape[:2]
    size = (int(np.ceil(scale * w / patch_size) * patch_size), int(np.ceil(scale * h / patch_size) * patch_size))
    image = Image.fromarray(np.ascontiguousarray(rgb)).resize(size, Image.BICUBIC)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor(OPENAI_MEAN).view(3, 1, 1), torch.tensor(OPENAI_STD).view(3, 1, 1)
    return ((x - mean) / std)[None]


class ClipES(nn.Module):
    """CAMs of a frozen CLIP for the classes an image is known to contain.

    Args:
        clip: an open_clip ``CLIP`` (``wsss.models.clip.build_clip``).
        tokenizer: open_clip tokenizer (``open_clip.get_tokenizer(name)``).
        class_prompts: one prompt per dataset class (index c = class c).
        background: background words competing in the softmax.
        attn_layers: how many of the last blocks' attention maps are averaged for CAA (8).
        box_threshold: CAA box threshold on the CAM (0.4).
        templates: prompt templates (CLIP-ES: ``a clean origami {}.``).
    """

    def __init__(self, clip: nn.Module, tokenizer, class_prompts: Sequence[str], background: Sequence[str],
                 attn_layers: int = 8, box_threshold: float = 0.4, templates: Sequence[str] = (TEMPLATE,)) -> None:
        super().__init__()
        self.clip = clip.eval().requires_grad_(False)
        self.attn_layers, self.box_threshold = attn_layers, box_threshold
        visual = clip.visual
        patch = visual.conv1.kernel_size
        self.patch_size = int(patch[0] if isinstance(patch, tuple) else patch)
        with torch.no_grad():
            self.register_buffer("fg_text", self._text_features(tokenizer, class_prompts, templates))
            self.register_buffer("bg_text", self._text_features(tokenizer, background, templates))

    def _text_features(self, tokenizer, names: Sequence[str], templates: Sequence[str]) -> Tensor:
        """(N, E): per name the mean of its normalised template embeddings, renormalised."""
        out = []
        for name in names:
            emb = self.clip.encode_text(tokenizer([t.format(name) for t in templates]))
            emb = F.normalize(emb, dim=-1).mean(dim=0)
            out.append(emb / emb.norm())
        dim = self.clip.text_projection.shape[-1] if self.clip.text_projection is not None else 0
        return torch.stack(out) if out else torch.zeros(0, dim)

    @staticmethod
    def _block(block: nn.Module, x: Tensor, batch_first: bool) -> tuple[Tensor, Tensor, Tensor]:
        """One open_clip residual block, returning (output, ln_1 output, head-averaged attention)."""
        y = block.ln_1(x)
        q = y if batch_first else y.transpose(0, 1)
        out, attn = block.attn(q, q, q, need_weights=True, average_attn_weights=True)
        out = out if batch_first else out.transpose(0, 1)
        x = x + block.ls_1(out)
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
        return x, y, attn

    def _pos_embed(self, h: int, w: int) -> Tensor:
        pos = self.clip.visual.positional_embedding
        grid = round((len(pos) - 1) ** 0.5)
        patches = pos[1:].T.reshape(1, -1, grid, grid)
        if (h, w) != (grid, grid):
            patches = F.interpolate(patches, size=(h, w), mode="bilinear", align_corners=False)
        return torch.cat([pos[:1], patches.reshape(pos.shape[1], h * w).T])

    def cams(self, image: Tensor, keys: Sequence[int], size: tuple[int, int]) -> Tensor:
        """CAA-refined CAMs of classes ``keys`` for one CLIP-normalised image, upsampled to ``size``.

        Shape: image (1, 3, H', W') with sides multiples of the patch size -> (K, *size) in [0, 1].
        """
        visual = self.clip.visual
        batch_first = getattr(visual.transformer, "batch_first", True)
        h, w = image.shape[-2] // self.patch_size, image.shape[-1] // self.patch_size
        if not keys:
            return torch.zeros(0, *size)
        with torch.no_grad():
            x = visual.conv1(image.to(self.fg_text.dtype)).flatten(2).transpose(1, 2)
            cls = visual.class_embedding.to(x.dtype).expand(len(x), 1, -1)
            x = torch.cat([cls, x], dim=1) + self._pos_embed(h, w).to(x.dtype)
            x = visual.ln_pre(x)
            attns = []
            blocks = list(visual.transformer.resblocks)
            for block in blocks[:-1]:
                x, _, attn = self._block(block, x, batch_first)
                attns.append(attn)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)  # the frozen weights need no grad; the tokens do
            out, act, attn = self._block(blocks[-1], x, batch_first)
            tokens = visual.ln_post(out)[:, 1:].mean(dim=1)
            feats = F.normalize(tokens @ visual.proj, dim=-1)
            text = torch.cat([self.fg_text[list(keys)], self.bg_text])
            probs = (self.clip.logit_scale.exp() * feats @ text.T).softmax(dim=-1)[0]
            acts = act[0, 1:].detach().T.reshape(-1, h, w)
            cams_small = []
            for index in range(len(keys)):
                (grad,) = torch.autograd.grad(probs[index], act, retain_graph=index < len(keys) - 1)
                cams_small.append(grad_cam(acts, grad[0, 1:].T.reshape(-1, h, w)))
        attns.append(attn.detach())
        mean_attn = torch.stack(attns[-self.attn_layers:])[:, 0, 1:, 1:].mean(dim=0).float()
        affinity = attention_affinity(mean_attn)
        refined = torch.stack([minmax(caa_refine(c, affinity, self.box_threshold)) for c in cams_small])
        return F.interpolate(refined[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
