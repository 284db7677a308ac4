"""Tiny synthetic datasets in each benchmark's real on-disk layout (mmseg's standard layout).

``make_benchmark(name, root)`` (or ``make_<name>(root)``) writes under ``root``, which plays the
role of ``data/``, and returns the data root for ``test_dataloader.dataset.data_root``. Label
maps use each benchmark's raw on-disk encoding, so the dataset classes' own conventions
(``reduce_zero_label``, 255 = ignore) are what turns them into training ids:

- voc21, voc20: ``VOCdevkit/VOC2012``; palette PNGs, 0..20 (0 = background), 255 borders;
  split ``ImageSets/Segmentation/val.txt``.
- context60, context59: ``VOCdevkit/VOC2010``; 0..59 (0 = background), as mmseg's
  ``pascal_context.py`` converter writes; split ``ImageSets/SegmentationContext/val.txt``.
- coco_stuff164k: ``coco_stuff164k``; ``images/val2017/<id>.jpg``,
  ``annotations/val2017/<id>_labelTrainIds.png`` with 0..170 and 255.
- coco_object: same folder, ``<id>_instanceTrainIds.png`` with 0..80 (0 = background).
- cityscapes: ``cityscapes``; ``leftImg8bit/val/<city>/*_leftImg8bit.png``,
  ``gtFine/val/<city>/*_gtFine_labelTrainIds.png`` with 0..18 and 255.
- ade20k: ``ade/ADEChallengeData2016``; ``images/validation/*.jpg``,
  ``annotations/validation/*.png`` with 0..150 (0 = "other", ignored).

Every dataset also holds one training image (listed in ``train.txt`` or stored in the training
folder) that evaluation must not pick up. Labels are 8x8 blocks of random classes; image 0
always contains the raw values 0, 1 and the highest one, so a convention that shifts or drops
labels shows up.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

Size = Tuple[int, int]
# Landscape, portrait (written grayscale), and one smaller than every slide crop.
DEFAULT_SIZES: Tuple[Size, ...] = ((48, 64), (64, 40), (30, 30))
GRAYSCALE_INDEX = 1
IGNORE = 255
_BLOCK = 8


@dataclass(frozen=True)
class Layout:
    """Where and how one benchmark stores its validation split."""
    subdir: str  # data root, relative to ``root``
    img_dir: str
    seg_dir: str
    img_suffix: str
    seg_suffix: str
    num_values: int  # raw label values 0..num_values-1 (besides 255)
    has_ignore: bool  # whether maps contain 255 pixels
    name: Callable[[int], str]  # image i -> path below img_dir without suffix
    split_file: Optional[str] = None  # val ids; without it every image of img_dir counts
    train_dirs: Optional[Tuple[str, str]] = None  # folders of the decoy training image
    palette_png: bool = False


def _voc_palette() -> list:
    """The PASCAL VOC colour map (index 255 included), as in the official devkit."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


_VOC = dict(subdir='VOCdevkit/VOC2012', img_dir='JPEGImages', seg_dir='SegmentationClass',
            img_suffix='.jpg', seg_suffix='.png', num_values=21, has_ignore=True,
            name=lambda i: f'2007_{i:06d}', split_file='ImageSets/Segmentation/val.txt',
            palette_png=True)
_CONTEXT = dict(subdir='VOCdevkit/VOC2010', img_dir='JPEGImages',
                seg_dir='SegmentationClassContext', img_suffix='.jpg', seg_suffix='.png',
                num_values=60, has_ignore=False, name=lambda i: f'2008_{i:06d}',
                split_file='ImageSets/SegmentationContext/val.txt')
_COCO = dict(subdir='coco_stuff164k', img_dir='images/val2017', seg_dir='annotations/val2017',
             img_suffix='.jpg', name=lambda i: f'{i + 139:012d}',
             train_dirs=('images/train2017', 'annotations/train2017'))

LAYOUTS: Dict[str, Layout] = {
    'voc21': Layout(**_VOC),
    'voc20': Layout(**_VOC),
    'context60': Layout(**_CONTEXT),
    'context59': Layout(**_CONTEXT),
    'coco_object': Layout(**_COCO, seg_suffix='_instanceTrainIds.png', num_values=81,
                          has_ignore=False),
    'coco_stuff164k': Layout(**_COCO, seg_suffix='_labelTrainIds.png', num_values=171,
                             has_ignore=True),
    'cityscapes': Layout(
        subdir='cityscapes', img_dir='leftImg8bit/val', seg_dir='gtFine/val',
        img_suffix='_leftImg8bit.png', seg_suffix='_gtFine_labelTrainIds.png', num_values=19,
        has_ignore=True, name=lambda i: '{0}/{0}_000000_{1:06d}'.format(
            ('frankfurt', 'lindau', 'munster')[i % 3], i),
        train_dirs=('leftImg8bit/train', 'gtFine/train')),
    'ade20k': Layout(
        subdir='ade/ADEChallengeData2016', img_dir='images/validation',
        seg_dir='annotations/validation', img_suffix='.jpg', seg_suffix='.png', num_values=151,
        has_ignore=False, name=lambda i: f'ADE_val_{i + 1:08d}',
        train_dirs=('images/training', 'annotations/training')),
}
BENCHMARKS = tuple(LAYOUTS)


