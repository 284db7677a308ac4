"""COCO-Object label maps from COCO-Stuff164k's raw label maps.

The raw maps (``stuffthingmaps_trainval2017.zip``, unpacked as ``annotations/<split>/<id>.png``)
hold the COCO category id minus one: things 0..89 (80 ids in use), stuff 91..181, and 255 for
unlabeled pixels. COCO-Object keeps the 80 things as 1..80 in COCO category order and merges
every stuff class into background 0.

Unlabeled pixels stay 255 (ignored) by default, as our protocol specifies. GroupViT's converter,
whose output the published COCO-Object numbers (GroupViT, TCL, SCLIP, ProxyCLIP, FSA) used,
makes them background instead: ``ignore_to_background=True`` reproduces that.
"""
import os
from pathlib import Path
from typing import Dict, Iterable, Union

import numpy as np
from PIL import Image
from tqdm import tqdm

IGNORE_INDEX = 255
# COCO category ids 1..90 that have no annotations in COCO 2014/2017.
_UNUSED_THING_IDS = frozenset({12, 26, 29, 30, 45, 66, 68, 69, 71, 83})
_STUFF_RAW = range(91, 182)  # raw values of the 91 stuff classes (category ids 92..182)
_OUTPUT_SUFFIX = '_instanceTrainIds.png'


def coco_object_lut(ignore_to_background: bool = False) -> np.ndarray:
    """Lookup table raw COCO-Stuff value -> COCO-Object label; -1 marks values that never occur
    in COCO-Stuff (unused category ids), which the conversion rejects."""
    lut = np.full(256, -1, dtype=np.int16)
    thing_raw = [cat_id - 1 for cat_id in range(1, 91) if cat_id not in _UNUSED_THING_IDS]
    lut[thing_raw] = np.arange(1, len(thing_raw) + 1)
    lut[list(_STUFF_RAW)] = 0
    lut[IGNORE_INDEX] = 0 if ignore_to_background else IGNORE_INDEX
    return lut


def convert_label_map(raw: np.ndarray, lut: np.ndarray, source: str = 'label map') -> np.ndarray:
    """Map one raw COCO-Stuff label map through ``lut``; unexpected values raise ValueError."""
    if raw.ndim != 2:
        raise ValueError(f'{source}: expected a single-channel label map, got shape {raw.shape}')
    values = np.unique(raw)
    bad = [int(v) for v in values if not 0 <= v <= 255 or lut[int(v)] < 0]
    if bad:
        raise ValueError(f'{source}: unexpected label value(s) {bad}; raw COCO-Stuff maps hold '
                         'category id - 1 (things 0..89, stuff 91..181) and 255 (unlabeled)')
    return lut[raw].astype(np.uint8)


def _raw_label_maps(ann_dir: Path) -> list:
    """Raw maps only: converters write ``*_labelTrainIds.png`` / ``*_instanceTrainIds.png`` into
    the same folder."""
    if not ann_dir.is_dir():
        raise FileNotFoundError(f'COCO-Stuff annotation folder not found: {ann_dir}')
    files = sorted(p for p in ann_dir.glob('*.png') if not p.stem.endswith('TrainIds'))
    if not files:
        raise FileNotFoundError(f'no raw COCO-Stuff label maps (<image id>.png) in {ann_dir}')
    return files


def _is_up_to_date(target: Path, source: Path) -> bool:
    return target.is_file() and target.stat().st_mtime >= source.stat().st_mtime


def _save_png(array: np.ndarray, target: Path) -> None:
    """Write through a temporary file so an interrupted run never leaves a truncated map that
    a later run would take as up to date."""
    tmp = target.with_name(target.name + '.tmp')
    Image.fromarray(array).save(tmp, format='PNG')
    os.replace(tmp, target)


def convert_coco_object(coco_stuff_root: Union[str, os.PathLike],
                        splits: Iterable[str] = ('val2017', ),
                        ignore_to_background: bool = False,
                        force: bool = False,
                        progress: bool = True) -> Dict[str, int]:
    """Write ``annotations/<split>/<id>_instanceTrainIds.png`` next to each raw map.

    Idempotent: a map whose output exists and is newer than its source is skipped unless
    ``force`` (needed after changing ``ignore_to_background``). Returns the number of maps
    ``written`` and ``skipped``.
    """
    root = Path(coco_stuff_root)
    lut = coco_object_lut(ignore_to_background)
    counts = dict(written=0, skipped=0)
    for split in splits:
        sources = _raw_label_maps(root / 'annotations' / split)
        for source in tqdm(sources, desc=f'COCO-Object {split}', disable=not progress):
            target = source.with_name(source.stem + _OUTPUT_SUFFIX)
            if not force and _is_up_to_date(target, source):
                counts['skipped'] += 1
                continue
            with Image.open(source) as image:
                raw = np.asarray(image)
            _save_png(convert_label_map(raw, lut, str(source)), target)
            counts['written'] += 1
    return counts
