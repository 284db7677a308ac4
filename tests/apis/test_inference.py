"""Python inference API (fsa_seg.apis.inference) and mmseg's own inference APIs on our configs,
with tiny random models."""
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine import Config
from PIL import Image

from fsa_seg.apis import inference
from fsa_seg.apis.inference import (
    ImageReadError,
    ImageSizeError,
    SegmentationResult,
    build_test_pipeline,
    device_available,
    init_segmentor,
    load_image,
    prepare_image,
    run_model,
    segment,
)
from fsa_seg.models.backbones import tiny_clip_arch

from doubles import record_logs

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / 'configs' / 'proxyclip' / 'proxyclip_fsa_vit-b16_dino-b8_voc21.py'
VOCAB = ['sky', 'tree', 'house; building', 'road', 'grass']
TINY_VFM = dict(type='TimmVFM', name='dino_vitb8', random_init=True,
                model_kwargs=dict(embed_dim=32, depth=2, num_heads=2))


def blocks(height, width, seed=0, grid=4):
    """An RGB image of grid x grid flat colour blocks (gives random models varied labels)."""
    colours = np.random.default_rng(seed).integers(0, 256, (grid, grid, 3))
    image = np.kron(colours, np.ones((-(-height // grid), -(-width // grid), 1)))
    return image[:height, :width].astype(np.uint8)


def tiny_config(cache_dir, base=DEFAULT) -> Config:
    cfg = Config.fromfile(str(base))
    cfg.model.clip = dict(arch=tiny_clip_arch(), random_init=True)
    if 'vfm' in cfg.model:
        cfg.model.vfm = dict(TINY_VFM)
    cfg.model.text_cache_dir = str(cache_dir)
    cfg.model.test_cfg = dict(mode='slide', crop_size=(224, 224), stride=(112, 112))
    return cfg


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp('text_cache')


@pytest.fixture(scope='module')
def model(cache_dir):
    return init_segmentor(tiny_config(cache_dir), device='cpu', vocabulary=VOCAB)


# ------------------------------------------------------------------ images
def test_load_image_converts_every_mode_to_rgb(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    assert (load_image(gray) == gray[..., None]).all() and load_image(gray).shape == (3, 4, 3)
    rgba = np.random.default_rng(0).integers(0, 256, (3, 4, 4), dtype=np.uint8)
    assert (load_image(rgba) == rgba[..., :3]).all()
    Image.fromarray(rgba, 'RGBA').save(tmp_path / 'rgba.png')
    assert (load_image(tmp_path / 'rgba.png') == rgba[..., :3]).all()
    deep = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    Image.fromarray(deep).save(tmp_path / 'deep.png')  # 16-bit grayscale
    assert (load_image(tmp_path / 'deep.png')[..., 0] == np.rint(deep / 257)).all()
    (tmp_path / 'bad.jpg').write_bytes(b'\xff\xd8 not a jpeg')
    with pytest.raises(ImageReadError, match='bad.jpg'):
        load_image(tmp_path / 'bad.jpg')
    with pytest.raises(ValueError, match='uint8'):
        load_image(gray.astype(np.float32))
    with pytest.raises(ValueError, match=r'empty: \(0, 5, 3\)'):
        load_image(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(TypeError, match='a uint8 numpy array .* got a torch.Tensor'):
        load_image(torch.zeros(3, 4, 3, dtype=torch.uint8))


# ------------------------------------------------------------------ segmenting
def test_segment_uses_the_config_resize_and_returns_the_original_size(model, tmp_path):
    image = blocks(60, 90)
    Image.fromarray(image).save(tmp_path / 'img.png')
    result = segment(model, tmp_path / 'img.png')
    assert isinstance(result, SegmentationResult)
    assert result.meta['img_shape'] == (336, 504)  # short side 336, aspect ratio kept
    assert result.labels.shape == (60, 90) and result.probs.shape == (5, 60, 90)
    assert result.class_names == ['sky', 'tree', 'house', 'road', 'grass']
    assert result.labels.min() >= 0 and result.labels.max() < 5
    assert len(np.unique(result.labels)) > 1  # the test image is not degenerate
    assert (result.labels == result.probs.argmax(0)).all()  # prob_thd 0 with own vocabulary
    assert np.isclose(result.shares().sum(), 1.0)
    assert (result.pixel_counts() == np.bincount(result.labels.ravel(), minlength=5)).all()
    assert result.source == str(tmp_path / 'img.png') and result.meta['undefined_pixels'] == 0
    from_array = segment(model, image)
    assert (from_array.labels == result.labels).all()


def test_images_are_prepared_as_the_evaluation_prepares_them(cache_dir, monkeypatch):
    """Where a config has made ``test_pipeline`` and the test dataloader's pipeline differ (an
    inheriting config that edits one of them), images are prepared with the evaluation's, and
    a warning says so once, when the model is built (not at every image)."""
    cfg = tiny_config(cache_dir)
    evaluated = cfg.test_dataloader.dataset.pipeline
    resize = next(step for step in evaluated if step['type'] == 'Resize')
    resize['scale'] = (2048, 448)
    logs = record_logs(monkeypatch, inference)
    model = init_segmentor(cfg, device='cpu', vocabulary=VOCAB)
    prepared = build_test_pipeline(model.cfg)(dict(img=blocks(60, 90)))
    assert tuple(prepared['inputs'].shape) == (3, 448, 672)            # short side 448
    assert segment(model, blocks(60, 90)).meta['img_shape'] == (448, 672)
    differing = [message for message in logs if 'test_pipeline differs from '
                 'test_dataloader.dataset.pipeline' in message]
    assert len(differing) == 1       # the other message: the random weights' warning


def test_batch_size_and_mixed_sizes_never_change_results(model):
    images = [blocks(60, 80, 1), blocks(48, 40, 2), blocks(60, 80, 3)]
    pipeline = build_test_pipeline(model.cfg)
    one = run_model(model, pipeline, images, batch_size=1)
    many = run_model(model, pipeline, images, batch_size=3)
    for a, b, image in zip(one, many, images):
        assert a.labels.shape == image.shape[:2]
        assert (a.labels == b.labels).all()
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)


@pytest.mark.parametrize('height,width,refused', [(1, 4096, False), (1, 4097, True),
                                                    (4097, 1, True), (2, 8192, False),
                                                    (2, 8193, True)])
def test_images_too_thin_for_the_resize_are_refused_in_words(height, width, refused):
    """Short side to 336 within a long side of 2048 (the default config): a side of s px
    becomes s * 2048 / long, rounded; below half a pixel it would keep none, and OpenCV fails."""
    pipeline = build_test_pipeline(Config.fromfile(str(DEFAULT)))
    image = np.zeros((height, width, 3), np.uint8)
    if refused:
        with pytest.raises(ImageSizeError, match=f'{height}x{width} px is too thin'):
            prepare_image(pipeline, image)
    else:
        assert min(prepare_image(pipeline, image)['inputs'].shape[1:]) == 1


def test_devices_a_model_can_run_on_here():
    assert device_available(torch.device('cpu'))
    assert not device_available(torch.device('meta'))  # holds no data
    assert not device_available(torch.device('cuda', torch.cuda.device_count()))
    assert device_available(torch.device('cuda')) == torch.cuda.is_available()
    assert device_available(torch.device('mps')) == torch.backends.mps.is_available()


def test_set_vocabulary_changes_the_classes(cache_dir):
    model = init_segmentor(tiny_config(cache_dir), device='cpu', vocabulary=['a', 'b'])
    assert model.dataset_meta['classes'] == ('a', 'b')
    model.set_vocabulary(['x', 'y', 'z'])
    assert model.dataset_meta['classes'] == ('x', 'y', 'z')
    assert len(model.dataset_meta['palette']) == 3
    result = segment(model, blocks(40, 40))
    assert result.class_names == ['x', 'y', 'z'] and result.probs.shape[0] == 3


def test_a_new_vocabulary_drops_the_threshold_of_the_one_built_with(cache_dir):
    """The threshold sends uncertain pixels to class 0, the built vocabulary's background:
    set_vocabulary keeps it for that vocabulary only, as init_segmentor does (README)."""
    built = init_segmentor(tiny_config(cache_dir), device='cpu', vocabulary=VOCAB,
                           prob_thd=0.9)
    assert built.prob_thd == 0.9
    built.set_vocabulary(['x', 'y', 'z'])
    assert built.prob_thd == 0.0
    certain = segment(built, blocks(40, 40))
    built.set_vocabulary(['x', 'y', 'z'], prob_thd=0.9)
    assert built.prob_thd == 0.9
    expected = np.where(certain.probs.max(axis=0) < 0.9, 0, certain.labels)
    assert (segment(built, blocks(40, 40)).labels == expected).all()
    assert (expected != certain.labels).any(), 'the threshold must change some pixels here'
    built.set_vocabulary(VOCAB)
    assert built.prob_thd == 0.9
    with pytest.raises(ValueError, match='prob_thd must lie in'):
        built.set_vocabulary(['x', 'y'], prob_thd=1.5)
    assert built.dataset_meta['classes'] == ('sky', 'tree', 'house', 'road', 'grass')
    assert built.prob_thd == 0.9, 'a refused threshold changes nothing'


def test_random_weights_are_reproducible(cache_dir):
    a = init_segmentor(tiny_config(cache_dir), device='cpu', vocabulary=VOCAB)
    b = init_segmentor(tiny_config(cache_dir), device='cpu', vocabulary=VOCAB)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


# ------------------------------------------------------------------ mmseg's APIs
@pytest.mark.filterwarnings('ignore:Checkpoint is not loaded', 'ignore:weights is None',
                            'ignore:Failed to add')
def test_mmseg_inferencer_runs_our_config(cache_dir):
    from mmseg.apis import MMSegInferencer
    cfg = tiny_config(cache_dir)
    # mmengine keeps visualizers by name for the whole process; the runtime config's name
    # ('visualizer') would be taken over by a Runner built later (tools/test.py's tests).
    cfg.visualizer.name = 'test_inference_mmseg_inferencer'
    inferencer = MMSegInferencer(cfg, weights=None, device='cpu')
    # without a checkpoint mmseg assigns Cityscapes' classes to the model: the vocabulary stays
    assert inferencer.model.dataset_meta['classes'][:2] == ('background', 'aeroplane')
    images = [blocks(60, 80, 5), blocks(50, 40, 6)]
    predictions = inferencer(images, batch_size=1)['predictions']
    assert [p.shape for p in predictions] == [(60, 80), (50, 40)]
    for p in predictions:
        assert p.min() >= 0 and p.max() < 21  # the config's voc21 vocabulary


def test_mmseg_init_model_and_inference_model(cache_dir):
    from mmseg.apis import inference_model, init_model
    model = init_model(tiny_config(cache_dir), device='cpu')
    # legends: VOC's class 0 (queried with 26 stuff words, "sky" first) is "background"
    assert model.dataset_meta['classes'][:2] == ('background', 'aeroplane')
    image = blocks(60, 80, 7)[..., ::-1].copy()  # mmseg's arrays are BGR
    result = inference_model(model, image)
    assert result.pred_sem_seg.shape == (60, 80)
    assert tuple(result.seg_logits.data.shape) == (21, 60, 80)