def random_label_map(size: Size, num_values: int, rng: np.random.Generator,
                     has_ignore: bool) -> np.ndarray:
    """8x8 blocks of random raw labels; a one-pixel 255 line across the middle (like VOC's
    object borders) where the benchmark has ignore pixels."""
    h, w = size
    blocks = rng.integers(0, num_values, size=(-(-h // _BLOCK), -(-w // _BLOCK)))
    label = np.kron(blocks, np.ones((_BLOCK, _BLOCK), dtype=np.int64))[:h, :w].astype(np.uint8)
    if has_ignore and h > 2:
        label[h // 2] = IGNORE
    return label


def _plant_extremes(label: np.ndarray, num_values: int) -> None:
    """Raw 0, 1 and the highest value: after ``reduce_zero_label`` 1 and the highest value are
    still the first and last class."""
    label[:_BLOCK, :_BLOCK] = 0
    label[:_BLOCK, _BLOCK:2 * _BLOCK] = 1
    label[-_BLOCK:, -_BLOCK:] = num_values - 1


def _write_image(path: Path, size: Size, rng: np.random.Generator, gray: bool) -> None:
    shape = size if gray else (*size, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)).save(path)


def _write_label(path: Path, label: np.ndarray, palette_png: bool) -> None:
    image = Image.fromarray(label.astype(np.uint8))
    if palette_png:
        image.putpalette(_voc_palette())  # L -> P, as VOC's SegmentationClass PNGs
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def make_benchmark(name: str,
                   root: Path,
                   sizes: Sequence[Size] = DEFAULT_SIZES,
                   num_classes: Optional[int] = None,
                   seed: int = 0,
                   labels: Optional[Sequence[np.ndarray]] = None,
                   grayscale: Sequence[int] = (GRAYSCALE_INDEX, )) -> Path:
    """Write a tiny validation split of benchmark ``name`` under ``root``; return its data root.

    Args:
        sizes: (h, w) of each validation image.
        num_classes: use only raw label values 0..num_classes-1 (default: all of them).
        labels: raw label maps (on-disk encoding) to write instead of random ones; their shapes
            give the image sizes and ``sizes`` is ignored.
        grayscale: indices of the images written as single-channel files.
    """
    layout = LAYOUTS[name]
    rng = np.random.default_rng(seed)
    num_values = num_classes or layout.num_values
    if labels is None:
        labels = [random_label_map(s, num_values, rng, layout.has_ignore) for s in sizes]
        _plant_extremes(labels[0], num_values)
    data_root = Path(root) / layout.subdir
    val_names = [layout.name(i) for i in range(len(labels))]
    for index, (stem, label) in enumerate(zip(val_names, labels)):
        _write_pair(data_root, layout.img_dir, layout.seg_dir, stem, label, layout, rng,
                    gray=index in grayscale)
    _write_decoy(data_root, layout, rng, num_values)
    if layout.split_file:
        _write_split(data_root / layout.split_file, val_names)
    return data_root


def _write_pair(data_root: Path, img_dir: str, seg_dir: str, stem: str, label: np.ndarray,
                layout: Layout, rng: np.random.Generator, gray: bool = False) -> None:
    _write_image(data_root / img_dir / (stem + layout.img_suffix), label.shape, rng, gray)
    _write_label(data_root / seg_dir / (stem + layout.seg_suffix), label, layout.palette_png)


def _write_decoy(data_root: Path, layout: Layout, rng: np.random.Generator,
                 num_values: int) -> None:
    """One training image that a correct validation config must not load."""
    label = random_label_map((16, 24), num_values, rng, layout.has_ignore)
    stem = layout.name(999)
    if layout.split_file:
        _write_pair(data_root, layout.img_dir, layout.seg_dir, stem, label, layout, rng)
        _write_split(data_root / Path(layout.split_file).with_name('train.txt'), [stem])
    else:
        _write_pair(data_root, *layout.train_dirs, stem, label, layout, rng)


def _write_split(path: Path, names: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(f'{n}\n' for n in names))


def _maker(name: str) -> Callable[..., Path]:
    def make(root: Path, sizes: Sequence[Size] = DEFAULT_SIZES, num_classes: Optional[int] = None,
             seed: int = 0, **kwargs) -> Path:
        return make_benchmark(name, root, sizes, num_classes, seed, **kwargs)

    make.__name__ = f'make_{name}'
    make.__doc__ = f'``make_benchmark({name!r}, ...)``.'
    return make


make_voc21 = _maker('voc21')
make_voc20 = _maker('voc20')
make_context60 = _maker('context60')
make_context59 = _maker('context59')
make_coco_object = _maker('coco_object')
make_coco_stuff164k = _maker('coco_stuff164k')
make_cityscapes = _maker('cityscapes')
make_ade20k = _maker('ade20k')
