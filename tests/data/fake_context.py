"""A small PASCAL-Context tree in the official on-disk format, converted from a VOC-layout tree.

``write_context_from_voc`` turns the VOC ``train`` / ``val`` Segmentation splits into a VOC2010-like
root with the release's files: ``trainval/<id>.mat`` (``LabelMap`` uint16 of 1-based labels.txt
indices), the real ``labels.txt`` (459 ``idx: name`` lines) and the real ``59_labels.txt`` (59
``idx: name`` lines, with the release's spellings ``diningtable`` / ``clothes`` / ``bedcloth``).

VOC classes become their Context class; VOC background becomes ``sky`` in the top half, the rare
(non-59) class ``ladder`` in the bottom-left quarter and ``grass`` in the bottom-right quarter;
VOC void (255) becomes ``LabelMap`` 0 (unlabelled). :func:`expected_context59` is the matching
59-class mask, computed from these tables only (no ``wsss.data.context`` code).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import scipy.io

from wsss.data.labels import VOC_CLASSES
from wsss.io import load_label_png, save_label_png

# The release's labels.txt: class i (1-based) is CONTEXT459[i - 1].
CONTEXT459: tuple[str, ...] = (
    'accordion', 'aeroplane', 'air conditioner', 'antenna', 'artillery', 'ashtray', 'atrium',
    'baby carriage', 'bag', 'ball', 'balloon', 'bamboo weaving', 'barrel', 'baseball bat',
    'basket', 'basketball backboard', 'bathtub', 'bed', 'bedclothes', 'beer', 'bell', 'bench',
    'bicycle', 'binoculars', 'bird', 'bird cage', 'bird feeder', 'bird nest', 'blackboard',
    'board', 'boat', 'bone', 'book', 'bottle', 'bottle opener', 'bowl', 'box', 'bracelet', 'brick',
    'bridge', 'broom', 'brush', 'bucket', 'building', 'bus', 'cabinet', 'cabinet door', 'cage',
    'cake', 'calculator', 'calendar', 'camel', 'camera', 'camera lens', 'can', 'candle',
    'candle holder', 'cap', 'car', 'card', 'cart', 'case', 'casette recorder', 'cash register',
    'cat', 'cd', 'cd player', 'ceiling', 'cell phone', 'cello', 'chain', 'chair', 'chessboard',
    'chicken', 'chopstick', 'clip', 'clippers', 'clock', 'closet', 'cloth', 'clothes tree',
    'coffee', 'coffee machine', 'comb', 'computer', 'concrete', 'cone', 'container',
    'control booth', 'controller', 'cooker', 'copying machine', 'coral', 'cork', 'corkscrew',
    'counter', 'court', 'cow', 'crabstick', 'crane', 'crate', 'cross', 'crutch', 'cup', 'curtain',
    'cushion', 'cutting board', 'dais', 'disc', 'disc case', 'dishwasher', 'dock', 'dog',
    'dolphin', 'door', 'drainer', 'dray', 'drink dispenser', 'drinking machine', 'drop', 'drug',
    'drum', 'drum kit', 'duck', 'dumbbell', 'earphone', 'earrings', 'egg', 'electric fan',
    'electric iron', 'electric pot', 'electric saw', 'electronic keyboard', 'engine', 'envelope',
    'equipment', 'escalator', 'exhibition booth', 'extinguisher', 'eyeglass', 'fan', 'faucet',
    'fax machine', 'fence', 'ferris wheel', 'fire extinguisher', 'fire hydrant', 'fire place',
    'fish', 'fish tank', 'fishbowl', 'fishing net', 'fishing pole', 'flag', 'flagstaff', 'flame',
    'flashlight', 'floor', 'flower', 'fly', 'foam', 'food', 'footbridge', 'forceps', 'fork',
    'forklift', 'fountain', 'fox', 'frame', 'fridge', 'frog', 'fruit', 'funnel', 'furnace',
    'game controller', 'game machine', 'gas cylinder', 'gas hood', 'gas stove', 'gift box',
    'glass', 'glass marble', 'globe', 'glove', 'goal', 'grandstand', 'grass', 'gravestone',
    'ground', 'guardrail', 'guitar', 'gun', 'hammer', 'hand cart', 'handle', 'handrail', 'hanger',
    'hard disk drive', 'hat', 'hay', 'headphone', 'heater', 'helicopter', 'helmet', 'holder',
    'hook', 'horse', 'horse-drawn carriage', 'hot-air balloon', 'hydrovalve', 'ice',
    'inflator pump', 'ipod', 'iron', 'ironing board', 'jar', 'kart', 'kettle', 'key', 'keyboard',
    'kitchen range', 'kite', 'knife', 'knife block', 'ladder', 'ladder truck', 'ladle', 'laptop',
    'leaves', 'lid', 'life buoy', 'light', 'light bulb', 'lighter', 'line', 'lion', 'lobster',
    'lock', 'machine', 'mailbox', 'mannequin', 'map', 'mask', 'mat', 'match book', 'mattress',
    'menu', 'metal', 'meter box', 'microphone', 'microwave', 'mirror', 'missile', 'model', 'money',
    'monkey', 'mop', 'motorbike', 'mountain', 'mouse', 'mouse pad', 'musical instrument', 'napkin',
    'net', 'newspaper', 'oar', 'ornament', 'outlet', 'oven', 'oxygen bottle', 'pack', 'pan',
    'paper', 'paper box', 'paper cutter', 'parachute', 'parasol', 'parterre', 'patio', 'pelage',
    'pen', 'pen container', 'pencil', 'person', 'photo', 'piano', 'picture', 'pig', 'pillar',
    'pillow', 'pipe', 'pitcher', 'plant', 'plastic', 'plate', 'platform', 'player', 'playground',
    'pliers', 'plume', 'poker', 'poker chip', 'pole', 'pool table', 'postcard', 'poster', 'pot',
    'pottedplant', 'printer', 'projector', 'pumpkin', 'rabbit', 'racket', 'radiator', 'radio',
    'rail', 'rake', 'ramp', 'range hood', 'receiver', 'recorder', 'recreational machines',
    'remote control', 'road', 'robot', 'rock', 'rocket', 'rocking horse', 'rope', 'rug', 'ruler',
    'runway', 'saddle', 'sand', 'saw', 'scale', 'scanner', 'scissors', 'scoop', 'screen',
    'screwdriver', 'sculpture', 'scythe', 'sewer', 'sewing machine', 'shed', 'sheep', 'shell',
    'shelves', 'shoe', 'shopping cart', 'shovel', 'sidecar', 'sidewalk', 'sign', 'signal light',
    'sink', 'skateboard', 'ski', 'sky', 'sled', 'slippers', 'smoke', 'snail', 'snake', 'snow',
    'snowmobiles', 'sofa', 'spanner', 'spatula', 'speaker', 'speed bump', 'spice container',
    'spoon', 'sprayer', 'squirrel', 'stage', 'stair', 'stapler', 'stick', 'sticky note', 'stone',
    'stool', 'stove', 'straw', 'stretcher', 'sun', 'sunglass', 'sunshade', 'surveillance camera',
    'swan', 'sweeper', 'swim ring', 'swimming pool', 'swing', 'switch', 'table', 'tableware',
    'tank', 'tap', 'tape', 'tarp', 'telephone', 'telephone booth', 'tent', 'tire', 'toaster',
    'toilet', 'tong', 'tool', 'toothbrush', 'towel', 'toy', 'toy car', 'track', 'train',
    'trampoline', 'trash bin', 'tray', 'tree', 'tricycle', 'tripod', 'trophy', 'truck', 'tube',
    'turtle', 'tvmonitor', 'tweezers', 'typewriter', 'umbrella', 'unknown', 'vacuum cleaner',
    'vending machine', 'video camera', 'video game console', 'video player', 'video tape',
    'violin', 'wakeboard', 'wall', 'wallet', 'wardrobe', 'washing machine', 'watch', 'water',
    'water dispenser', 'water pipe', 'water skate board', 'watermelon', 'whale', 'wharf', 'wheel',
    'wheelchair', 'window', 'window blinds', 'wineglass', 'wire', 'wood', 'wool',
)  # fmt: skip

# The release's 59_labels.txt, in file order and spelling.
LABELS59_TXT: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor", "bag", "bed", "bench", "book", "building", "cabinet", "ceiling", "clothes",
    "computer", "cup", "door", "fence", "floor", "flower", "food", "grass", "ground", "keyboard",
    "light", "mountain", "mouse", "curtain", "platform", "sign", "plate", "road", "rock",
    "shelves", "sidewalk", "sky", "snow", "bedcloth", "track", "tree", "truck", "wall", "water",
    "window", "wood",
)  # fmt: skip
SPELLING = {"diningtable": "table", "clothes": "cloth", "bedcloth": "bedclothes"}
# The 59 classes in 59_labels.txt order with labels.txt spellings: mask value c + 1 is class c.
CLASSES59: tuple[str, ...] = tuple(SPELLING.get(n, n) for n in LABELS59_TXT)
# mmseg's SegmentationClassContext order: the 59 classes by ascending labels.txt index.
MMSEG59: tuple[str, ...] = tuple(sorted(CLASSES59, key=lambda n: CONTEXT459.index(n)))

VOC_TO_CONTEXT = {"diningtable": "table"}  # every other VOC class keeps its name
SKY, RARE, GRASS = "sky", "ladder", "grass"


def label_index(name: str) -> int:
    """1-based labels.txt index of a Context class name."""
    return CONTEXT459.index(name) + 1


def background_label_map(shape: tuple[int, int]) -> np.ndarray:
    """(H, W) uint16 labels.txt indices given to VOC background: sky / ladder / grass regions."""
    h, w = shape
    rows, cols = np.mgrid[0:h, 0:w]
    out = np.full(shape, label_index(GRASS), dtype=np.uint16)
    out[(rows >= h // 2) & (cols < w // 2)] = label_index(RARE)
    out[rows < h // 2] = label_index(SKY)
    return out


def context_label_map(voc_mask: np.ndarray) -> np.ndarray:
    """(H, W) uint16 ``LabelMap`` of a VOC mask (0 bg, c + 1 class c, 255 void)."""
    out = np.where(voc_mask == 0, background_label_map(voc_mask.shape), 0).astype(np.uint16)
    for value in np.unique(voc_mask):
        if 0 < value <= len(VOC_CLASSES):
            voc_name = VOC_CLASSES[value - 1]
            out[voc_mask == value] = label_index(VOC_TO_CONTEXT.get(voc_name, voc_name))
    return out


def expected_context59(voc_mask: np.ndarray, order: tuple[str, ...] = CLASSES59,
                       unlabelled: int = 255) -> np.ndarray:  # fmt: skip
    """(H, W) uint8 59-class mask of a VOC mask: class ``order[c]`` -> c + 1, rare class -> 0,
    void -> ``unlabelled`` (255 for the .mat convention, 0 for mmseg PNGs)."""
    label_map = context_label_map(voc_mask)
    lut = np.zeros(len(CONTEXT459) + 1, dtype=np.uint8)
    lut[0] = unlabelled
    for c, name in enumerate(order):
        lut[label_index(name)] = c + 1
    return lut[label_map]


def voc_split(voc_root: Path, split: str) -> list[str]:
    path = Path(voc_root) / "ImageSets" / "Segmentation" / f"{split}.txt"
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def voc_mask(voc_root: Path, name: str) -> np.ndarray:
    """(H, W) uint8 official VOC mask (with void) of ``name``."""
    return load_label_png(Path(voc_root) / "SegmentationClass" / f"{name}.png")


def write_context_from_voc(voc_root: Path, out_root: Path) -> Path:
    """Write ``out_root/VOC2010`` in the official PASCAL-Context format; returns that root.

    ``VOC2010/JPEGImages/<id>.jpg``, ``VOC2010/ImageSets/Main/{train,val}.txt``,
    ``VOC2010/trainval/<id>.mat``, ``VOC2010/labels.txt`` and ``VOC2010/59_labels.txt``.
    """
    voc_root, root = Path(voc_root), Path(out_root) / "VOC2010"
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (root / "trainval").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        ids = voc_split(voc_root, split)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for name in ids:
            shutil.copyfile(voc_root / "JPEGImages" / f"{name}.jpg",
                            root / "JPEGImages" / f"{name}.jpg")  # fmt: skip
            scipy.io.savemat(root / "trainval" / f"{name}.mat",
                             {"LabelMap": context_label_map(voc_mask(voc_root, name))},
                             do_compression=True)  # fmt: skip
    (root / "labels.txt").write_text(
        "".join(f"{i}: {name}\n" for i, name in enumerate(CONTEXT459, start=1))
    )
    (root / "59_labels.txt").write_text(
        "".join(f"{i}: {name}\n" for i, name in enumerate(LABELS59_TXT, start=1))
    )
    return root


def write_mmseg_layout(root: Path, voc_root: Path,
                       mask_dir: str = "SegmentationClassContext") -> Path:  # fmt: skip
    """Add mmseg's converted layout to a tree of :func:`write_context_from_voc`.

    ``ImageSets/SegmentationContext/{train,val}.txt`` and ``<mask_dir>/<id>.png`` with mmseg's
    values (class ``MMSEG59[k]`` -> k + 1, rare and unlabelled -> 0). Returns the mask folder.
    """
    root, voc_root = Path(root), Path(voc_root)
    (root / "ImageSets" / "SegmentationContext").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        ids = voc_split(voc_root, split)
        (root / "ImageSets" / "SegmentationContext" / f"{split}.txt").write_text(
            "".join(f"{i}\n" for i in ids)
        )
        for name in ids:
            png = expected_context59(voc_mask(voc_root, name), order=MMSEG59, unlabelled=0)
            save_label_png(root / mask_dir / f"{name}.png", png, palette=False)
    return root / mask_dir
