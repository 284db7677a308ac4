"""Checks of a test dataset that turn data mistakes into one clear error naming the file.

Before the run (no image is read): the image folder exists, the split file exists and lists
something, and every image and annotation the split (or the folder) names is on disk. During the
run, :class:`ExplainedPipeline` names the file when one cannot be decoded; annotation size and
values are checked per image by the metric (:class:`~fsa_seg.evaluation.PerClassIoUMetric`).
"""
import os.path as osp
from typing import Optional, Sequence

from mmengine.registry import init_default_scope
from mmseg.registry import DATASETS

DATA_README = 'data/README.md'
SHOWN = 3  # missing files named in an error; the rest are counted


class DatasetError(RuntimeError):
    """A test dataset that is missing, empty, incomplete or unreadable."""


def _join(root: Optional[str], path: Optional[str]) -> str:
    return osp.join(root or '', path or '')


def _listed(paths: Sequence[str]) -> str:
    shown = ', '.join(paths[:SHOWN])
    return shown + (f' and {len(paths) - SHOWN} more' if len(paths) > SHOWN else '')


HINT = (f'prepare it as {DATA_README} describes, or point the config at it with '
        '--cfg-options test_dataloader.dataset.data_root=/path/to/dataset')


def check_layout(dataset_cfg: dict) -> None:
    """The image folder exists; a split file, if the config names one, exists and lists
    images."""
    name = dataset_cfg.get('type', 'dataset')
    root = dataset_cfg.get('data_root')
    image_dir = _join(root, dataset_cfg.get('data_prefix', {}).get('img_path'))
    if not osp.isdir(image_dir):
        raise DatasetError(f'{name}: image folder {osp.abspath(image_dir)} not found; '
                           + HINT)
    ann_file = dataset_cfg.get('ann_file') or ''
    if not ann_file:
        return
    split = ann_file if osp.isabs(ann_file) else _join(root, ann_file)
    if osp.isdir(split):
        return  # mmseg then lists the image folder
    if not osp.isfile(split):
        raise DatasetError(f'{name}: split file {osp.abspath(split)} not found; '
                           + HINT)
    with open(split, encoding='utf-8') as handle:
        if not any(line.strip() for line in handle):
            raise DatasetError(f'{name}: split file {osp.abspath(split)} lists no images')


def build_lazily(dataset_cfg: dict, default_scope: str = 'mmseg'):
    """The dataset, its samples not listed yet (no file is read)."""
    init_default_scope(default_scope)
    return DATASETS.build(dict(dataset_cfg, lazy_init=True))


def check_files(dataset) -> int:
    """The dataset lists some samples, and every image and annotation they name exists (paths
    only, no image is read). Returns the number of samples."""
    name = type(dataset).__name__
    samples = dataset.load_data_list()
    if not samples:
        suffix = getattr(dataset, 'img_suffix', '')
        raise DatasetError(f'{name}: no images{f" (*{suffix})" if suffix else ""} in '
                           f'{osp.abspath(dataset.data_prefix.get("img_path", ""))}; ' + HINT)
    for key, what in (('img_path', 'images'), ('seg_map_path', 'annotations')):
        missing = [s[key] for s in samples if s.get(key) and not osp.isfile(s[key])]
        if missing:
            raise DatasetError(f'{name}: {len(missing)} of the {len(samples)} {what} to '
                               f'evaluate are missing: {_listed(missing)}; ' + HINT)
    return len(samples)


def _unreadable(path: Optional[str]) -> Optional[str]:
    """Why an image file cannot be decoded, or None if it can."""
    if not path:
        return None
    from PIL import Image
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return f'{type(error).__name__}: {error}'
    return None


class ExplainedPipeline:
    """A dataset's pipeline that, when a sample fails to load, says which file is at fault.

    The failure is examined only after it happened (no extra pass over the data): a file that
    cannot be decoded becomes a :class:`DatasetError` naming it; anything else is re-raised."""

    def __init__(self, pipeline):
        self.pipeline = pipeline

    def __call__(self, results: dict):
        try:
            return self.pipeline(results)
        except Exception:
            for key in ('img_path', 'seg_map_path'):
                reason = _unreadable(results.get(key))
                if reason:
                    raise DatasetError(f'{results[key]}: cannot read this file ({reason}); '
                                       'replace or re-extract it') from None
            raise

    def __repr__(self) -> str:
        return repr(self.pipeline)
