"""Segmenting files into an output folder (fsa_seg/apis/predict.py): the folder's checks and the
summary a run leaves however it ends. The command line's runs are in tests/test_cli*.py."""
import errno
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from mmengine import Config
from PIL import Image

from fsa_seg.apis import predict
from fsa_seg.apis.predict import (
    OutputDirError,
    OutputWriteError,
    check_output_dir,
    predict_files,
    resumable_images,
)

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


def fake_results(prepared):
    return [SimpleNamespace(labels=np.zeros((8, 8), np.int64),
                            probs=np.full((2, 8, 8), 0.5, np.float32),
                            meta=dict(undefined_pixels=0)) for _ in prepared]


def write_images(folder, sizes):
    paths = []
    for index, (height, width) in enumerate(sizes):
        paths.append(folder / f'{"ab"[index]}.png')
        Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(paths[-1])
    return paths


FAKE_MODEL = SimpleNamespace(cfg=Config.fromfile(str(CONFIG)), vocabulary=['sky', 'tree'])


def test_an_unexpected_error_leaves_a_summary_that_says_the_run_failed(tmp_path, monkeypatch):
    """Not only Ctrl-C and a full disk: whatever stops the run, the summary says how it ended
    (not 'running') and lists what was done."""
    calls = []

    def failing_on_the_second_image(model, prepared, batch_size):
        calls.append(prepared)
        if len(calls) == 2:
            raise RuntimeError('the model broke')
        return fake_results(prepared)
    monkeypatch.setattr(predict, 'run_prepared', failing_on_the_second_image)
    monkeypatch.setattr(predict, 'write_result', lambda *args: dict(shares='x.json'))
    paths = write_images(tmp_path, [(8, 8), (8, 8)])
    model = FAKE_MODEL
    out_dir = check_output_dir(tmp_path / 'out')
    with pytest.raises(RuntimeError, match='the model broke'):
        predict_files(model, paths, out_dir, progress=False, info=dict(config='tiny'))
    summary = json.loads((out_dir / 'summary.json').read_text())
    assert summary['status'] == 'failed: RuntimeError: the model broke'
    assert [Path(image['input']).name for image in summary['images']] == ['a.png']


def test_a_summary_that_cannot_be_updated_stops_the_run_in_words(tmp_path, monkeypatch):
    """The summary after an image, not only the image's outputs, may meet a full disk: the run
    stops with an OutputWriteError (one line in the CLI), the earlier summary kept whole."""
    monkeypatch.setattr(predict, 'run_prepared', lambda model, prepared, size:
                        fake_results(prepared))
    monkeypatch.setattr(predict, 'write_result', lambda *args: dict(shares='x.json'))
    written = []

    def full_after_the_first(out_dir, run, info):
        if written:
            raise OSError(errno.ENOSPC, 'No space left on device')
        written.append(json.dumps(dict(info, status=run.status, images=run.processed)))
    monkeypatch.setattr(predict, 'write_summary', full_after_the_first)
    paths = write_images(tmp_path, [(8, 8), (8, 8)])
    with pytest.raises(OutputWriteError, match='cannot update .*summary.json: No space left'):
        predict_files(FAKE_MODEL, paths, check_output_dir(tmp_path / 'out'), progress=False,
                      info=dict(config='tiny'))
    assert [Path(i['input']).name for i in json.loads(written[0])['images']] == ['a.png']


def test_an_image_too_thin_to_resize_is_skipped_with_its_reason(tmp_path, monkeypatch):
    """The config resizes the short side to 336 within a long side of 2048: 1 x 4097 px scales
    by 2048/4097 to 0.4999 px high, so no pixel; the other image is segmented."""
    segmented = []
    monkeypatch.setattr(predict, 'run_prepared', lambda model, prepared, size:
                        segmented.extend(prepared) or fake_results(prepared))
    monkeypatch.setattr(predict, 'write_result', lambda *args: dict(shares='x.json'))
    paths = write_images(tmp_path, [(1, 4097), (1, 4096)])
    run = predict_files(FAKE_MODEL, paths, check_output_dir(tmp_path / 'out'), progress=False,
                        batch_size=2)
    assert run.skipped == [dict(input=str(paths[0]), reason="1x4097 px is too thin for the "
                                "resize of the config's test pipeline (a side would keep no "
                                "pixel)")]
    assert [Path(i['input']).name for i in run.processed] == ['b.png']
    assert [tuple(item['inputs'].shape) for item in segmented] == [(3, 1, 2048)]


def test_resume_finds_the_outputs_in_the_folder_it_resumes(tmp_path, monkeypatch):
    """A summary lists outputs by the path the run was given; a resumed run looks for them in
    the folder it resumes (a copied or moved run), and lists them there."""
    original = tmp_path / 'run'
    original.mkdir()
    outputs = {kind: str(original / f'a{suffix}') for kind, suffix in
               (('labels', '_labels.png'), ('overlay', '_overlay.png'), ('shares', '.json'))}
    info = dict(config='tiny', prob_thd=0.0)
    summary = dict(info, status='interrupted', images=[dict(input='a.png', outputs=outputs)])
    copy = tmp_path / 'copy'
    copy.mkdir()
    (copy / 'summary.json').write_text(json.dumps(summary))
    for output in outputs.values():
        Path(output).write_text('')  # in the original folder only
    assert resumable_images(copy, info) == []
    for output in outputs.values():
        (copy / Path(output).name).write_text('')
    assert resumable_images(copy, info) == [dict(input='a.png', outputs={
        kind: str(copy / Path(output).name) for kind, output in outputs.items()})]
