"""Where a stage finds its saliency maps (one ``<id>.png`` per image, 0-255).

Two routes, one rule: a stage that declares ``reads.saliency`` (a saliency stage of the pipeline,
e.g. ``make_cam_saliency``) reads that stage's maps; otherwise the folder configured by
``data.module.saliency_dir`` (the one key for saliency folders), else the stage's own default.
"""

from __future__ import annotations

from pathlib import Path

# Folder of a saliency stage's maps under its stage directory (named in its metrics.json).
SALIENCY_DIR = "saliency"


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


def stage_saliency_dir(stage_dir: Path) -> Path:
    """The maps of a finished saliency stage: ``<stage dir>/<metrics saliency_dir>``."""
    from wsss.pipeline.context import METRICS_FILE, read_metrics

    name = read_metrics(stage_dir).get("saliency_dir") if (stage_dir / METRICS_FILE).is_file() else None
    path = Path(stage_dir) / (name or SALIENCY_DIR)
    if name is None or not path.is_dir():
        raise FileNotFoundError(f"{stage_dir} is not a saliency stage: expected 'saliency_dir' in its "
                                f"{METRICS_FILE} naming a folder of <id>.png maps (stage make_cam_saliency)")
    return path


def read_saliency(ctx, root: Path, default: str | None, required: bool = True,
                  key: str | None = None) -> Path | None:  # fmt: skip
    """The saliency folder of the stage of ``ctx``: its ``reads.saliency`` stage's maps when
    declared, else ``data.module.saliency_dir``, else ``default`` (see :func:`saliency_folder`;
    ``key`` names the settings in its errors)."""
    stage_dir = ctx.read_optional("saliency")
    if stage_dir is not None:
        return stage_saliency_dir(stage_dir)
    key = key or (f"data.module.saliency_dir (else stages.{ctx.name}.saliency_dir, or "
                  f"stages.{ctx.name}.reads.saliency=make_cam_saliency)")
    return saliency_folder(root, ctx.cfg.data.module.get("saliency_dir") or default, key, required)
