"""Checks of a test dataset that turn data mistakes into one clear error naming the file.

Before the run (no image is read): the image folder exists, the split file exists, is text and
lists something, each of its lines names one image and no two the same, the config's
``indices`` select some of those images, each once, and every image and annotation to evaluate
is on disk. During the run, :class:`ExplainedPipeline` names the file when one cannot be
decoded; annotation size and values are checked per image by the metric
(:class:`~fsa_seg.evaluation.PerClassIoUMetric`).
"""
import os.path as osp
from collections import Counter
from typing import List, NamedTuple, Optional, Sequence

from mmengine import list_from_file
from mmengine.registry import init_default_scope
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

DATA_README = 'data/README.md'
SHOWN = 3  # missing files named in an error; the rest are counted


class DatasetError(RuntimeError):
    """A test dataset that is missing, empty, incomplete or unreadable."""


def _join(root: Optional[str], path: Optional[str]) -> str:
    return osp.join(root or '', path or '')


def _listed(items: Sequence) -> str:
    shown = ', '.join(str(item) for item in items[:SHOWN])
    return shown + (f' and {len(items) - SHOWN} more' if len(items) > SHOWN else '')


class SplitCount(NamedTuple):
    """How many images a test dataset lists, and how many of them a run evaluates."""
    listed: int  # the names of its split file (or the images of its folder)
    evaluated: int  # those its ``indices`` select (all without)


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
    try:
        with open(split, encoding='utf-8') as handle:
            if not any(line.strip() for line in handle):
                raise DatasetError(f'{name}: split file {osp.abspath(split)} lists no images')
    except UnicodeDecodeError as error:  # mmseg reads it as UTF-8 text, a name per line
        raise DatasetError(f'{name}: split file {osp.abspath(split)} is not a text file '
                           f'(UTF-8: {error.reason} at byte {error.start}); ' + HINT) from None


def build_lazily(dataset_cfg: dict, default_scope: str = 'mmseg'):
    """The dataset, its samples not listed yet (no file is read)."""
    init_default_scope(default_scope)
    return DATASETS.build(dict(dataset_cfg, lazy_init=True))


def selected_positions(indices, length: int) -> List[int]:
    """The positions, among ``length`` samples, that mmengine's ``indices`` select, as its
    BaseDataset slices them: all for None; for a count n the first n (the last -n if negative);
    for a list, its positions (negative ones from the end). A ValueError, rather than mmengine's
    IndexError during the run, if a position lies outside the samples, if one is selected twice
    (its image would count twice) or if none is."""
    positions = list(range(length))
    if indices is None:
        return positions
    if _is_int(indices):
        chosen = positions[:indices] if indices >= 0 else positions[indices:]
    elif isinstance(indices, Sequence) and not isinstance(indices, str) and all(
            _is_int(i) for i in indices):
        outside = [i for i in indices if not -length <= i < length]
        if outside:
            raise ValueError(f'indices: {_listed(outside)} outside the {length} images listed '
                             f'(positions 0..{length - 1}, or -{length}..-1 from the end)')
        chosen = [positions[i] for i in indices]
        twice = sorted(p for p, times in Counter(chosen).items() if times > 1)
        if twice:
            raise ValueError(f'indices: position {_listed(twice)} selected more than once, so '
                             'an image would count twice; select each image once')
    else:
        raise ValueError(f'indices: give a count or a list of positions, not {indices!r}')
    if not chosen:
        raise ValueError(f'indices: {indices!r} selects none of the {length} images listed')
    return chosen


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_split_lines(dataset) -> None:
    """Each line of the split file names one image, and no two the same. Only for datasets that
    read their split as mmseg's BaseSegDataset does, a name per line (stripped): it reads a
    blank line as an image named '' (the newline ending the last line makes none, but any
    blank line after it does) and evaluates a name listed twice twice."""
    split = getattr(dataset, 'ann_file', None)
    if (getattr(type(dataset), 'load_data_list', None) is not BaseSegDataset.load_data_list
            or not split or not osp.isfile(split)):
        return
    names = [line.strip() for line in list_from_file(
        split, backend_args=getattr(dataset, 'backend_args', None))]
    where = f'{type(dataset).__name__}: split file {osp.abspath(split)}'
    blank = [number for number, name in enumerate(names, 1) if not name]
    if blank:
        lines = f'line {blank[0]} is' if len(blank) == 1 else f'lines {_listed(blank)} are'
        raise DatasetError(f'{where}: {lines} blank, which mmseg reads as an image named \'\' '
                           '(only the newline ending the last name is harmless); remove them')
    first_line = {}
    repeats = []
    for number, name in enumerate(names, 1):
        if name in first_line:
            repeats.append(f'line {number} repeats {name} of line {first_line[name]}')
        first_line.setdefault(name, number)
    if repeats:
        raise DatasetError(f'{where}: {_listed(repeats)}, so an image would count more than '
                           'once; list each image once')


def check_files(dataset, indices=None) -> SplitCount:
    """The split file is well formed (:func:`check_split_lines`), the dataset lists some samples,
    ``indices`` (the dataset config's, see :func:`selected_positions`) select some of them, and
    every image and annotation of those exists (paths only, no image is read).

    The count of evaluated images is the one to compare with the official split's:
    ``load_data_list`` lists the samples before mmengine applies ``indices``."""
    name = type(dataset).__name__
    check_split_lines(dataset)
    samples = dataset.load_data_list()
    if not samples:
        suffix = getattr(dataset, 'img_suffix', '')
        raise DatasetError(f'{name}: no images{f" (*{suffix})" if suffix else ""} in '
                           f'{osp.abspath(dataset.data_prefix.get("img_path", ""))}; ' + HINT)
    evaluated = [samples[p] for p in selected_positions(indices, len(samples))]
    for key, what in (('img_path', 'images'), ('seg_map_path', 'annotations')):
        missing = [s[key] for s in evaluated if s.get(key) and not osp.isfile(s[key])]
        if missing:
            raise DatasetError(f'{name}: {len(missing)} of the {len(evaluated)} {what} to '
                               f'evaluate are missing: {_listed(missing)}; ' + HINT)
    return SplitCount(listed=len(samples), evaluated=len(evaluated))


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
