"""The bad-input sweep: fsa-seg's commands and tools on tiny generated data with something wrong.

Every case runs in a subprocess (``cli_runner``) and must end in one of two ways, never a
traceback and never a silent result:

- an error: exit status != 0 and exactly one ``PROG: error: ...`` line on stderr, which names
  the file at fault (or the argument) and matches the case's expectation;
- the documented handling: exit status 0 with the warning and the record the README promises
  (checked by the case).
"""
import builtins
import json
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import pytest
import torch
from PIL import Image

from fsa_seg.models.backbones import OpenCLIP, tiny_clip_arch

import cli_runner
from synthetic_data import make_benchmark

REPO = Path(__file__).resolve().parents[1]
TINY_ARCH = tiny_clip_arch(layers=2)
VOC = 'VOCdevkit/VOC2012'


# ---------------------------------------------------------------------------------- workspace
@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    """Data, configs and weights shared by the cases (each case copies what it changes)."""
    root = tmp_path_factory.mktemp('sweep')
    make_benchmark('voc21', root / 'data', sizes=((40, 56), (30, 30)))
    make_benchmark('cityscapes', root / 'data', sizes=((40, 56), (30, 30)))
    make_benchmark('ade20k', root / 'data', sizes=((40, 56), (30, 30)))
    for config, benchmark in (('clearclip/clearclip_fsa_vit-b16_voc21.py', 'voc21'),
                              ('sclip/sclip_vit-b16_cityscapes.py', 'cityscapes'),
                              ('sclip/sclip_vit-b16_ade20k.py', 'ade20k')):
        (root / f'tiny_{benchmark}.py').write_text(
            f"_base_ = ['{REPO / 'configs' / config}']\n"
            f'model = dict(clip=dict(_delete_=True, random_init=True, arch={TINY_ARCH!r}),\n'
            "             templates='plain', text_cache_dir=False,\n"
            '             test_cfg=dict(crop_size=(224, 224), stride=(112, 112)))\n'
            'test_dataloader = dict(num_workers=0, persistent_workers=False)\n')
    (root / 'tiny_predict.py').write_text(  # the default config, tiny random models
        f"_base_ = ['{REPO / 'configs/proxyclip/proxyclip_fsa_vit-b16_dino-b8_voc21.py'}']\n"
        f'model = dict(clip=dict(_delete_=True, random_init=True, arch={TINY_ARCH!r}),\n'
        "             vfm=dict(_delete_=True, type='TimmVFM', name='dino_vitb8', "
        'random_init=True,\n'
        '                      model_kwargs=dict(embed_dim=32, depth=1, num_heads=2)),\n'
        "             templates='plain', text_cache_dir=False,\n"
        '             test_cfg=dict(crop_size=(224, 224), stride=(112, 112)))\n')
    images = root / 'images'
    images.mkdir()
    rng = np.random.default_rng(0)
    for index, size in enumerate(((40, 56), (30, 30), (36, 28))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
            images / f'photo{index}.png')
    torch.save(OpenCLIP(arch=TINY_ARCH, random_init=True).model.state_dict(),
               root / 'tiny_clip.pt')
    torch.save(OpenCLIP(arch=tiny_clip_arch(layers=1), random_init=True).model.state_dict(),
               root / 'other_clip.pt')
    (root / 'garbage.pt').write_bytes(b'not a checkpoint at all')
    return root


def data_root(case_dir: Path, benchmark: str = 'voc21') -> Path:
    """The case's own copy of a benchmark's data; returns its data root."""
    sub = {'voc21': VOC, 'cityscapes': 'cityscapes', 'ade20k': 'ade/ADEChallengeData2016'}
    return case_dir / 'data' / sub[benchmark]


# ---------------------------------------------------------------------------------- cases
@dataclass
class Case:
    name: str
    entry: str
    args: List[str]  # '{ws}' is the workspace, '{case}' the case's folder, '{data}' its data
    error: Optional[str] = None  # the error line must match; None: the run must succeed
    prepare: Optional[Callable[[Path, Path], None]] = None  # (case folder, data root)
    check: Optional[Callable[['cli_runner.Result', Path], None]] = None
    benchmark: str = 'voc21'
    names_file: Optional[str] = None  # a path (relative to the case folder) the error names
    exit_code: Optional[int] = None  # a specific status (argparse: 2, Ctrl-C: 130)
    marks: list = field(default_factory=list)


def set_label(path: Path, values=None, size=None):
    label = np.array(Image.open(path))
    if size is not None:
        label = np.zeros(size, np.uint8)
    for (y, x), value in (values or {}).items():
        label[y, x] = value
    Image.fromarray(label).save(path)


def truncate(path: Path):
    path.write_bytes(path.read_bytes()[:100])


def results(case_dir: Path) -> dict:
    return json.loads((case_dir / 'results.json').read_text())


TEST = ['{ws}/tiny_voc21.py', '--work-dir', '{case}/work',
        '--cfg-options', 'test_dataloader.dataset.data_root={data}']
PARTIAL = ['--allow-partial-split']
ANN = f'{VOC}/SegmentationClass'
IMG = f'{VOC}/JPEGImages'


PREDICT = ['predict', '{case}/images', '--config', '{ws}/tiny_predict.py', '--random-weights',
           '--quiet', '--out-dir', '{case}/out']


