"""The checks of a test dataset before the run (fsa_seg/datasets/checks.py): its split file, the
images its ``indices`` select, and the files of those images."""
import re
from pathlib import Path

import pytest
from mmengine import Config
from mmseg.datasets import BaseSegDataset

from fsa_seg.datasets import (
    DatasetError,
    SplitCount,
    build_lazily,
    check_files,
    check_layout,
    check_split_lines,
    selected_positions,
)

from synthetic_data import make_voc21

DATASET_CONFIGS = Path(__file__).resolve().parents[2] / 'configs' / '_base_' / 'datasets'
SPLIT = 'ImageSets/Segmentation/val.txt'
NAMES = ['2007_000000', '2007_000001', '2007_000002']  # the three images make_voc21 writes


@pytest.fixture
def voc(tmp_path):
    """The data root of a three-image VOC21 split, and its dataset config."""
    root = make_voc21(tmp_path)
    dataset_cfg = Config.fromfile(DATASET_CONFIGS / 'voc21.py').test_dataloader.dataset
    dataset_cfg.data_root = str(root)
    return root, dataset_cfg


def write_split(root: Path, text: str) -> str:
    (root / SPLIT).write_text(text, newline='')  # '\r\n' written as given
    return re.escape(str(root / SPLIT))


# ---------------------------------------------------------------------------------- split lines
def test_the_newline_ending_the_last_name_and_windows_line_ends_are_fine(voc):
    root, dataset_cfg = voc
    assert (root / SPLIT).read_text() == '2007_000000\n2007_000001\n2007_000002\n'
    assert check_files(build_lazily(dataset_cfg)) == SplitCount(listed=3, evaluated=3)
    write_split(root, '2007_000000\r\n2007_000001\r\n 2007_000002 \r\n')
    assert check_files(build_lazily(dataset_cfg)) == SplitCount(listed=3, evaluated=3)


def test_mmseg_reads_a_blank_line_after_the_last_newline_as_an_image_named_nothing(voc):
    """Why a blank line at the end is refused too: mmseg does not skip it."""
    root, dataset_cfg = voc
    write_split(root, '2007_000000\n2007_000001\n2007_000002\n\n')
    samples = build_lazily(dataset_cfg).load_data_list()
    assert len(samples) == 4 and samples[3]['img_path'] == str(root / 'JPEGImages' / '.jpg')


@pytest.mark.parametrize('text, lines', [
    ('2007_000000\n\n2007_000001\n2007_000002\n', 'line 2 is'),
    ('2007_000000\n2007_000001\n2007_000002\n\n', 'line 4 is'),  # after the final newline
    ('2007_000000\n \t\n2007_000001\n2007_000002\n', 'line 2 is'),  # blank once stripped
    ('\n2007_000000\n\n2007_000001\n2007_000002\n\n\n', 'lines 1, 3, 6 and 1 more are'),
])
def test_a_blank_line_is_refused_naming_the_split_file_and_its_line(voc, text, lines):
    root, dataset_cfg = voc
    split = write_split(root, text)
    with pytest.raises(DatasetError, match=rf"^PascalVOCDataset: split file {split}: {lines} "
                                           r"blank, which mmseg reads as an image named ''"):
        check_files(build_lazily(dataset_cfg))


def test_a_repeated_name_is_refused_naming_its_lines(voc):
    """Names count as mmseg reads them, stripped: ' 2007_000000\\r' is 2007_000000 again."""
    root, dataset_cfg = voc
    split = write_split(root, '2007_000000\n2007_000001\n 2007_000000\r\n2007_000002\n'
                              '2007_000001\n')
    with pytest.raises(DatasetError, match=(
            rf'^PascalVOCDataset: split file {split}: line 3 repeats 2007_000000 of line 1, '
            r'line 5 repeats 2007_000001 of line 2, so an image would count more than once')):
        check_files(build_lazily(dataset_cfg))


def test_a_split_read_otherwise_than_a_name_per_line_is_left_to_its_dataset(tmp_path):
    """A dataset with its own load_data_list (mmseg's DecathlonDataset reads JSON) may
    repeat lines."""
    class ReadsJSON(BaseSegDataset):
        def load_data_list(self):
            return []

    split = tmp_path / 'split.json'
    split.write_text('{\n}\n\n{\n}\n')
    dataset = ReadsJSON.__new__(ReadsJSON)
    dataset.ann_file = str(split)
    check_split_lines(dataset)  # no error


def test_a_split_file_that_is_not_text_is_refused(voc):
    root, dataset_cfg = voc
    (root / SPLIT).write_bytes(b'2007_000000\n\xff\xfe\n')
    with pytest.raises(DatasetError, match=rf'^PascalVOCDataset: split file '
                                           rf'{re.escape(str(root / SPLIT))} is not a text file '
                                           r'\(UTF-8: invalid start byte at byte 12\)'):
        check_layout(dataset_cfg)


# ---------------------------------------------------------------------------------- indices
@pytest.mark.parametrize('indices, positions', [
    (None, [0, 1, 2]),
    (1, [0]),  # a count: the first ones
    (5, [0, 1, 2]),  # more than there are: all
    (-1, [2]),  # a negative count: the last ones
    ([2, 0], [2, 0]),
    ((-1, 0), [2, 0]),  # negative positions count from the end
])
def test_indices_select_what_mmengine_evaluates(voc, indices, positions):
    _, dataset_cfg = voc
    assert selected_positions(indices, 3) == positions
    dataset = build_lazily(dict(dataset_cfg, indices=indices))
    assert check_files(dataset, indices) == SplitCount(listed=3, evaluated=len(positions))
    dataset.full_init()  # mmengine's own subset: the images a run evaluates
    assert [dataset.get_data_info(i)['img_path'] for i in range(len(dataset))] == [
        str(Path(dataset_cfg.data_root) / 'JPEGImages' / f'{NAMES[p]}.jpg') for p in positions]


@pytest.mark.parametrize('indices, message', [
    ([0, 3], r'^indices: 3 outside the 3 images listed \(positions 0..2, or -3..-1 from the '
             r'end\)'),
    ([-4, 0, 7], r'^indices: -4, 7 outside the 3 images listed'),
    ([0, 1, -3], r'^indices: position 0 selected more than once, so an image would count '
                 r'twice'),
    (0, r'^indices: 0 selects none of the 3 images listed'),
    ([], r'^indices: \[\] selects none of the 3 images listed'),
    ('0', r"^indices: give a count or a list of positions, not '0'"),
    ([0.5], r'^indices: give a count or a list of positions, not \[0.5\]'),
])
def test_indices_that_select_no_image_or_one_twice_or_past_the_end_are_refused(indices,
                                                                               message):
    with pytest.raises(ValueError, match=message):
        selected_positions(indices, 3)


def test_only_the_images_to_evaluate_must_be_on_disk(voc):
    root, dataset_cfg = voc
    (root / 'JPEGImages' / '2007_000002.jpg').unlink()
    assert check_files(build_lazily(dataset_cfg), [0, 1]) == SplitCount(listed=3, evaluated=2)
    with pytest.raises(DatasetError, match=r'^PascalVOCDataset: 1 of the 2 images to evaluate '
                                           r'are missing: .*2007_000002.jpg'):
        check_files(build_lazily(dataset_cfg), [0, 2])
    with pytest.raises(DatasetError, match=r'1 of the 3 images to evaluate are missing'):
        check_files(build_lazily(dataset_cfg))
