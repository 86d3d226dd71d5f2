"""``python -m wsss.data.folder --root DIR --check``: validate a user image folder
(:mod:`wsss.data.folder`) and print what it holds, or every problem found (exit code 1).

The pipeline-wide check of any format (splits the run reads, masks, saliency maps, cached,
parallel) is ``python -m wsss.data.check data=folder data.root=DIR`` (:mod:`wsss.data.check`)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import UnidentifiedImageError

from wsss.data.folder import (
    CLASSES_FILE,
    DEFAULT_MASK_DIR,
    DERIVED_SPLITS,
    IMAGE_DIR,
    LAYOUT,
    SPLIT_DIR,
    _displayed_size,
    _scan_images,
    find_labels_file,
    hash_partition,
    read_classes,
    read_id_list,
    read_labels,
)
from wsss.data.labels import IGNORE
from wsss.io import load_label_png

if TYPE_CHECKING:
    from rich.console import Console


@dataclass
class FolderReport:
    """What ``--check`` found; ``problems`` non-empty means the folder is not usable as is."""

    root: Path
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    labels_file: Path | None = None
    class_names: tuple[str, ...] = ()
    num_image_files: int = 0
    num_labelled: int = 0
    num_background_only: int = 0
    label_counts: list[int] = field(default_factory=list)  # images labelled with class c
    mask_counts: list[int] = field(default_factory=list)  # masks containing class c
    num_masks: int = 0
    splits: list[tuple[str, str, int]] = field(default_factory=list)  # (name, origin, count)


def _listing(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def check_folder(
    root: str | os.PathLike,
    mask_dir: str | os.PathLike = DEFAULT_MASK_DIR,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> FolderReport:
    """Validate a folder without stopping at the first problem (reads every mask header+pixels)."""
    root = Path(root)
    report = FolderReport(root=root)
    problems, warnings = report.problems, report.warnings
    if not root.is_dir():
        problems.append(f"image folder root not found: {root}; {LAYOUT}")
        return report
    images: dict[str, Path] = {}
    ambiguous: dict[str, list[Path]] = {}
    if (root / IMAGE_DIR).is_dir():
        images, ambiguous = _scan_images(root / IMAGE_DIR)
        report.num_image_files = len(images) + sum(len(v) for v in ambiguous.values())
        for name, paths in ambiguous.items():
            problems.append(
                f"several images for id {name!r}: {', '.join(str(p) for p in paths)}; keep one"
            )
    else:
        problems.append(f"no {IMAGE_DIR}/ folder under {root}; {LAYOUT}")
    try:
        report.class_names = read_classes(root / CLASSES_FILE)
    except (OSError, ValueError) as err:
        problems.append(str(err))
        return report
    num_classes = len(report.class_names)
    try:
        report.labels_file = find_labels_file(root)
    except (OSError, ValueError) as err:
        problems.append(str(err))
        return report
    try:
        label_index, label_problems = read_labels(report.labels_file, report.class_names)
    except ValueError as err:  # not UTF-8
        problems.append(str(err))
        return report
    problems.extend(label_problems)
    report.num_labelled = len(label_index)
    counts = np.zeros(num_classes, dtype=np.int64)
    for classes in label_index.values():
        counts[list(classes)] += 1
        report.num_background_only += not classes
    report.label_counts = counts.tolist()

    # every labelled image decodes completely (a truncated JPEG passes a header-only read)
    from wsss.data.check import decode_problems

    problems.extend(decode_problems([images[n] for n in label_index if n in images]))
    missing = [n for n in label_index if n not in images and n not in ambiguous]
    if missing and (root / IMAGE_DIR).is_dir():
        problems.append(
            f"{len(missing)} labelled ids have no image under {root / IMAGE_DIR}: "
            f"{_listing(missing)}"
        )
    unlabelled = sorted(n for n in images if n not in label_index)
    if unlabelled:
        warnings.append(
            f"{len(unlabelled)} images have no row in {report.labels_file.name} and "
            f"are ignored: {_listing(unlabelled)}"
        )
    for c in np.flatnonzero(counts == 0):
        warnings.append(f"class {report.class_names[c]!r} labels no image")

    # splits
    split_files = (
        {p.stem: p for p in sorted((root / SPLIT_DIR).glob("*.txt"))}
        if (root / SPLIT_DIR).is_dir()
        else {}
    )
    if "all" not in split_files:
        report.splits.append(("all", report.labels_file.name, len(label_index)))
    for name, path in split_files.items():
        try:
            ids, split_problems = read_id_list(path, label_index, report.labels_file)
        except ValueError as err:  # not UTF-8
            ids, split_problems = [], [str(err)]
        problems.extend(split_problems)
        report.splits.append((name, f"{SPLIT_DIR}/{path.name}", len(ids)))
    present = [s for s in DERIVED_SPLITS if s in split_files]
    if not present:
        train, val = hash_partition(label_index, val_fraction, seed)
        origin = f"derived (hash of id, val_fraction={val_fraction})"
        report.splits += [("train", origin, len(train)), ("val", origin, len(val))]
        if not val or not train:
            warnings.append(
                f"the derived {'val' if not val else 'train'} split is empty; change "
                "val_fraction or write splits/train.txt and splits/val.txt"
            )
    elif len(present) == 1:
        other = DERIVED_SPLITS[1 - DERIVED_SPLITS.index(present[0])]
        warnings.append(
            f"{SPLIT_DIR}/{present[0]}.txt exists but {SPLIT_DIR}/{other}.txt does "
            f"not: split {other!r} is unavailable (not derived)"
        )

    # masks: values, size against the image, classes against the labels row
    path = Path(mask_dir)
    dirs = [
        p
        for p in dict.fromkeys(
            [path if path.is_absolute() else root / path, root / DEFAULT_MASK_DIR]
        )
        if p.is_dir()
    ]
    mask_counts = np.zeros(num_classes, dtype=np.int64)
    disagree: list[str] = []
    for name, classes in label_index.items():
        mask_file = next((d / f"{name}.png" for d in dirs if (d / f"{name}.png").is_file()), None)
        if mask_file is None:
            continue
        report.num_masks += 1
        try:
            mask = load_label_png(mask_file)
        except (OSError, ValueError) as err:
            problems.append(f"{mask_file}: unreadable mask ({err})")
            continue
        bad = np.unique(mask[(mask > num_classes) & (mask != IGNORE)])
        if bad.size:
            problems.append(
                f"{mask_file}: mask values {bad.tolist()} are not valid for "
                f"{num_classes} classes (0 bg, 1..{num_classes}, {IGNORE} ignore)"
            )
            continue
        if name in images:
            try:
                size = _displayed_size(images[name])
            except (OSError, UnidentifiedImageError) as err:
                problems.append(f"{images[name]}: cannot read the image ({err})")
            else:
                if size != mask.shape:
                    problems.append(
                        f"{mask_file}: mask is {mask.shape[0]}x{mask.shape[1]} (HxW), "
                        f"the image {images[name].name} is {size[0]}x{size[1]}"
                    )
        values = np.unique(mask)
        in_mask = values[(values != 0) & (values != IGNORE)].astype(np.int64) - 1
        mask_counts[in_mask] += 1
        if set(in_mask.tolist()) != set(classes):
            disagree.append(name)
    report.mask_counts = mask_counts.tolist()
    if disagree:
        warnings.append(
            f"{len(disagree)} masks show other classes than their labels row: {_listing(disagree)}"
        )
    return report


def print_report(report: FolderReport, console: Console | None = None) -> None:
    """Rich tables of a :class:`FolderReport` (summary, classes, splits) and its problems."""
    from rich.console import Console
    from rich.table import Table

    console = console if console is not None else Console()
    summary = Table(title=f"image folder {report.root}", show_header=False)
    summary.add_column("what")
    summary.add_column("value", justify="right")
    summary.add_row("image files", str(report.num_image_files))
    summary.add_row("labelled images", str(report.num_labelled))
    summary.add_row("background-only images", str(report.num_background_only))
    summary.add_row("classes", str(len(report.class_names)))
    summary.add_row("masks found", str(report.num_masks))
    console.print(summary)
    if report.class_names:
        classes = Table(title="classes")
        classes.add_column("index", justify="right")
        classes.add_column("mask value", justify="right")
        classes.add_column("class")
        classes.add_column("images", justify="right")
        classes.add_column("masks", justify="right")
        for c, name in enumerate(report.class_names):
            labelled = report.label_counts[c] if report.label_counts else 0
            masks = report.mask_counts[c] if report.mask_counts else 0
            classes.add_row(str(c), str(c + 1), name, str(labelled), str(masks))
        console.print(classes)
    if report.splits:
        splits = Table(title="splits")
        splits.add_column("split")
        splits.add_column("images", justify="right")
        splits.add_column("from")
        for name, origin, count in report.splits:
            splits.add_row(name, str(count), origin)
        console.print(splits)
    for warning in report.warnings:
        console.print(
            f"[yellow]warning:[/yellow] {warning}", markup=True, highlight=False, soft_wrap=True
        )
    for problem in report.problems:
        console.print(
            f"[red]problem:[/red] {problem}", markup=True, highlight=False, soft_wrap=True
        )
    if report.problems:
        console.print(
            f"[red]{len(report.problems)} problem(s) found in {report.root}[/red]",
            highlight=False,
            soft_wrap=True,
        )
    else:
        console.print(
            f"[green]OK:[/green] {report.num_labelled} labelled images, "
            f"{len(report.class_names)} classes, {report.num_masks} masks",
            highlight=False,
            soft_wrap=True,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI ``python -m wsss.data.folder --root DIR --check``; exit code 1 on problems."""
    parser = argparse.ArgumentParser(
        prog="python -m wsss.data.folder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", type=Path, required=True, help="the image folder")
    parser.add_argument("--check", action="store_true", help="validate it and print a summary")
    parser.add_argument(
        "--mask-dir", default=DEFAULT_MASK_DIR, help="GT mask folder (default masks)"
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of the derived val split (default 0.1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="salt of the derived split")
    args = parser.parse_args(argv)
    if not args.check:
        parser.error("nothing to do: pass --check")
    if not 0.0 <= args.val_fraction < 1.0:
        parser.error(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    report = check_folder(args.root, args.mask_dir, args.val_fraction, args.seed)
    print_report(report)
    return 1 if report.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