def summary(case_dir: Path) -> dict:
    return json.loads((case_dir / 'out' / 'summary.json').read_text())


def check_folder_named_like_an_image_listed(result, case_dir):
    assert re.search(r'skipped .*/x.jpg: named like an image but not a file', result.stderr)
    record = summary(case_dir)
    assert record['num_processed'] == 3 and record['status'] == 'complete'
    assert [s['input'] for s in record['skipped']] == [str(case_dir / 'images' / 'x.jpg')]


def check_second_run_overwrites(result, case_dir):
    assert summary(case_dir)['num_processed'] == 3


def check_fp16_on_cpu_warned(result, case_dir):
    assert 'warning: fp16 on the CPU is slow' in result.stderr
    assert summary(case_dir)['precision'] == 'fp16'


def check_fp16_on_cpu_warned_in_test(result, case_dir):
    assert 'fsa-seg test: warning: fp16 on the CPU is slow' in result.stderr
    results = json.loads((case_dir / 'results.json').read_text())
    assert 'float16' in json.dumps(results['settings'])


def check_bundled_vocabulary_kept(result, case_dir):
    vocabulary = summary(case_dir)['vocabulary']
    assert len(vocabulary) == 81 and vocabulary[0]['name'] == 'background'
    assert vocabulary[0]['synonyms'][0] == 'sky' and 'bed' in vocabulary[0]['synonyms']
    assert vocabulary[60]['synonyms'] == ['bed']  # the official list, repeat included


def check_random_weights_loud_and_recorded(result, case_dir):
    assert 'RANDOM WEIGHTS' in result.output and 'MEANINGLESS' in result.output
    record = results(case_dir)
    assert record['random_weights'] is True and record['settings']['seed'] == 0


def untyped_clip_with_weights(case_dir: Path, data: Path) -> None:
    (case_dir / 'user.py').write_text(
        f"_base_ = ['{REPO / 'configs/clearclip/clearclip_vit-b16_voc21.py'}']\n"
        f"model = dict(clip=dict(_delete_=True, pretrained='{case_dir.parent}/w.pt', "
        f"arch={TINY_ARCH!r}), templates='plain', text_cache_dir=False,\n"
        '             test_cfg=dict(crop_size=(224, 224), stride=(112, 112)))\n'
        'test_dataloader = dict(num_workers=0, persistent_workers=False)\n')


