"""Segmenting files into an output folder (fsa_seg/apis/predict.py): the folder's checks and the
summary a run leaves however it ends. The command line's runs are in tests/test_cli*.py."""
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from mmengine import Config
from PIL import Image

from fsa_seg.apis import predict
from fsa_seg.apis.predict import OutputDirError, check_output_dir, predict_files

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / 'configs' / 'clearclip' / 'clearclip_vit-b16_voc21.py'


def test_an_output_folder_that_is_a_file_is_refused_in_words(tmp_path):
    (tmp_path / 'afile').write_text('')
    with pytest.raises(OutputDirError, match='the output folder .*afile is a file'):
        check_output_dir(tmp_path / 'afile')


@pytest.mark.parametrize('flags', [{}, dict(overwrite=True), dict(resume=True)])
def test_a_summary_json_that_is_a_folder_is_refused_in_words(tmp_path, flags):
    (tmp_path / 'summary.json').mkdir()
    with pytest.raises(OutputDirError, match='summary.json is not a file'):
        check_output_dir(tmp_path, **flags)


def test_an_unexpected_error_leaves_a_summary_that_says_the_run_failed(tmp_path, monkeypatch):
    """Not only Ctrl-C and a full disk: whatever stops the run, the summary says how it ended
    (not 'running') and lists what was done."""
    calls = []

    def failing_on_the_second_image(model, pipeline, images, batch_size, names):
        calls.append(names)
        if len(calls) == 2:
            raise RuntimeError('the model broke')
        return [SimpleNamespace(labels=np.zeros(image.shape[:2], np.int64),
                                probs=np.full((2, *image.shape[:2]), 0.5, np.float32),
                                meta=dict(undefined_pixels=0)) for image in images]
    monkeypatch.setattr(predict, 'run_model', failing_on_the_second_image)
    monkeypatch.setattr(predict, 'write_result', lambda *args: dict(shares='x.json'))
    paths = []
    for name in ('a.png', 'b.png'):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name)
        paths.append(tmp_path / name)
    model = SimpleNamespace(cfg=Config.fromfile(str(CONFIG)), vocabulary=['sky', 'tree'])
    out_dir = check_output_dir(tmp_path / 'out')
    with pytest.raises(RuntimeError, match='the model broke'):
        predict_files(model, paths, out_dir, progress=False, info=dict(config='tiny'))
    summary = json.loads((out_dir / 'summary.json').read_text())
    assert summary['status'] == 'failed: RuntimeError: the model broke'
    assert [Path(image['input']).name for image in summary['images']] == ['a.png']
