"""COCO-Object label maps from hand-made raw COCO-Stuff maps."""
import os
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fsa_seg.datasets import COCOObjectDataset, convert_coco_object

TOOL = Path(__file__).resolve().parents[2] / 'tools' / 'dataset_converters' / 'coco_object.py'

# Raw COCO-Stuff value (COCO category id - 1) -> expected COCO-Object class, from COCO's
# category list: id 1 person, 2 bicycle, 13 stop sign (after the unused id 12), 27 backpack
# (after the unused id 26), 90 toothbrush; 92 banner and 182 wood are stuff.
RAW_TO_NAME = {0: 'person', 1: 'bicycle', 12: 'stop sign', 26: 'backpack', 89: 'toothbrush',
               91: 'background', 181: 'background'}
RAW = np.array([[0, 1, 12, 26], [89, 91, 181, 255]], dtype=np.uint8)
EXPECTED = np.array([[1, 2, 12, 25], [80, 0, 0, 255]], dtype=np.uint8)


def write_raw(root: Path, stem: str, raw: np.ndarray, split: str = 'val2017') -> Path:
    path = root / 'annotations' / split / f'{stem}.png'
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(raw).save(path)
    return path


def output_of(source: Path) -> Path:
    return source.with_name(source.stem + '_instanceTrainIds.png')


def read(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def test_expected_labels_match_class_names():
    names = COCOObjectDataset.METAINFO['classes']
    assert [names[EXPECTED.flat[i]] for i in range(7)] == [RAW_TO_NAME[v] for v in RAW.flat[:7]]


def test_converts_hand_made_map(tmp_path):
    source = write_raw(tmp_path, '000000000139', RAW)
    # mmseg's COCO-Stuff converter writes into the same folder; that file is not an input.
    Image.fromarray(RAW).save(source.with_name('000000000139_labelTrainIds.png'))
    counts = convert_coco_object(tmp_path, progress=False)
    assert counts == dict(written=1, skipped=0)
    np.testing.assert_array_equal(read(output_of(source)), EXPECTED)


def test_unlabeled_to_background(tmp_path):
    source = write_raw(tmp_path, '000000000139', RAW)
    convert_coco_object(tmp_path, ignore_to_background=True, progress=False)
    expected = EXPECTED.copy()
    expected[1, 3] = 0
    np.testing.assert_array_equal(read(output_of(source)), expected)


def test_idempotent(tmp_path):
    source = write_raw(tmp_path, '000000000139', RAW)
    convert_coco_object(tmp_path, progress=False)
    first = output_of(source).read_bytes()
    assert convert_coco_object(tmp_path, progress=False) == dict(written=0, skipped=1)
    os.utime(source, (source.stat().st_mtime + 10, ) * 2)  # source edited after the output
    assert convert_coco_object(tmp_path, progress=False) == dict(written=1, skipped=0)
    assert convert_coco_object(tmp_path, force=True, progress=False)['written'] == 1
    assert output_of(source).read_bytes() == first
    assert not list(source.parent.glob('*.tmp'))


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='annotations/val2017'):
        convert_coco_object(tmp_path, progress=False)


def test_folder_without_raw_maps(tmp_path):
    (tmp_path / 'annotations' / 'val2017').mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match='no raw COCO-Stuff label maps'):
        convert_coco_object(tmp_path, progress=False)


@pytest.mark.parametrize('bad_value', [11, 90, 200])  # unused category ids 12 and 91; no class
def test_unexpected_value_names_file_and_value(bad_value, tmp_path):
    raw = RAW.copy()
    raw[0, 0] = bad_value
    source = write_raw(tmp_path, '000000000285', raw)
    with pytest.raises(ValueError, match=rf'000000000285\.png.*\[{bad_value}\]'):
        convert_coco_object(tmp_path, progress=False)
    assert not output_of(source).exists()


def test_command_line(tmp_path, monkeypatch, capsys):
    source = write_raw(tmp_path, '000000000139', RAW)
    monkeypatch.setattr(sys, 'argv', [str(TOOL), str(tmp_path), '--unlabeled-to-background'])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(TOOL), run_name='__main__')
    assert exit_.value.code == 0
    assert read(output_of(source))[1, 3] == 0
    assert '1 label maps written' in capsys.readouterr().out