class CreatesAFile:
    """Unpickling this calls open(path, 'w'): a checkpoint whose pickle runs code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return builtins.open, (self.path, 'w')


def malicious_checkpoint(case_dir: Path, data: Path) -> None:
    torch.save({'state_dict': {}, 'x': CreatesAFile(case_dir / 'created')}, case_dir / 'evil.pt')


def check_nothing_created(result, case_dir):
    assert not (case_dir / 'created').exists()


def earlier_run(case_dir: Path, data: Path) -> None:
    (case_dir / 'out').mkdir()
    (case_dir / 'out' / 'summary.json').write_text('{"images": ["from an earlier run"]}')


def results_json(name: str = 'results.json', metrics=None, model=None):
    """A ``prepare`` writing a results JSON of fsa-seg test (SCLIP on voc21, mIoU 60) with the
    metrics or the model config given instead."""
    record = dict(metrics=dict(mIoU=60.0) if metrics is None else metrics,
                  settings=dict(model=model or dict(type='SCLIP', vocabulary='voc21')))
    return lambda case, data: (case / name).write_text(json.dumps(record))


def check_good_file_compared_before_the_error(result, case_dir):
    assert result.stdout.startswith(f'{case_dir / "good.json"}: SCLIP, CLIP ViT-B-16, voc21\n'
                                    '  ours: mIoU 60.00\n'), result.stdout




def check_bad_values_counted(result, case_dir):
    assert re.search(r'2007_000001\.png: label values 30, 41 lie outside the 21 classes.*'
                     r'2 pixels ignored', result.output)
    bad = results(case_dir)['bad_annotations']
    assert bad['policy'] == 'warn' and bad['count'] == 1
    assert bad['files'][0]['values'] == [30, 41] and bad['files'][0]['pixels'] == 2
    assert results(case_dir)['num_images'] == 2


def check_wrong_size_left_out(result, case_dir):
    assert re.search(r'2007_000001\.png: annotation is 20x20 .* left out', result.output)
    assert results(case_dir)['num_images'] == 1
    assert results(case_dir)['bad_annotations']['files'][0]['problem'] == 'size'


def check_partial_split_marked(result, case_dir):
    assert 'found 2 images, fewer than the 1449' in result.output
    record = results(case_dir)
    assert record['complete'] is False and record['num_images'] == 2
    settings = record['settings']
    assert settings['model']['plugin']['lamda'] == 3.0
    assert settings['model']['test_cfg'] == dict(mode='slide', crop_size=[224, 224],
                                                 stride=[112, 112])
    assert settings['model_dtypes'] == {'clip': 'torch.float32'}
    assert set(settings['versions']) >= {'fsa-seg', 'torch', 'open_clip_torch', 'timm'}
    assert settings['seed'] is not None


def check_subset_marked(result, case_dir):
    assert ('PascalVOCDataset: test_dataloader.dataset.indices selects 1 of the 2 images of the '
            'official evaluation split' in result.output)
    record = results(case_dir)
    assert record['complete'] is False and record['num_images'] == 1


SPLIT = f'data/{VOC}/ImageSets/Segmentation/val.txt'
WHOLE_SPLIT = ['split_size=2']  # the two images on disk are the official split


CASES = [
    # -------------------------------------------------------------- dataset, before the run
    Case('test: data root missing', 'tools/test.py', TEST,
         r'image folder .*VOC2012/JPEGImages not found.*data/README.md',
         prepare=lambda case, data: shutil.rmtree(case / 'data'),
         names_file=f'data/{VOC}'),
    Case('test: data root is a file', 'tools/test.py', TEST, r'image folder .* not found',
         prepare=lambda case, data: (shutil.rmtree(data), data.write_text('x'))),
    Case('test: split file missing', 'tools/test.py', TEST,
         r'split file .*val.txt not found',
         prepare=lambda case, data: (data / 'ImageSets/Segmentation/val.txt').unlink(),
         names_file=f'data/{VOC}/ImageSets/Segmentation/val.txt'),
    Case('test: split file empty', 'tools/test.py', TEST, r'split file .*val.txt lists no images',
         prepare=lambda case, data: (data / 'ImageSets/Segmentation/val.txt').write_text('\n')),
    Case('test: image named by the split missing', 'tools/test.py', TEST,
         r'1 of the 2 images to evaluate are missing: .*2007_000001.jpg',
         prepare=lambda case, data: (data / 'JPEGImages/2007_000001.jpg').unlink()),
    Case('test: annotation named by the split missing', 'tools/test.py', TEST,
         r'1 of the 2 annotations to evaluate are missing: .*2007_000001.png',
         prepare=lambda case, data: (data / 'SegmentationClass/2007_000001.png').unlink()),
    Case('test: cityscapes annotation missing (no split file)', 'tools/test.py',
         ['{ws}/tiny_cityscapes.py', '--work-dir', '{case}/work', '--cfg-options',
          'test_dataloader.dataset.data_root={data}'],
         r'1 of the 2 annotations .* missing: .*lindau_000000_000001_gtFine_labelTrainIds.png',
         benchmark='cityscapes',
         prepare=lambda case, data: (
             data / 'gtFine/val/lindau/lindau_000000_000001_gtFine_labelTrainIds.png').unlink()),
    Case('test: no images in the folder', 'tools/test.py',
         ['{ws}/tiny_ade20k.py', '--work-dir', '{case}/work', '--cfg-options',
          'test_dataloader.dataset.data_root={data}'],
         r'no images \(\*\.jpg\) in .*images/validation', benchmark='ade20k',
         prepare=lambda case, data: [p.unlink() for p in
                                     (data / 'images/validation').glob('*.jpg')]),
    Case('test: split size differs from the official one', 'tools/test.py', TEST,
         r'found 2 images, fewer than the 1449 .*--allow-partial-split'),
    Case('test: partial split allowed, marked, settings recorded', 'tools/test.py',
         TEST + PARTIAL + ['--out', '{case}/results.json'], check=check_partial_split_marked),
    Case('test: a subset of the split chosen with indices', 'tools/test.py',
         TEST + WHOLE_SPLIT + ['test_dataloader.dataset.indices=1'],
         r'PascalVOCDataset: test_dataloader.dataset.indices selects 1 of the 2 images of the '
         r'official evaluation split.*--allow-partial-split'),
    Case('test: a subset allowed, marked incomplete', 'tools/test.py',
         TEST + WHOLE_SPLIT + ['test_dataloader.dataset.indices=1'] + PARTIAL
         + ['--out', '{case}/results.json'], check=check_subset_marked),
    Case('test: indices past the images listed', 'tools/test.py',
         TEST + ['test_dataloader.dataset.indices=[0,2]'] + PARTIAL,
         r'tiny_voc21.py: test_dataloader.dataset: indices: 2 outside the 2 images listed'),
    Case('test: indices select an image twice', 'tools/test.py',
         TEST + ['test_dataloader.dataset.indices=[1,-1]'] + PARTIAL,
         r'tiny_voc21.py: test_dataloader.dataset: indices: position 1 selected more than once'),
    Case('test: blank line in the split file', 'tools/test.py', TEST,
         r"val.txt: line 2 is blank, which mmseg reads as an image named ''",
         prepare=lambda case, data: (data / 'ImageSets/Segmentation/val.txt').write_text(
             '2007_000000\n\n2007_000001\n'),
         names_file=SPLIT),
    Case('test: blank line after the last name', 'tools/test.py', TEST,
         r'val.txt: line 3 is blank',
         prepare=lambda case, data: (data / 'ImageSets/Segmentation/val.txt').write_text(
             '2007_000000\n2007_000001\n\n'),
         names_file=SPLIT),
    Case('test: a name twice in the split file', 'tools/test.py', TEST,
         r'val.txt: line 3 repeats 2007_000000 of line 1, so an image would count more than once',
         prepare=lambda case, data: (data / 'ImageSets/Segmentation/val.txt').write_text(
             '2007_000000\n2007_000001\n2007_000000\n'),
         names_file=SPLIT),
    Case('test: split file not text', 'tools/test.py', TEST, r'val.txt is not a text file',
         prepare=lambda case, data: (data / 'ImageSets/Segmentation/val.txt').write_bytes(
             b'\xff\xfe\x00\n'),
         names_file=SPLIT),
    # -------------------------------------------------------------- dataset, during the run
    Case('test: corrupt image', 'tools/test.py', TEST + PARTIAL,
         r'2007_000000.jpg: cannot read this file',
         prepare=lambda case, data: truncate(data / 'JPEGImages/2007_000000.jpg')),
    Case('test: corrupt image, DataLoader workers', 'tools/test.py',
         TEST + ['test_dataloader.num_workers=2'] + PARTIAL,
         r'2007_000000.jpg: cannot read this file',
         prepare=lambda case, data: truncate(data / 'JPEGImages/2007_000000.jpg')),
    Case('test: corrupt annotation', 'tools/test.py', TEST + PARTIAL,
         r'2007_000001.png: cannot read this file',
         prepare=lambda case, data: (data / 'SegmentationClass/2007_000001.png').write_text(
             'garbage')),
    Case('test: annotation size differs from its image', 'tools/test.py', TEST + PARTIAL,
         r'2007_000001.png: annotation is 20x20 \(HxW\) but its image .*2007_000001.jpg is '
         r'30x30.*--allow-bad-annotations',
         prepare=lambda case, data: set_label(data / 'SegmentationClass/2007_000001.png',
                                              size=(20, 20))),
    Case('test: annotation values outside the classes', 'tools/test.py', TEST + PARTIAL,
         r'2007_000001.png: label values 30, 41 lie outside the 21 classes \(0..20, 255 = '
         r'ignore\).*--allow-bad-annotations',
         prepare=lambda case, data: set_label(data / 'SegmentationClass/2007_000001.png',
                                              {(0, 0): 30, (1, 1): 41})),
    Case('test: ADE20K value above 150 (after reduce_zero_label)', 'tools/test.py',
         ['{ws}/tiny_ade20k.py', '--work-dir', '{case}/work', '--allow-partial-split',
          '--cfg-options', 'test_dataloader.dataset.data_root={data}'],
         r'ADE_val_00000002.png: label values 151 after reduce_zero_label lie outside the 150',
         benchmark='ade20k',
         prepare=lambda case, data: set_label(data / 'annotations/validation/ADE_val_00000002.png',
                                              {(3, 3): 152})),
    Case('test: bad values allowed: warned and counted', 'tools/test.py',
         TEST + PARTIAL + ['--allow-bad-annotations', '--out', '{case}/results.json'],
         prepare=lambda case, data: set_label(data / 'SegmentationClass/2007_000001.png',
                                              {(0, 0): 30, (1, 1): 41}),
         check=check_bad_values_counted),
    Case('test: wrong size allowed: warned, left out, counted', 'tools/test.py',
         TEST + PARTIAL + ['--allow-bad-annotations', '--out', '{case}/results.json'],
         prepare=lambda case, data: set_label(data / 'SegmentationClass/2007_000001.png',
                                              size=(20, 20)),
         check=check_wrong_size_left_out),
    # -------------------------------------------------------------- config
    Case('test: config name typo', 'tools/test.py', ['clearclip_fsa_vit-b16_voc2l'],
         r"config 'clearclip_fsa_vit-b16_voc2l' is neither a file nor the name of a config.*"
         r'Did you mean: clearclip_fsa_vit-b16_voc21'),
    Case('test: config file missing', 'fsa-seg', ['test', '{case}/nope.py'],
         r'nope.py.* is neither a file nor the name of a config'),
    Case('test: config with a syntax error', 'fsa-seg', ['test', '{case}/broken.py'],
         r'cannot read config .*broken.py: SyntaxError',
         prepare=lambda case, data: (case / 'broken.py').write_text("model = dict(type='X'\n")),
    Case('test: config whose base is missing', 'fsa-seg', ['test', '{case}/orphan.py'],
         r'cannot read config .*orphan.py: .*gone.py',
         prepare=lambda case, data: (case / 'orphan.py').write_text("_base_ = ['./gone.py']\n")),
    Case('test: a dataset config, without a model', 'fsa-seg',
         ['test', str(REPO / 'configs/_base_/datasets/voc21.py')],
         r'configs/_base_/datasets/voc21.py: no model to evaluate \(a dataset or other partial '
         r'config\?'),
    Case('test: a config without a dataset', 'fsa-seg', ['test', '{case}/model_only.py'],
         r'model_only.py: no test_dataloader.dataset to evaluate on',
         prepare=lambda case, data: (case / 'model_only.py').write_text(
             "model = dict(type='ClearCLIP')\n"),
         names_file='model_only.py'),
    Case('test: unknown model type', 'tools/test.py',
         TEST + ['model.type=ClearCLIPP'] + PARTIAL,
         r'tiny_voc21.py: ClearCLIPP is not in the mmseg::model registry'),
    Case('test: misspelt model argument', 'tools/test.py',
         TEST + ['model.clip.modle_name=ViT-B-16'] + PARTIAL,
         r"tiny_voc21.py: OpenCLIP.__init__\(\) got an unexpected keyword argument "
         r"'modle_name'"),
    Case('test: unknown dataset type', 'tools/test.py',
         TEST + ['test_dataloader.dataset.type=PascalVOCDatasett'] + PARTIAL,
         r'test_dataloader.dataset: PascalVOCDatasett is not in the mmseg::dataset registry'),
    Case('test: malformed --cfg-options', 'tools/test.py',
         ['{ws}/tiny_voc21.py', '--cfg-options', 'model.prob_thd'],
         r"--cfg-options: expected KEY=VALUE, got 'model.prob_thd'", exit_code=2),
    Case('test: --cuda-graphs with CASS', 'tools/test.py',
         ['cass_vit-b16_voc21', '--cuda-graphs'],
         r'cass_vit-b16_voc21.py: CASS runs host code per crop and cannot replay crops as CUDA '
         r'graphs: leave out --cuda-graphs'),
    Case('test: vocabulary file missing', 'tools/test.py',
         TEST + ['model.vocabulary={case}/classes.txt'] + PARTIAL,
         r"vocabulary '.*classes.txt' is neither a bundled vocabulary .* nor an existing"),
    # -------------------------------------------------------------- weights
    Case('test: weights file missing', 'tools/test.py',
         TEST + ['model.clip.random_init=False', 'model.clip.pretrained={case}/w.pt'] + PARTIAL,
         r'CLIP checkpoint file not found: .*w.pt'),
    Case('test: weights file not a checkpoint', 'tools/test.py',
         TEST + ['model.clip.random_init=False',
                           'model.clip.pretrained={ws}/garbage.pt'] + PARTIAL,
         r'garbage.pt'),
    Case('test: weights of another architecture', 'tools/test.py',
         TEST + ['model.clip.random_init=False',
                           'model.clip.pretrained={ws}/other_clip.pt'] + PARTIAL,
         r'CLIP checkpoint .*other_clip.pt does not fit the model'),
    # -------------------------------------------------------------- outputs and launching
    Case('test: --out not a .json file', 'tools/test.py',
         TEST + PARTIAL + ['--out', '{case}/results'], r'--out .*results: give a .json file'),
    Case('test: --out in a folder that cannot be made', 'tools/test.py',
         TEST + PARTIAL + ['--out', '{case}/blocker/results.json'],
         r'the folder of --out .*blocker cannot be written',
         prepare=lambda case, data: (case / 'blocker').write_text('a file, not a folder')),
    Case('test: --work-dir is a file', 'tools/test.py',
         ['{ws}/tiny_voc21.py', '--work-dir', '{case}/blocker'] + PARTIAL,
         r'--work-dir .*blocker cannot be written',
         prepare=lambda case, data: (case / 'blocker').write_text('a file, not a folder')),
    Case('test: --show-dir is a file', 'tools/test.py',
         TEST + PARTIAL + ['--show-dir', '{case}/blocker'],
         r'--show-dir .*blocker cannot be written',
         prepare=lambda case, data: (case / 'blocker').write_text('a file, not a folder')),
    Case('test: --launcher pytorch outside torchrun', 'tools/test.py',
         TEST + PARTIAL + ['--launcher', 'pytorch'],
         r'--launcher pytorch runs under torchrun only.*fsa-seg dist-test'),
    Case('dist-test: no processes', 'fsa-seg', ['dist-test', '{ws}/tiny_voc21.py', '0'],
         r'expected a positive number of processes', exit_code=2),
    Case('dist-test: config typo, before any process starts', 'fsa-seg',
         ['dist-test', 'clearclip_fsa_vit-b16_voc2l', '2'], r'Did you mean'),
    Case('fsa-seg: no command', 'fsa-seg', [], r'', exit_code=1),
    Case('config: name typo', 'fsa-seg', ['config', 'sclip_vit-b16_ade2ok'],
         r'Did you mean: sclip_vit-b16_ade20k'),
    # -------------------------------------------------------------- predict: inputs, outputs
    Case('predict: a folder named like an image is listed as skipped', 'fsa-seg', PREDICT,
         prepare=lambda case, data: (case / 'images' / 'x.jpg').mkdir(),
         check=check_folder_named_like_an_image_listed),
    Case('predict: nothing to segment', 'fsa-seg',
         ['predict', '{case}/none.jpg', '{case}/empty', '--out-dir', '{case}/out'],
         r'no images to segment', prepare=lambda case, data: (case / 'empty').mkdir()),
    Case('predict: a second run into the same folder is refused', 'fsa-seg', PREDICT,
         r'out already holds the results of an earlier run .*summary.json.*--overwrite',
         prepare=earlier_run, names_file='out/summary.json'),
    Case('predict: a second run with --overwrite', 'fsa-seg', PREDICT + ['--overwrite'],
         prepare=earlier_run, check=check_second_run_overwrites),
    Case('predict: --out-dir is a file', 'fsa-seg', PREDICT,
         r'the output folder .*out is a file; choose another --out-dir',
         prepare=lambda case, data: (case / 'out').write_text('a file')),
    Case('predict: a summary.json that is a folder', 'fsa-seg', PREDICT + ['--overwrite'],
         r'out/summary.json is not a file, so no summary can be written there',
         prepare=lambda case, data: (case / 'out' / 'summary.json').mkdir(parents=True)),
    Case('predict: fp16 on the CPU is slow: warned', 'fsa-seg',
         PREDICT + ['--precision', 'fp16', '--device', 'cpu'], check=check_fp16_on_cpu_warned),
    Case('predict: CUDA asked for where there is none', 'fsa-seg',
         PREDICT + ['--device', 'cuda:0'], r'--device cuda:0: CUDA is not available',
         marks=[pytest.mark.skipif(torch.cuda.is_available(), reason='CUDA is available')]),
    Case('predict: an accelerator this machine lacks', 'fsa-seg',
         PREDICT + ['--device', 'mps'], r'--device mps: MPS is not available here',
         marks=[pytest.mark.skipif(torch.backends.mps.is_available(), reason='MPS is here')]),
    Case('predict: unknown device', 'fsa-seg', PREDICT + ['--device', 'tpu9'],
         r"--device 'tpu9'"),
    Case('predict: config name typo', 'fsa-seg',
         ['predict', '{case}/images', '--config', 'proxyclip_fsa_vit-b16_dino-b8_voc2l'],
         r'Did you mean: proxyclip_fsa_vit-b16_dino-b8_voc21'),
    Case('predict: crop of zero', 'fsa-seg', PREDICT + ['--crop', '0'],
         r'expected a positive size', exit_code=2),
    Case('predict: crop smaller than a patch', 'fsa-seg', PREDICT + ['--crop', '8'],
         r"the crop \(8, 8\) is smaller than CLIP's patches \(16, 16\): a window would hold "
         'no patch'),
    Case('test: crop smaller than a patch', 'tools/test.py',
         TEST + ['model.test_cfg.crop_size=(8,8)', 'model.test_cfg.stride=(8,8)'] + PARTIAL,
         r"tiny_voc21.py: the crop \(8, 8\) is smaller than CLIP's patches"),
    Case('predict: stride larger than the crop', 'fsa-seg',
         PREDICT + ['--crop', '224', '--stride', '300'], r'stride .* is larger than the crop'),
    Case('predict: threshold outside [0, 1]', 'fsa-seg', PREDICT + ['--prob-thd', '2'],
         r'expected a number in \[0, 1\]', exit_code=2),
    Case('predict: random weights and a weight file', 'fsa-seg',
         PREDICT + ['--clip-weights', '{ws}/tiny_clip.pt'],
         r'random weights and weight files exclude each other'),
    Case('predict: CLIP weight file missing', 'fsa-seg',
         ['predict', '{case}/images', '--config', '{ws}/tiny_predict.py', '--clip-weights',
          '{case}/missing.pt', '--out-dir', '{case}/out'],
         r'--clip-weights: weights file not found: .*missing.pt'),
    Case('predict: an option the model does not take', 'fsa-seg',
         PREDICT + ['--cfg-options', 'model.nonexistent_key=1'],
         r"tiny_predict.py: .*unexpected keyword argument 'nonexistent_key'"),
    Case('predict: malformed --cfg-options', 'fsa-seg', PREDICT + ['--cfg-options', '=3'],
         r"expected KEY=VALUE, got '=3'", exit_code=2),
    # -------------------------------------------------------------- vocabularies
    Case('predict: one class (the old ";"-list syntax)', 'fsa-seg',
         PREDICT + ['--vocab', 'sky; tree; road'],
         r"--vocab 'sky; tree; road' .* at least two classes \(one argument is one class"),
    Case('predict: "," between synonyms', 'fsa-seg', PREDICT + ['--vocab', 'sky', 'car, van'],
         r"--vocab 'car, van': separate the synonyms of a class with \";\""),
    Case('predict: a name twice', 'fsa-seg', PREDICT + ['--vocab', 'sky', 'road', 'Sky'],
         r"'Sky' appears in classes 0 and 2: .*can never win"),
    Case('predict: a synonym that is another class', 'fsa-seg',
         PREDICT + ['--vocab', 'house; building', 'building'],
         r"'building' appears in classes 0 and 1"),
    Case('predict: unknown bundled name', 'fsa-seg', PREDICT + ['--vocab', 'vocc21'],
         r"--vocab 'vocc21' is not a bundled vocabulary"),
    Case('predict: images after --vocab', 'fsa-seg',
         ['predict', '--vocab', 'sky', 'tree', '{case}/images/photo0.png', '--config',
          '{ws}/tiny_predict.py', '--random-weights', '--out-dir', '{case}/out'],
         r'photo0.png\' names images: give the images before --vocab'),
    Case('predict: a class-name file with one class', 'fsa-seg',
         PREDICT + ['--vocab', '{case}/classes.txt'],
         r'classes.txt: a vocabulary needs at least two classes',
         prepare=lambda case, data: (case / 'classes.txt').write_text('cat; kitten\n'),
         names_file='classes.txt'),
    Case('predict: a class-name file with a name twice', 'fsa-seg',
         PREDICT + ['--vocab', '{case}/classes.txt'],
         r"classes.txt: 'cat' appears in classes 0 and 2",
         prepare=lambda case, data: (case / 'classes.txt').write_text('cat\ndog\ncat\n'),
         names_file='classes.txt'),
    Case('predict: a bundled list keeps its repeats, class 0 shown as background', 'fsa-seg',
         PREDICT + ['--vocab', 'coco_object'], check=check_bundled_vocabulary_kept),
    Case('test: fp16 on the CPU is slow: warned', 'fsa-seg',
         ['test'] + TEST + PARTIAL + ['--precision', 'fp16', '--out', '{case}/results.json'],
         check=check_fp16_on_cpu_warned_in_test,
         marks=[pytest.mark.skipif(torch.cuda.is_available(), reason='CUDA is available')]),
    Case('test: --random-weights is loud, seeded and recorded', 'fsa-seg',
         ['test'] + TEST + PARTIAL + ['--random-weights', '--out', '{case}/results.json'],
         check=check_random_weights_loud_and_recorded),
    Case('test: --random-weights finds a component replaced without its type', 'fsa-seg',
         ['test', '{case}/user.py', '--random-weights', '--work-dir', '{case}/work',
          '--out', '{case}/results.json', '--cfg-options',
          'test_dataloader.dataset.data_root={data}'] + PARTIAL,
         prepare=untyped_clip_with_weights, check=check_random_weights_loud_and_recorded),
    Case('compare: results file missing', 'fsa-seg', ['compare', '{case}/results.json'],
         r'results.json: no such file', names_file='results.json'),
    Case('compare: not JSON', 'fsa-seg', ['compare', '{case}/results.json'],
         r'results.json: not a results JSON',
         prepare=lambda case, data: (case / 'results.json').write_text('{"metrics": [')),
    Case('compare: a JSON without the settings', 'fsa-seg', ['compare', '{case}/results.json'],
         r'results.json: not a results JSON of fsa-seg test',
         prepare=lambda case, data: (case / 'results.json').write_text('{"mIoU": 3}')),
    Case('compare: metrics without an mIoU', 'fsa-seg', ['compare', '{case}/results.json'],
         r'results.json: no mIoU among its metrics \(aAcc\) to compare',
         prepare=results_json(metrics=dict(aAcc=58)), names_file='results.json'),
    Case('compare: an mIoU of null', 'fsa-seg', ['compare', '{case}/results.json'],
         r'results.json: its mIoU is null, not a number to compare',
         prepare=results_json(metrics=dict(mIoU=None))),
    Case('compare: metrics a list', 'fsa-seg', ['compare', '{case}/results.json'],
         r'results.json: metrics is a list, not the metrics by name that fsa-seg test writes',
         prepare=results_json(metrics=[60.0])),
    Case('compare: a model config without its type', 'fsa-seg', ['compare', '{case}/results.json'],
         r'results.json: settings.model is not the model config of fsa-seg test',
         prepare=results_json(model=dict(vocabulary='voc21'))),
    Case('compare: a good file is compared before a missing one stops the command', 'fsa-seg',
         ['compare', '{case}/good.json', '{case}/missing.json'], r'missing.json: no such file',
         prepare=results_json('good.json'), check=check_good_file_compared_before_the_error),
    Case('test: a checkpoint whose pickle runs code', 'tools/test.py',
         TEST + ['model.clip.random_init=False', 'model.clip.pretrained={case}/evil.pt'] + PARTIAL,
         r'evil.pt: refused to load: its pickle would create io.open .*--trust-checkpoint',
         prepare=malicious_checkpoint, check=check_nothing_created),
    Case('predict: a CLIP weight file whose pickle runs code', 'fsa-seg',
         ['predict', '{case}/images', '--config', '{ws}/tiny_predict.py', '--clip-weights',
          '{case}/evil.pt', '--out-dir', '{case}/out'],
         r'evil.pt: refused to load: .*--trust-checkpoint',
         prepare=malicious_checkpoint, check=check_nothing_created),
    Case('predict: a VFM weight file whose pickle runs code', 'fsa-seg',
         ['predict', '{case}/images', '--config', '{ws}/tiny_predict.py', '--vfm-weights',
          '{case}/evil.pt', '--cfg-options', 'model.clip.random_init=True',
          '--out-dir', '{case}/out'],
         r'evil.pt: refused to load: .*--trust-checkpoint',
         prepare=malicious_checkpoint, check=check_nothing_created),
    Case('convert-coco-object: no annotation folder', 'fsa-seg',
         ['convert-coco-object', '{case}/coco'], r'COCO-Stuff annotation folder not found: .*coco'),
    Case('convert-coco-object: a raw map with values COCO-Stuff never has', 'fsa-seg',
         ['convert-coco-object', '{case}/coco'],
         r'000000000139.png: unexpected label value\(s\) \[11\]',
         prepare=lambda case, data: (
             (case / 'coco/annotations/val2017').mkdir(parents=True),
             Image.fromarray(np.full((4, 4), 11, np.uint8)).save(
                 case / 'coco/annotations/val2017/000000000139.png'))),
    Case('convert-coco-object: an unreadable raw map', 'fsa-seg',
         ['convert-coco-object', '{case}/coco'], r'000000000139.png',
         prepare=lambda case, data: (
             (case / 'coco/annotations/val2017').mkdir(parents=True),
             (case / 'coco/annotations/val2017/000000000139.png').write_text('garbage'))),
    Case('test: a vocabulary of another benchmark', 'tools/test.py',
         TEST + ['model.vocabulary=voc20'] + PARTIAL,
         r"tiny_voc21.py: the model segments 20 classes \(model.vocabulary: 'voc20'\) but "
         r'PascalVOCDataset scores 21'),
    Case('test: a config vocabulary with a name twice', 'tools/test.py',
         TEST + ["model.vocabulary=['sky','tree','sky']"] + PARTIAL,
         r"tiny_voc21.py: vocabulary: 'sky' appears in classes 0 and 2"),
]


@pytest.mark.parametrize('case', [pytest.param(case, marks=case.marks, id=case.name)
                                  for case in CASES])
def test_bad_input(case, workspace, tmp_path):
    case_dir = tmp_path / 'case'
    case_dir.mkdir()
    shutil.copytree(workspace / 'data', case_dir / 'data')
    shutil.copytree(workspace / 'images', case_dir / 'images')
    data = data_root(case_dir, case.benchmark)
    if case.prepare:
        case.prepare(case_dir, data)
    args = [a.format(ws=workspace, case=case_dir, data=data) for a in case.args]
    result = cli_runner.run(case.entry, args, case_dir,
                            env=dict(FSA_SEG_CACHE=str(tmp_path / 'cache')))
    assert 'Traceback' not in result.output, result.output[-4000:]
    assert 'mmcv-lite' not in result.output
    if case.error is None:
        assert result.returncode == 0, result.output[-3000:]
        case.check(result, case_dir)
        return
    assert result.returncode == (case.exit_code or 1), result.output[-3000:]
    if case.exit_code == 1 and not case.error:  # a usage message, no error line
        return
    errors = [line for line in result.stderr.splitlines() if ': error: ' in line]
    assert len(errors) == 1, result.stderr[-3000:]
    assert re.search(case.error, errors[0]), errors[0]
    if case.names_file:
        assert str(case_dir / case.names_file) in errors[0], errors[0]
    if case.check:
        case.check(result, case_dir)


# ---------------------------------------------------------------------------------- predict,
# interrupted or failing half-way: the summary stays valid and lists what was done
def write_images(folder: Path, sizes, seed=0) -> None:
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for index, size in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
            folder / f'img{index:02d}.png')


def check_listed_outputs_whole(out_dir: Path, record: dict) -> None:
    for image in record['images']:
        for path in image['outputs'].values():
            if path.endswith('.png'):
                Image.open(path).load()  # complete image files
            else:
                json.loads(Path(path).read_text())
    assert not list(out_dir.glob('.partial-*'))  # no half-written file left behind


def test_ctrl_c_leaves_a_valid_summary_of_what_was_done_and_resume_continues(workspace,
                                                                               tmp_path):
    write_images(tmp_path / 'many', [(64, 64)] * 40)
    out_dir = tmp_path / 'out'
    arguments = ['predict', tmp_path / 'many', '--config', workspace / 'tiny_predict.py',
                 '--random-weights', '--quiet', '--out-dir', out_dir, '--crop', '64',
                 '--stride', '16']  # many windows per image: a run of some seconds
    environment = dict(FSA_SEG_CACHE=str(tmp_path / 'cache'))
    process, stdout, stderr = cli_runner.start('fsa-seg', arguments, tmp_path, env=environment)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if json.loads((out_dir / 'summary.json').read_text())['num_processed'] >= 1:
                break
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGINT)
    result = cli_runner.finish(process, stdout, stderr)
    assert result.returncode == 130, result.output[-3000:]
    assert 'Traceback' not in result.output
    assert re.search(r'^fsa-seg predict: interrupted; .*summary.json lists the images '
                     r'segmented so far \(the same command with --resume continues\)$',
                     result.stderr.strip().splitlines()[-1])
    record = json.loads((out_dir / 'summary.json').read_text())
    assert record['status'] == 'interrupted'
    assert 1 <= record['num_processed'] < 40
    check_listed_outputs_whole(out_dir, record)
    # the same command with --resume segments only the rest (three images left, for time)
    done = sorted(Path(image['input']).name for image in record['images'])
    rest = sorted({path.name for path in (tmp_path / 'many').iterdir()} - set(done))
    for name in rest[3:]:
        (tmp_path / 'many' / name).unlink()
    result = cli_runner.run('fsa-seg', arguments + ['--resume'], tmp_path, env=environment)
    assert result.returncode == 0, result.output[-3000:]
    resumed = json.loads((out_dir / 'summary.json').read_text())
    assert resumed['status'] == 'complete' and resumed['resumed_images'] == len(done)
    assert resumed['images'][:len(done)] == record['images']
    assert [Path(image['input']).name for image in resumed['images'][len(done):]] == rest[:3]
    check_listed_outputs_whole(out_dir, resumed)


def test_a_full_disk_stops_the_run_with_a_valid_summary(workspace, tmp_path):
    """Writes past 200 kB fail (RLIMIT_FSIZE, as a full disk fails them): the two small
    images fit, the large noise image's overlay does not."""
    write_images(tmp_path / 'images', [(24, 24), (30, 20), (400, 400)])
    out_dir = tmp_path / 'out'
    result = cli_runner.run(
        'fsa-seg', ['predict', tmp_path / 'images', '--config', workspace / 'tiny_predict.py',
                    '--random-weights', '--quiet', '--out-dir', out_dir],
        tmp_path, env=dict(FSA_SEG_CACHE=str(tmp_path / 'cache')), file_size_limit=200_000)
    assert result.returncode == 1 and 'Traceback' not in result.output, result.output[-3000:]
    errors = [line for line in result.stderr.splitlines() if ': error: ' in line]
    assert len(errors) == 1 and re.search(
        r'cannot write the outputs of .*img02.png in .*out: File too large; .*summary.json '
        r'lists the images done before', errors[0]), result.stderr
    record = json.loads((out_dir / 'summary.json').read_text())
    assert record['status'].startswith('failed: cannot write the outputs of')
    assert [Path(i['input']).name for i in record['images']] == ['img00.png', 'img01.png']
    check_listed_outputs_whole(out_dir, record)
    assert not list(out_dir.glob('img02*'))  # none of the failed image's outputs
