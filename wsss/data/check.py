"""Pre-flight data check, for every format (VOC, COCO, Context, a folder), before any stage runs.

``train.py`` runs it after the config check; on its own::

    python -m wsss.data.check data=folder data.root=~/my_images
    python -m wsss.data.check data=voc data.root=/data/VOCdevkit/VOC2012 data.check.workers=16

(the same ``key=value`` overrides as ``train.py``; exit code 1 when a problem is found).

What it checks, on every split the configured pipeline reads (``data.module.train_split`` /
``val_split``, ``protocol.eval_split`` / ``holdout_split`` and every stage's ``split(s)``):

* each split opens (its list file exists, is UTF-8, lists no id twice) and is not empty;
* all splits have the same class names, and ``data.num_classes`` is their count;
* every listed image decodes COMPLETELY (a truncated or zero-byte JPEG is caught here, not hours
  later in ``make_cam``) and its image-level labels parse;
* every GT mask that exists (``data.module.mask_dir`` and ``data.eval_mask_dir``) has the image's
  size and values 0..num_classes or 255; VOC / Context / COCO splits scored against masks (the
  eval and held-out splits) must have a mask for every image once any image of them has one
  (a folder's masks are optional per image);
* saliency maps (``data.module.saliency_dir``, or EPS's ``SALImages`` default, or SEC's
  ``make_cues.saliency=png``) exist for every image, decode and have the image's size.

Per-image work runs in worker processes (the cores this process may use, ``data.check.workers``)
with a progress bar, and results are cached per image by the size and mtime of its files
(``data.check.cache_dir``, default ``~/.cache/wsss/data_check``; the run directory when that is not
writable), so a second check of an unchanged dataset costs seconds.

``data.check.on_error=stop`` (default): any problem stops the run before training, each reported with
its file and what was expected. ``on_error=skip``: images with a problem are left out of every
split (``data.source.exclude`` names the list, ``<run dir>/data_check/skipped.txt``; problems in
``problems.txt``); problems that are not about one image (a split file, the class list) still stop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from wsss.data.labels import IGNORE
from wsss.data.sources import Source, dataset_split, open_source

log = logging.getLogger(__name__)

CACHE_VERSION = 1
SKIPPED_FILE, PROBLEMS_FILE, CHECK_DIR = "skipped.txt", "problems.txt", "data_check"
MASK_OPTIONAL = ("wsss.data.folder.FolderSource",)  # readers whose masks are optional per image
_SERIAL_BELOW = 48  # fewer images than this: no worker processes (their start costs more)


class DataCheckError(ValueError):
    """The data has problems; the message lists them (file + what was expected)."""


@dataclass
class DataReport:
    """What :func:`check_data` found. ``problems`` are per image (``bad_ids``) or global."""

    root: Path
    problems: list[str] = field(default_factory=list)  # everything, in order found
    global_problems: list[str] = field(default_factory=list)  # not about one image: never skipped
    bad_ids: dict[str, list[str]] = field(default_factory=dict)  # id -> its problems
    warnings: list[str] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)  # dataset split name -> ids
    num_images: int = 0
    num_cached: int = 0
    seconds: float = 0.0
    cache_file: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        splits = ", ".join(f"{k} {v}" for k, v in self.splits.items())
        head = (f"data check of {self.root}: {self.num_images} images ({splits}); "
                f"{self.num_cached} from the cache, {self.seconds:.1f} s")  # fmt: skip
        if self.ok:
            return head + "; OK"
        return (
            head
            + f"; {len(self.problems)} problem(s)"
            + (f", {len(self.bad_ids)} image(s) affected" if self.bad_ids else "")
        )


# --------------------------------------------------------------------------- what to check
def _strings(value: Any) -> list[str]:
    if isinstance(value, (list, tuple, ListConfig)):
        return [str(v) for v in value if isinstance(v, str)]
    return [value] if isinstance(value, str) else []


def pipeline_splits(cfg: DictConfig) -> list[str]:
    """Generic split names the configured run reads (module, protocol, every stage in the order)."""
    names: list[str] = []
    module, proto = cfg.data.module, cfg.get("protocol") or {}
    for value in (module.get("train_split"), module.get("val_split"),
                  proto.get("eval_split"), proto.get("holdout_split")):  # fmt: skip
        names += _strings(value)
    stages = cfg.get("stages") or {}
    for name in (cfg.get("pipeline") or {}).get("order") or []:
        node = stages.get(name) or {}
        for key in ("split", "splits"):
            if key in node:
                names += _strings(node.get(key))
    return list(dict.fromkeys(names))


def _scored_splits(cfg: DictConfig) -> set[str]:
    proto = cfg.get("protocol") or {}
    return {str(s) for s in (proto.get("eval_split"), proto.get("holdout_split"),
                             cfg.data.module.get("val_split")) if s}  # fmt: skip


def saliency_requirement(cfg: DictConfig) -> tuple[str, str] | None:
    """(directory as configured, the key to name) when the run reads saliency maps, else None."""
    configured = cfg.data.module.get("saliency_dir")
    if configured:
        return str(configured), "data.module.saliency_dir"
    stages, order = cfg.get("stages") or {}, (cfg.get("pipeline") or {}).get("order") or []

    def from_stage(name: str) -> bool:  # reads its maps from a saliency stage of the pipeline
        return bool(((stages.get(name) or {}).get("reads") or {}).get("saliency"))

    method = cfg.get("method") or {}
    if "saliency_dir" in method and not from_stage("train_cls"):
        # EPS: null = its release layout, SALImages under the root
        from wsss.data.saliency import DEFAULT_SALIENCY_DIR

        return DEFAULT_SALIENCY_DIR, "data.module.saliency_dir"
    for name in order:
        node = stages.get(name) or {}
        if (
            str(node.get("_target_", "")).endswith("make_cues.run")
            and node.get("saliency") == "png"
            and not from_stage(name)
        ):
            return str(node.get("saliency_dir") or "SALImages"), "data.module.saliency_dir"
    return None


def resolve_dir(root: Path, directory: str) -> Path | None:
    """A folder given as a path or a name under ``root`` (as the datasets resolve it), or None."""
    path = Path(directory).expanduser()
    for candidate in (path, root / path) if not path.is_absolute() else (path,):
        if candidate.is_dir():
            return candidate
    return None


# --------------------------------------------------------------------------- per-image work
# Readers shared with forked workers (set before the pool starts; copy-on-write, never pickled:
# a COCO reader holds the parsed annotation json).
_READERS: dict[str | None, Source] = {}
_SETTINGS: dict[str, Any] = {}


def _fmt_shape(shape: Sequence[int]) -> str:
    return f"{shape[0]}x{shape[1]} (HxW)"


def _mask_file(reader: Source, name: str) -> str:
    try:
        return str(reader.mask_path(name))  # type: ignore[attr-defined]
    except (AttributeError, FileNotFoundError, ValueError):
        return f"the mask of {name}"


def check_one(name: str) -> list[str]:
    """Problems of one image id (empty when fine), each naming its file."""
    readers, settings = _READERS, _SETTINGS
    first = next(iter(readers.values()))
    problems: list[str] = []
    try:
        image_file = first.image_path(name)
        image = first.load_image(name)  # decodes the whole file
    except (OSError, ValueError, KeyError) as err:
        return [str(err)]
    size = image.shape[:2]
    try:
        first.labels(name)
    except (OSError, ValueError, KeyError) as err:
        problems.append(f"labels of {image_file}: {err}")
    num_classes = first.num_classes
    expected = settings.get("mask_expected", set())
    seen: set[str] = set()
    for reader in readers.values():
        try:
            has = reader.has_mask(name)
        except (OSError, ValueError) as err:
            problems.append(str(err))
            continue
        if not has:
            if name in expected:
                problems.append(
                    f"{image_file}: no GT mask ({_mask_file(reader, name)}); every image "
                    f"of the split(s) scored against masks needs one"
                )
            continue
        where = _mask_file(reader, name)
        if where in seen:
            continue
        seen.add(where)
        try:
            mask = reader.load_mask(name)
        except (OSError, ValueError, KeyError) as err:
            problems.append(f"{where}: {err}" if where not in str(err) else str(err))
            continue
        if mask.shape[:2] != size:
            problems.append(f"{where}: mask is {_fmt_shape(mask.shape)}, its image {image_file} is "
                            f"{_fmt_shape(size)}")  # fmt: skip
        bad = np.unique(mask[(mask > num_classes) & (mask != IGNORE)])
        if bad.size:
            problems.append(
                f"{where}: mask values {bad[:10].tolist()} are not valid for {num_classes} "
                f"classes (expected 0 = background, 1..{num_classes} = class + 1, "
                f"{IGNORE} = void)"
            )
    saliency = settings.get("saliency_dir")
    if saliency is not None:
        from wsss.io import load_grey

        path = Path(saliency) / f"{name}.png"
        try:
            sal = load_grey(path, f"saliency map ({settings['saliency_key']})")
        except (OSError, ValueError) as err:
            problems.append(str(err))
        else:
            if sal.shape[:2] != size:
                problems.append(
                    f"{path}: saliency map is {_fmt_shape(sal.shape)}, its image "
                    f"{image_file} is {_fmt_shape(size)}"
                )
    return problems


def _signature(name: str) -> list[Any]:
    """Size + mtime of every file the check of ``name`` reads (None entries: not there)."""
    files: list[Path | None] = []
    for reader in _READERS.values():
        for getter in ("image_path", "mask_path"):
            try:
                files.append(Path(getattr(reader, getter)(name)))
            except (AttributeError, FileNotFoundError, ValueError, KeyError):
                files.append(None)
        if getattr(reader, "split_file", None) is not None and not files[-1]:
            files.append(Path(reader.split_file))  # masks rendered from an annotation file
    if _SETTINGS.get("saliency_dir") is not None:
        files.append(Path(_SETTINGS["saliency_dir"]) / f"{name}.png")
    sig: list[Any] = []
    for path in files:
        try:
            st = path.stat() if path is not None else None
        except OSError:
            st = None
        sig.append([str(path), st.st_size, st.st_mtime_ns] if st else None)
    sig.append(name in _SETTINGS.get("mask_expected", set()))
    return sig


def _check_many(names: Sequence[str]) -> list[tuple[str, list[str]]]:
    return [(name, check_one(name)) for name in names]


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _run_checks(names: list[str], workers: int, progress: bool) -> dict[str, list[str]]:
    from tqdm import tqdm

    results: dict[str, list[str]] = {}
    bar = tqdm(total=len(names), desc="data check", unit="img", disable=not progress,
               file=sys.stderr, leave=False)  # fmt: skip
    chunk = max(1, min(64, len(names) // (workers * 8) or 1))
    chunks = [names[i : i + chunk] for i in range(0, len(names), chunk)]
    use_pool = (
        workers > 1
        and len(names) >= _SERIAL_BELOW
        and "fork" in multiprocessing.get_all_start_methods()
    )
    try:
        if use_pool:
            with ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("fork")
            ) as pool:
                for part in pool.map(_check_many, chunks):
                    results.update(part)
                    bar.update(len(part))
        else:
            for part in map(_check_many, chunks):
                results.update(part)
                bar.update(len(part))
    finally:
        bar.close()
    return results


def _decode_one(path: str) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()  # the whole file, not only the header
    except (OSError, SyntaxError, ValueError) as err:
        return f"cannot decode image {path}: {err}"
    return None


def decode_problems(paths: Sequence[str | os.PathLike], workers: int | None = None) -> list[str]:
    """'cannot decode image <file>: ...' for every image file of ``paths`` that does not decode
    completely (truncated, empty, not an image), checked in parallel worker processes."""
    files = [str(p) for p in paths]
    workers = workers or available_cores()
    if workers > 1 and len(files) >= _SERIAL_BELOW:
        with ProcessPoolExecutor(workers) as pool:
            found = list(pool.map(_decode_one, files, chunksize=32))
    else:
        found = [_decode_one(f) for f in files]
    return [p for p in found if p]


# --------------------------------------------------------------------------- the cache
def _cache_file(cfg: DictConfig, root: Path, run_dir: Path | None, mask_dirs: Sequence[str | None],
                class_names: Sequence[str]) -> Path | None:  # fmt: skip
    """One cache per dataset root and everything that changes a verdict besides the files."""
    check = cfg.data.get("check") or {}
    key = json.dumps([CACHE_VERSION, str(root.resolve()), str(cfg.data.source.get("_target_")),
                      [str(m) for m in mask_dirs], _SETTINGS.get("saliency_dir"), list(class_names)])  # fmt: skip
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    candidates = [Path(str(check.get("cache_dir"))).expanduser()] if check.get("cache_dir") else []
    candidates.append(Path(base) / "wsss" / "data_check")
    if run_dir is not None:
        candidates.append(Path(run_dir) / CHECK_DIR)
    for directory in candidates:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if os.access(directory, os.W_OK):
                return directory / f"{digest}.json"
        except OSError:
            continue
    return None


def _read_cache(path: Path | None) -> dict[str, Any]:
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # a damaged cache is only a cache
    return data.get("entries", {}) if data.get("version") == CACHE_VERSION else {}


def _write_cache(path: Path | None, entries: dict[str, Any]) -> None:
    if path is None:
        return
    from wsss.io import write_json

    try:
        write_json(path, {"version": CACHE_VERSION, "entries": entries})
    except OSError as err:
        log.warning("data check: cannot write the cache %s (%s)", path, err)


# --------------------------------------------------------------------------- the check
def check_data(cfg: DictConfig, root: str | os.PathLike | None = None, run_dir: str | os.PathLike | None = None,
               *, workers: int | None = None, progress: bool | None = None,
               use_cache: bool = True) -> DataReport:  # fmt: skip
    """Check the data ``cfg`` would train on (see the module docstring); never raises for data
    problems, returns them in a :class:`DataReport`."""
    if root is None and cfg.data.get("root") is not None:
        root = Path(str(cfg.data.root)).expanduser()  # validate_config checked that it exists
    elif root is None:  # the synthetic tree, generated on first use
        from wsss.pipeline.context import resolve_data_root

        root = resolve_data_root(cfg)
    root = Path(root)
    data = cfg.data
    report = DataReport(root=root)
    start = time.perf_counter()
    spec, split_map = data.get("source"), data.get("splits")
    if OmegaConf.is_config(spec):
        spec = OmegaConf.to_container(spec, resolve=True)
        spec.pop("exclude", None)  # check everything, also what an earlier check excluded
    mask_dirs: list[str | None] = list(dict.fromkeys(
        [data.module.get("mask_dir"), data.get("eval_mask_dir")]))  # fmt: skip

    def problem(text: str) -> None:
        report.problems.append(text)
        report.global_problems.append(text)

    # splits: open, non-empty, same classes
    ids: dict[str, None] = {}
    expected_masks: set[str] = set()
    scored = {dataset_split(split_map, s) for s in _scored_splits(cfg)}
    class_names: tuple[str, ...] | None = None
    first_split, first_src = None, None
    for generic in pipeline_splits(cfg):
        split = dataset_split(split_map, generic)
        if split in report.splits:
            continue
        try:
            src = open_source(
                spec, root, generic, splits=split_map, mask_dir=mask_dirs[0], check_images=False
            )
        except (OSError, ValueError, KeyError) as err:
            problem(f"split {split!r}: {err}")
            continue
        report.splits[split] = len(src.ids)
        if not src.ids:
            problem(f"split {split!r} of {src!r} is empty")
            continue
        if class_names is None:
            class_names, first_split, first_src = tuple(src.class_names), split, src
            if int(data.num_classes) != len(class_names):
                problem(
                    f"data.num_classes={data.num_classes} but {src!r} has {len(class_names)} classes "
                    f"({', '.join(class_names[:5])}, ...); set data.num_classes={len(class_names)}"
                )
        elif tuple(src.class_names) != class_names:
            problem(
                f"split {split!r} has other class names than split {first_split!r}: "
                f"{list(src.class_names)[:5]}... vs {list(class_names)[:5]}..."
            )
        if split in scored and str((spec or {}).get("_target_")) not in MASK_OPTIONAL:
            with_mask = [n for n in src.ids if src.has_mask(n)]
            if with_mask and len(with_mask) < len(src.ids):
                expected_masks.update(src.ids)
        ids.update(dict.fromkeys(src.ids))
    if not ids:
        report.seconds = time.perf_counter() - start
        return report

    # readers for the per-image work (one per mask folder), shared with forked workers
    _READERS.clear()
    _SETTINGS.clear()
    first = dataset_split(split_map, pipeline_splits(cfg)[0])
    for mask_dir in mask_dirs:  # a reader reads any id of the dataset, not only its split's
        if mask_dir == mask_dirs[0] and first_src is not None:
            _READERS[mask_dir] = first_src  # (COCO: its annotation files are parsed already)
            continue
        try:
            _READERS[mask_dir] = open_source(spec, root, first_split or first, splits=None,
                                             mask_dir=mask_dir, check_images=False)  # fmt: skip
        except (OSError, ValueError) as err:
            problem(f"mask folder {mask_dir!r}: {err}")
    if not _READERS:
        report.seconds = time.perf_counter() - start
        return report
    _SETTINGS["mask_expected"] = expected_masks
    need = saliency_requirement(cfg)
    if need is not None:
        directory, key = need
        found = resolve_dir(root, directory)
        if found is None:
            tried = (
                directory
                if Path(directory).is_absolute()
                else f"{directory} and {root / directory}"
            )
            problem(
                f"{key}={directory}: saliency folder not found (tried {tried}); the method needs "
                f"<id>.png saliency maps: make them with `python -m wsss.data.saliency --root "
                f"{root} --out DIR` and pass {key}=DIR"
            )
        else:
            _SETTINGS["saliency_dir"], _SETTINGS["saliency_key"] = str(found), key

    # per image, cached by file size + mtime
    names = list(ids)
    report.num_images = len(names)
    report.cache_file = (
        _cache_file(cfg, root, Path(run_dir) if run_dir else None, mask_dirs, class_names or ())
        if use_cache
        else None
    )
    cache = _read_cache(report.cache_file)
    signatures = {name: _signature(name) for name in names}
    results: dict[str, list[str]] = {}
    todo = []
    for name in names:
        entry = cache.get(name)
        if entry is not None and entry.get("sig") == signatures[name]:
            results[name] = list(entry.get("problems", []))
        else:
            todo.append(name)
    report.num_cached = len(names) - len(todo)
    check = data.get("check") or {}
    workers = workers or check.get("workers") or available_cores()
    if progress is None:
        progress = sys.stderr.isatty()
    try:
        results.update(_run_checks(todo, int(workers), progress))
    finally:
        _READERS.clear()  # a COCO reader holds the parsed annotations
    if todo:
        entries = {**cache, **{n: {"sig": signatures[n], "problems": results[n]} for n in todo}}
        _write_cache(report.cache_file, entries)
    for name in names:
        if results[name]:
            report.bad_ids[name] = results[name]
            report.problems.extend(results[name])
    report.seconds = time.perf_counter() - start
    return report


def format_problems(report: DataReport, limit: int = 30) -> str:
    lines = report.problems[:limit]
    more = (
        f"\n  ... and {len(report.problems) - limit} more" if len(report.problems) > limit else ""
    )
    return "\n  ".join(lines) + more


def write_report(report: DataReport, out_dir: Path) -> tuple[Path, Path]:
    """``skipped.txt`` (bad ids) and ``problems.txt`` (every problem) under ``out_dir``."""
    from wsss.io import atomic_path

    out_dir.mkdir(parents=True, exist_ok=True)
    skipped, problems = out_dir / SKIPPED_FILE, out_dir / PROBLEMS_FILE
    with atomic_path(skipped) as tmp:
        tmp.write_text("".join(f"{name}\n" for name in report.bad_ids))
    with atomic_path(problems) as tmp:
        tmp.write_text("".join(f"{p}\n" for p in report.problems))
    return skipped, problems


def preflight_data(cfg: DictConfig, run_dir: str | os.PathLike) -> DataReport | None:
    """The check as ``train.py`` runs it before any stage (``data.check``): raises
    :class:`DataCheckError` on problems (``on_error=stop``), or with ``on_error=skip`` records
    the bad images under ``<run_dir>/data_check/`` and excludes them through
    ``data.source.exclude``."""
    check = cfg.data.get("check") or {}
    if not check.get("enabled", True):
        return None
    run_dir = Path(run_dir)
    report = check_data(cfg, run_dir=run_dir)
    log.info(report.summary())
    if report.ok:
        return report
    on_error = str(check.get("on_error", "stop"))
    if on_error == "skip" and not report.global_problems:
        skipped, problems = write_report(report, run_dir / CHECK_DIR)
        with open_dict(cfg):
            cfg.data.source.exclude = str(skipped)
        log.warning("data check: %d image(s) with problems are left out of every split (listed in %s, "
                    "problems in %s):\n  %s", len(report.bad_ids), skipped, problems,
                    format_problems(report, 10))  # fmt: skip
        return report
    hint = (
        " Fix them, or pass data.check.on_error=skip to leave the bad images out."
        if not report.global_problems
        else ""
    )
    raise DataCheckError(
        f"{report.summary()}; nothing was trained:\n  {format_problems(report)}\n{hint}"
    )


# --------------------------------------------------------------------------- the command
def compose(overrides: Iterable[str]) -> DictConfig:
    """``conf/train.yaml`` composed with ``overrides`` (as ``python train.py OVERRIDES``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from wsss.conf import register_resolvers

    register_resolvers()
    conf_dir = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m wsss.data.check [key=value ...]``; exit code 1 when a problem is found."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    from wsss.pipeline.validate import ConfigError, validate_config

    cfg = compose(args)
    try:
        validate_config(cfg)
        report = check_data(cfg, progress=None)
    except (ConfigError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for warning in report.warnings:
        print(f"warning: {warning}")
    for text in report.problems:
        print(f"problem: {text}")
    print(report.summary())
    if report.cache_file is not None:
        print(f"cache: {report.cache_file}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
