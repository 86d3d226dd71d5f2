"""Where a stage finds its saliency maps (one ``<id>.png`` per image, 0-255)."""

from __future__ import annotations

from pathlib import Path


def saliency_folder(root: Path, directory: str | None, key: str, required: bool = True) -> Path | None:
    """``directory`` as given, or by name under the dataset ``root``; a clear error naming ``key``.

    An unset ``directory`` is an error when ``required``, else ``None`` (the stage runs without).
    """
    if not directory:
        if not required:
            return None
        raise ValueError(f"{key} is not set: this stage needs one saliency PNG per image "
                         "(python -m wsss.data.saliency --root ROOT --out DIR makes some)")
    path = Path(directory).expanduser()
    path = path if path.is_absolute() else Path(root) / path
    if not path.is_dir():
        raise FileNotFoundError(f"saliency directory not found: {path} ({key}); expected <id>.png "
                                "per image, 0-255 (python -m wsss.data.saliency makes some)")
    return path
