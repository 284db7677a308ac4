"""``fsa-seg predict`` / ``tools/predict.py`` end to end on generated images, with a tiny
random model from a test config that inherits the default config."""
import contextlib
import io
import json
import re
import runpy
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fsa_seg import cli
from fsa_seg.apis import downloads, inference
from fsa_seg.apis.predict import DEMO_IMAGE, DEMO_VOCABULARY
from fsa_seg.models.backbones import tiny_clip_arch
from fsa_seg.visualization import make_palette

from doubles import record_logs

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / 'configs' / 'proxyclip' / 'proxyclip_fsa_vit-b16_dino-b8_voc21.py'
VOCAB = ['sky', 'tree', 'house; building', 'road', 'grass']
CLASS_NAMES = ['sky', 'tree', 'house', 'road', 'grass']
READABLE = {'blocks': (60, 80), 'photo': (50, 40), 'gray': (48, 64), 'rgba': (40, 50)}


def blocks(height, width, seed=0, grid=4):
    """An RGB image of grid x grid flat colour blocks (gives random models varied labels)."""
    colours = np.random.default_rng(seed).integers(0, 256, (grid, grid, 3))
    image = np.kron(colours, np.ones((-(-height // grid), -(-width // grid), 1)))
    return image[:height, :width].astype(np.uint8)


def run_cli(*argv):
    """main() in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(list(map(str, argv)))
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope='module')
def tiny_config(tmp_path_factory):
    """A config file that inherits the default config and swaps in tiny random models."""
    folder = tmp_path_factory.mktemp('config')
    path = folder / 'tiny_proxyclip.py'
    path.write_text(
        f'_base_ = [{str(DEFAULT)!r}]\n'
        'model = dict(\n'
        f'    clip=dict(_delete_=True, arch={tiny_clip_arch()!r}, random_init=True),\n'
        "    vfm=dict(_delete_=True, type='TimmVFM', name='dino_vitb8', random_init=True,\n"
        '             model_kwargs=dict(embed_dim=32, depth=2, num_heads=2)),\n'
        f'    text_cache_dir={str(folder / "text_cache")!r},\n'
        "    test_cfg=dict(mode='slide', crop_size=(224, 224), stride=(112, 112)))\n")
    return path


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    """PNG, JPEG, grayscale and RGBA images of different sizes, a corrupt and a truncated file."""
    folder = tmp_path_factory.mktemp('images')
    Image.fromarray(blocks(*READABLE['blocks'], seed=1)).save(folder / 'blocks.png')
    Image.fromarray(blocks(*READABLE['photo'], seed=2)).save(folder / 'photo.jpg', quality=95)
    Image.fromarray(blocks(*READABLE['gray'], seed=3)[..., 0]).save(folder / 'gray.png')
    rgba = np.dstack([blocks(*READABLE['rgba'], seed=4),
                      np.linspace(0, 255, 40 * 50).reshape(40, 50).astype(np.uint8)])
    Image.fromarray(rgba, 'RGBA').save(folder / 'rgba.png')
    (folder / 'corrupt.jpg').write_bytes(b'\xff\xd8\xff\xe0 this is not a JPEG')
    whole = (folder / 'blocks.png').read_bytes()
    (folder / 'truncated.png').write_bytes(whole[:len(whole) // 2])
    (folder / 'notes.txt').write_text('not an image, and not picked from the folder')
    return folder


@pytest.fixture(scope='module')
def cli_run(tiny_config, images, tmp_path_factory):
    out = tmp_path_factory.mktemp('out')
    status, stdout, stderr = run_cli('predict', images, '--config', tiny_config,
                                     '--random-weights', '--out-dir', out, '--vocab', *VOCAB,
                                     '--save-logits', '--batch-size', 3, '--quiet')
    return dict(status=status, stdout=stdout, stderr=stderr, out=out)


def read_labels(path):
    with Image.open(path) as image:
        return image.mode, np.array(image), image.getpalette()


# ------------------------------------------------------------------ outputs
def test_every_readable_image_gets_its_outputs(cli_run, tiny_config):
    out = cli_run['out']
    assert cli_run['status'] == 0, cli_run['stderr']
    expected = {f'{name}{suffix}' for name in READABLE
                for suffix in ('_labels.png', '_overlay.png', '.json', '_probs.npz')}
    assert {p.name for p in out.iterdir()} == expected | {'summary.json'}
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['num_processed'] == 4 and summary['random_weights'] is True
    assert [v['name'] for v in summary['vocabulary']] == CLASS_NAMES
    assert summary['vocabulary'][2]['synonyms'] == ['house', 'building']
    assert summary['config'] == str(tiny_config)
    assert sorted(Path(i['input']).stem for i in summary['images']) == sorted(READABLE)
    for image in summary['images']:
        assert set(image['outputs']) == {'labels', 'overlay', 'shares', 'probs'}
        assert all(Path(p).is_file() for p in image['outputs'].values())
        assert image['undefined_pixels'] == 0


def test_corrupt_files_are_reported_by_name_and_skipped(cli_run):
    summary = json.loads((cli_run['out'] / 'summary.json').read_text())
    skipped = {Path(s['input']).name: s['reason'] for s in summary['skipped']}
    assert set(skipped) == {'corrupt.jpg', 'truncated.png'}
    assert all('cannot read the image' in reason for reason in skipped.values())
    assert 'corrupt.jpg' in cli_run['stderr'] and 'truncated.png' in cli_run['stderr']
    assert '4 image(s) segmented, 2 skipped' in cli_run['stdout']


def test_label_png_is_a_palette_png_of_the_label_map(cli_run):
    palette = make_palette(len(CLASS_NAMES))
    assert len({tuple(c) for c in palette}) == len(CLASS_NAMES)  # distinct colours
    seen = set()
    for name, (height, width) in READABLE.items():
        mode, labels, png_palette = read_labels(cli_run['out'] / f'{name}_labels.png')
        assert mode == 'P' and labels.shape == (height, width)  # the original size
        assert labels.max() < len(CLASS_NAMES)
        probs = np.load(cli_run['out'] / f'{name}_probs.npz')
        assert probs['probs'].shape == (len(CLASS_NAMES), height, width)
        assert list(probs['class_names']) == CLASS_NAMES
        np.testing.assert_allclose(probs['probs'].sum(0) > 0, True)
        # no threshold with a custom vocabulary: the label map is the argmax of the probabilities
        assert (labels == probs['probs'].argmax(0)).all()
        for index in range(len(CLASS_NAMES)):
            assert tuple(png_palette[3 * index:3 * index + 3]) == tuple(palette[index])
        seen |= set(np.unique(labels).tolist())
    assert len(seen) > 1  # the check above is not about one constant map


def test_share_json_matches_the_label_histogram(cli_run):
    for name in READABLE:
        record = json.loads((cli_run['out'] / f'{name}.json').read_text())
        _, labels, _ = read_labels(cli_run['out'] / f'{name}_labels.png')
        counts = np.bincount(labels.ravel(), minlength=len(CLASS_NAMES))
        assert [c['name'] for c in record['classes']] == CLASS_NAMES
        assert [c['pixels'] for c in record['classes']] == counts.tolist()
        shares = np.array([c['share'] for c in record['classes']])
        assert np.isclose(shares.sum(), 1.0)
        np.testing.assert_allclose(shares, counts / labels.size)
        assert (record['height'], record['width']) == labels.shape


def test_overlay_blends_the_class_colours_and_adds_a_legend(cli_run, images):
    palette = make_palette(len(CLASS_NAMES)).astype(float)
    _, labels, _ = read_labels(cli_run['out'] / 'blocks_labels.png')
    overlay = np.array(Image.open(cli_run['out'] / 'blocks_overlay.png').convert('RGB'))
    original = np.array(Image.open(images / 'blocks.png').convert('RGB')).astype(float)
    height, width = labels.shape
    assert overlay.shape[1] > width  # the legend panel on the right
    expected = np.rint(0.5 * original + 0.5 * palette[labels])
    np.testing.assert_allclose(overlay[:height, :width], expected, atol=1)


def test_api_gives_the_same_label_maps_as_the_cli(cli_run, tiny_config, images):
    model = inference.init_segmentor(str(tiny_config), device='cpu', random_weights=True,
                                     vocabulary=['sky', 'tree', 'house; building', 'road',
                                                 'grass'])
    results = inference.segment(model, [images / 'blocks.png', images / 'photo.jpg'])
    for name, result in zip(('blocks', 'photo'), results):
        _, labels, _ = read_labels(cli_run['out'] / f'{name}_labels.png')
        assert (result.labels == labels).all()
    # grayscale and RGBA files: the same as their RGB conversions done by hand
    gray = np.array(Image.open(images / 'gray.png'))
    rgba = np.array(Image.open(images / 'rgba.png'))
    by_hand = inference.segment(model, [np.dstack([gray] * 3), rgba[..., :3].copy()])
    for name, result in zip(('gray', 'rgba'), by_hand):
        _, labels, _ = read_labels(cli_run['out'] / f'{name}_labels.png')
        assert (result.labels == labels).all()


# ------------------------------------------------------------------ defaults and failures
def test_no_input_segments_the_demo_image_with_the_demo_vocabulary(tiny_config, tmp_path,
                                                                   monkeypatch):
    logs = record_logs(monkeypatch, inference)
    demo = Image.open(DEMO_IMAGE)
    assert demo.mode == 'RGB' and DEMO_IMAGE.stat().st_size <= 100_000
    assert (DEMO_IMAGE.parent / 'README.md').read_text().count('CC0') >= 1
    status, stdout, _ = run_cli('predict', '--config', tiny_config, '--random-weights',
                                '--out-dir', tmp_path, '--quiet', '--crop', 224,
                                '--stride', 224)
    assert status == 0
    assert any('RANDOM WEIGHTS' in message for message in logs)  # the loud warning
    mode, labels, _ = read_labels(tmp_path / 'demo_labels.png')
    assert labels.shape == (demo.height, demo.width)
    summary = json.loads((tmp_path / 'summary.json').read_text())
    assert [v['name'] for v in summary['vocabulary']] == DEMO_VOCABULARY
    assert summary['test_cfg'] == dict(mode='slide', crop_size=[224, 224], stride=[224, 224])


def test_unwritable_output_folder_fails_before_any_work(tmp_path, monkeypatch, images):
    def must_not_build(*args, **kwargs):
        raise AssertionError('the model was built')
    monkeypatch.setattr(inference, 'init_segmentor', must_not_build)
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    status, _, stderr = run_cli('predict', images / 'blocks.png', '--out-dir',
                                blocker / 'out', '--random-weights')
    assert status == 1
    assert 'cannot write to the output folder' in stderr and str(blocker / 'out') in stderr


def test_missing_weights_fail_fast_and_name_the_flags(tmp_path, monkeypatch):
    """No network (simulated, nothing is contacted) and an empty weights cache."""
    import huggingface_hub.constants
    connections = []

    def no_network(*args, **kwargs):
        connections.append(args)
        raise OSError('network disabled in this test')
    monkeypatch.setattr(socket, 'create_connection', no_network)
    monkeypatch.setattr(downloads, 'hub_reachable', lambda *args, **kwargs: False)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path / 'hf'))
    monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)
    start = time.monotonic()
    status, _, stderr = run_cli('predict', '--out-dir', tmp_path / 'out', '--device', 'cpu')
    elapsed = time.monotonic() - start
    assert status == 1 and elapsed < 30
    assert '--clip-weights PATH' in stderr and '--vfm-weights PATH' in stderr
    assert 'vit_base_patch16_clip_224.openai' in stderr  # the open_clip ViT-B-16 openai file
    assert 'vit_base_patch8_224.dino' in stderr          # timm's DINO ViT-B/8 weights
    assert 'clip_weights=PATH' in stderr                 # and the Python API's arguments
    assert connections == []
    assert not huggingface_hub.constants.HF_HUB_OFFLINE  # offline mode was only temporary


def test_vocabulary_argument(images):
    bundled = ['voc21', 'ade20k']
    assert cli.parse_vocabulary(['sky', ' house; building ', 'road'], bundled) == [
        'sky', 'house; building', 'road']
    assert cli.parse_vocabulary(['voc21'], bundled) == 'voc21'
    assert cli.parse_vocabulary([str(DEFAULT)], bundled) == str(DEFAULT)  # an existing file
    with pytest.raises(cli.VocabularyArgumentError, match='separate the synonyms .* with ";"'):
        cli.parse_vocabulary(['sky', 'house, building'], bundled)
    with pytest.raises(cli.VocabularyArgumentError, match='one argument is one class'):
        cli.parse_vocabulary(['sky; tree; road'], bundled)  # the old syntax: one class
    with pytest.raises(cli.VocabularyArgumentError, match='at least two classes'):
        cli.parse_vocabulary(['vocc21'], bundled)
    with pytest.raises(cli.VocabularyArgumentError, match='give the images before --vocab'):
        cli.parse_vocabulary(['sky', str(images / 'photo.jpg')], bundled)
    # a folder or pattern of images: an input given late where it looks like a path, or where
    # no image came before --vocab (the demo image would be segmented instead)
    for late_input in (str(images), f'{images}/*.png'):
        with pytest.raises(cli.VocabularyArgumentError, match=f"'{re.escape(late_input)}' "
                                                              'names images: give the images'):
            cli.parse_vocabulary(['sky', late_input], bundled)
    with contextlib.chdir(images.parent):
        with pytest.raises(cli.VocabularyArgumentError, match='names images'):
            cli.parse_vocabulary(['sky', images.name], bundled, images_given=False)
        # beside images given first, a plain word is a class even if a folder bears its name
        assert cli.parse_vocabulary(['sky', images.name], bundled) == ['sky', images.name]
    assert cli.parse_vocabulary([str(DEFAULT)], bundled, images_given=False) == str(DEFAULT)
    assert cli.parse_vocabulary(['sky', 'tree'], bundled, images_given=False) == ['sky', 'tree']


def test_missing_inputs_are_reported(tmp_path):
    status, _, stderr = run_cli('predict', tmp_path / 'nope.jpg', str(tmp_path / '*.png'),
                                '--out-dir', tmp_path / 'out', '--random-weights')
    assert status == 1
    assert 'nope.jpg: no such file or folder' in stderr
    assert 'pattern matches no image files' in stderr and 'no images to segment' in stderr


def test_tools_predict_is_the_same_command(monkeypatch, capsys):
    monkeypatch.setattr(sys, 'argv', ['tools/predict.py', '--help'])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / 'tools' / 'predict.py'), run_name='__main__')
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ('--vocab', '--config', '--device', '--precision', '--crop', '--stride',
                   '--prob-thd', '--batch-size', '--out-dir', '--save-logits', '--random-weights',
                   '--clip-weights', '--vfm-weights'):
        assert option in help_text


def test_output_names_stay_distinct():
    from fsa_seg.apis.predict import _output_names
    paths = [Path('a/x.jpg'), Path('b/x.jpg'), Path('x.png'), Path('c/x.jpg'), Path('y.png')]
    assert _output_names(paths) == ['x', 'x_jpg', 'x_png', 'x_2', 'y']
    # a resumed run gives none of the names its kept images have
    assert _output_names(paths[1:], taken=['x']) == ['x_jpg', 'x_png', 'x_2', 'y']
    assert _output_names([Path('y.png')], taken=['y', 'y_png']) == ['y_2']
    # never the summary's name, nor a name another output's temporary file takes
    assert _output_names([Path('summary.png'), Path('.partial-x.png')]) == [
        'summary_png', 'partial-x']
    # names that differ in case alone would share files on macOS's and Windows' file systems
    paths = [Path('Cat.png'), Path('cat.png'), Path('b/CAT.PNG'), Path('Summary.jpg')]
    assert _output_names(paths) == ['Cat', 'cat_png', 'CAT_2', 'Summary_jpg']
    assert _output_names([Path('y.png')], taken=['Y']) == ['y_png']


def test_local_weight_files_replace_random_weights(cli_run, tiny_config, images, tmp_path,
                                                   monkeypatch):
    """Weights saved from the (seeded) random model and given back as files reproduce its
    label maps; nothing random is left and the summary names the files."""
    import torch
    model = inference.init_segmentor(str(tiny_config), device='cpu', random_weights=True,
                                     vocabulary=['a', 'b'])
    clip_file, vfm_file = tmp_path / 'tiny_clip.pt', tmp_path / 'tiny_dino.pth'
    torch.save(model.clip.model.state_dict(), clip_file)
    torch.save(model.vfm.model.state_dict(), vfm_file)
    out = tmp_path / 'out'
    logs = record_logs(monkeypatch, inference)
    status, stdout, stderr = run_cli('predict', images / 'blocks.png', '--config', tiny_config,
                                     '--clip-weights', clip_file, '--vfm-weights', vfm_file,
                                     '--out-dir', out, '--quiet', '--vocab', *VOCAB)
    assert status == 0, stderr
    assert not any('RANDOM WEIGHTS' in message for message in logs)
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['weights'] == dict(clip=str(clip_file), vfm=str(vfm_file))
    assert summary['random_weights'] is False
    _, expected, _ = read_labels(cli_run['out'] / 'blocks_labels.png')
    _, labels, _ = read_labels(out / 'blocks_labels.png')
    assert (labels == expected).all()


def test_undefined_pixels_are_named_and_counted_in_the_summary(tiny_config, images, tmp_path,
                                                              monkeypatch):
    """ProxyCLIP with β = 1e6 makes every pixel undefined (tests/tools/test_test_script.py
    says why); each image's warning names its file, and the summary counts its pixels."""
    from fsa_seg.models.segmentors import base
    config = tmp_path / 'undefined.py'
    config.write_text(f'_base_ = [{str(tiny_config)!r}]\nmodel = dict(beta=1e6)\n')
    messages = record_logs(monkeypatch, base)
    inputs = [images / 'blocks.png', images / 'gray.png']
    status, _, stderr = run_cli('predict', *inputs, '--config', config, '--random-weights',
                                '--out-dir', tmp_path / 'out', '--quiet', '--vocab', *VOCAB,
                                '--batch-size', 2)
    assert status == 0, stderr
    summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    assert [image['undefined_pixels'] for image in summary['images']] == [60 * 80, 48 * 64]
    assert len(messages) == 1   # one batch
    assert f'{60 * 80} of the {60 * 80} pixels of {inputs[0]}; ' in messages[0]
    assert f'{48 * 64} of the {48 * 64} pixels of {inputs[1]}.' in messages[0]


def test_a_bad_weight_file_is_named_not_blamed_on_the_network(tmp_path, monkeypatch):
    monkeypatch.setattr(downloads, 'hub_reachable', lambda *args, **kwargs: False)
    bad = tmp_path / 'clip.bin'
    bad.write_bytes(b'not a checkpoint')
    status, _, stderr = run_cli('predict', '--clip-weights', bad, '--out-dir', tmp_path / 'out',
                                '--device', 'cpu')
    assert status == 1
    assert str(bad) in stderr and 'huggingface.co cannot be reached' not in stderr


# ------------------------------------------------------------------ --resume
def predict_into(out, *inputs_and_flags, tiny_config):
    return run_cli('predict', *inputs_and_flags, '--config', tiny_config, '--random-weights',
                   '--out-dir', out, '--vocab', *VOCAB, '--save-logits', '--quiet')


def test_resume_segments_only_what_the_earlier_run_lacks(cli_run, tiny_config, images,
                                                         tmp_path):
    """A run on two images; then two more images in the folder and one output of the second
    image lost: --resume keeps the first image's outputs untouched, segments the three others,
    and every label map equals the uninterrupted run's (``cli_run``, the same settings)."""
    pictures, out = tmp_path / 'pictures', tmp_path / 'out'
    pictures.mkdir()
    for name in ('blocks.png', 'photo.jpg'):
        (pictures / name).write_bytes((images / name).read_bytes())
    assert predict_into(out, pictures, tiny_config=tiny_config)[0] == 0
    kept = {path: path.stat().st_mtime_ns for path in out.glob('blocks*')}
    (out / 'photo_overlay.png').unlink()
    for name in ('gray.png', 'rgba.png'):
        (pictures / name).write_bytes((images / name).read_bytes())
    status, stdout, stderr = predict_into(out, pictures, '--resume', '--batch-size', 2,
                                          tiny_config=tiny_config)
    assert status == 0, stderr
    assert 'resuming: 1 image(s) segmented before are kept, 3 to segment' in stderr
    assert '3 image(s) segmented, 1 kept from the earlier run, none skipped' in stdout
    summary = json.loads((out / 'summary.json').read_text())
    assert [Path(image['input']).name for image in summary['images']] == [
        'blocks.png', 'gray.png', 'photo.jpg', 'rgba.png']
    assert summary['num_processed'] == 4 and summary['resumed_images'] == 1
    assert summary['status'] == 'complete' and summary['batch_size'] == 2
    assert {path: path.stat().st_mtime_ns for path in out.glob('blocks*')} == kept
    for name in READABLE:
        for suffix in ('_labels.png', '_overlay.png', '.json', '_probs.npz'):
            assert (out / f'{name}{suffix}').is_file()
        assert (read_labels(out / f'{name}_labels.png')[1]
                == read_labels(cli_run['out'] / f'{name}_labels.png')[1]).all()


def test_resume_refuses_another_runs_settings_and_a_foreign_summary(tiny_config, images,
                                                                    tmp_path):
    out = tmp_path / 'out'
    assert predict_into(out, images / 'blocks.png', tiny_config=tiny_config)[0] == 0
    before = (out / 'summary.json').read_text()
    status, _, stderr = predict_into(out, images / 'blocks.png', '--resume', '--prob-thd', 0.5,
                                     '--opacity', 0.8, tiny_config=tiny_config)
    assert status == 1
    assert stderr.strip().splitlines()[-1] == (
        f'fsa-seg predict: error: cannot resume from {out / "summary.json"}: it is a run of '
        'other settings (changed: prob_thd, opacity); choose another --out-dir, or --overwrite')
    assert (out / 'summary.json').read_text() == before
    (out / 'summary.json').write_text('["not", "a", "summary"]')
    status, _, stderr = predict_into(out, images / 'blocks.png', '--resume',
                                     tiny_config=tiny_config)
    assert status == 1 and stderr.strip().splitlines()[-1].startswith(
        f'fsa-seg predict: error: cannot resume from {out / "summary.json"}: not a summary of '
        'fsa-seg predict (TypeError: ')


def test_resume_without_an_earlier_run_segments_everything_and_excludes_overwrite(
        tiny_config, images, tmp_path, capsys):
    out = tmp_path / 'out'
    status, stdout, stderr = predict_into(out, images / 'blocks.png', '--resume',
                                          tiny_config=tiny_config)
    assert status == 0 and 'resuming' not in stderr
    assert '1 image(s) segmented, none skipped' in stdout
    assert json.loads((out / 'summary.json').read_text())['resumed_images'] == 0
    with pytest.raises(SystemExit) as stop:
        cli.main(['predict', str(images / 'blocks.png'), '--resume', '--overwrite'])
    assert stop.value.code == 2
    assert 'argument --overwrite: not allowed with argument --resume' in capsys.readouterr().err
