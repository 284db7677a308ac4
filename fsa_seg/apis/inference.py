"""Python API: build a training-free segmentor from a config, segment your own images.

    from fsa_seg.apis import init_segmentor, segment

    model = init_segmentor('proxyclip_fsa_vit-b16_dino-b8_voc21', device='cuda',
                           vocabulary=['sky', 'tree', 'house; building'])
    result = segment(model, 'photo.jpg')      # or an (H, W, 3) RGB uint8 array, or a PIL image
    result.labels                             # (H, W) class indices at the image's own size
    result.probs                              # (C, H, W) class probabilities
    model.set_vocabulary(['cat', 'dog'])      # other classes, same model

Images go through the config's own test pipeline (mmseg's ``LoadImageFromNDArray``, the
protocol's ``Resize`` — short side 336 by default — and ``PackSegInputs``) and the model's data
preprocessor, exactly as in evaluation; the label map comes back at the original size.

Configs are found by name or path (:mod:`.configs`); weights that cannot be downloaded fail fast
with an explanation (:mod:`.downloads`).
"""
import copy
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import mmcv
import numpy as np
import torch
from mmcv.transforms import Resize
from mmengine.config import Config
from mmengine.dataset import Compose
from mmengine.logging import print_log
from mmengine.registry import init_default_scope
from PIL import Image, ImageOps

from .configs import (
    DEFAULT_CONFIG,
    ConfigSource,
    Size,
    apply_overrides,
    explained_config_errors,
    has_random_weights,
    load_config,
    use_cuda_graphs,
)
from .downloads import downloadable_weights, explained_download_failures, must_work_offline

ImageInput = Union[str, os.PathLike, np.ndarray, Image.Image]


class ImageReadError(OSError):
    """An image file that cannot be read (missing, corrupt or not an image) or prepared."""

    def __init__(self, path, reason: str):
        super().__init__(f'{path}: {reason}')
        self.path, self.reason = str(path), reason


class ImageSizeError(ImageReadError):
    """An image the config's test pipeline cannot prepare: so thin that its resize rounds a
    side to no pixel."""


# ---------------------------------------------------------------------------------- building
RANDOM_WEIGHTS_WARNING = (
    '\n' + '!' * 78 + '\n'
    '!!  RANDOM WEIGHTS: this model was built without pretrained weights.\n'
    '!!  Its predictions are MEANINGLESS; use it only to test the pipeline.\n' + '!' * 78)


def default_device() -> str:
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def device_available(device: torch.device) -> bool:
    """Whether a model can run on ``device`` here: the CPU, or an accelerator torch has
    (``torch.cuda``, ``torch.xpu`` … with that index; Apple's MPS)."""
    if device.type == 'cpu':
        return True
    if device.type == 'mps':
        return torch.backends.mps.is_available()
    backend = getattr(torch, device.type, None)
    if not (callable(getattr(backend, 'is_available', None)) and backend.is_available()):
        return False
    return device.index is None or device.index < backend.device_count()


def init_segmentor(config: ConfigSource = DEFAULT_CONFIG,
                   device: Optional[str] = None, vocabulary=None,
                   cfg_options: Optional[dict] = None, *, clip_weights: Optional[str] = None,
                   vfm_weights: Optional[str] = None, random_weights: bool = False,
                   precision: Optional[str] = None, prob_thd: Optional[float] = None,
                   crop: Optional[Size] = None, stride: Optional[Size] = None,
                   text_cache_dir: Union[str, bool, None] = None, seed: int = 0,
                   check_network: bool = True, trust_checkpoint: bool = False,
                   cuda_graphs: Union[bool, str, None] = None):
    """Build a training-free segmentor, ready for :func:`segment`.

    Args:
        config: a config name (``'proxyclip_fsa_vit-b16_dino-b8_voc21'``), a config file, or a
            :class:`mmengine.Config` (not modified).
        device: ``'cpu'``, ``'cuda'``, ``'cuda:1'`` …; None: CUDA if available.
        vocabulary: the classes; a bundled name (``'voc21'``), a class-name file, or a list
            (``['sky', 'house; building']``: ``;`` separates synonyms of one class). None keeps
            the config's. With another vocabulary than the config's, ``prob_thd`` defaults to 0.
        cfg_options: config keys to override (``{'model.logit_scale': 50}``).
        clip_weights, vfm_weights: local checkpoint files instead of the config's pretrained tags.
        random_weights: random weights (tests and pipeline checks only; a warning is logged).
        precision: ``'fp32'``, ``'fp16'`` or ``'bf16'`` for CLIP and the VFM.
        prob_thd: pixels whose top class probability is below it become class 0.
        crop, stride: sliding-window crop and stride (an int or (h, w)).
        text_cache_dir: text-embedding cache folder (False: none; None: the config's / default).
        seed: seed of random weights, so random models are reproducible.
        check_network: before downloading weights, probe huggingface.co (3 s); unreachable → use
            cached weights only and fail at once with
            :class:`~fsa_seg.apis.downloads.WeightsUnavailableError`.
        trust_checkpoint: unpickle local checkpoint files fully (they can run code); without
            it, files are read weights-only and anything else in them is refused.
        cuda_graphs: on a GPU, replay each crop batch from a CUDA graph captured once per batch
            shape (the same outputs, issued in one call: pays off over many images; forward
            hooks inside a crop then run only while a graph is captured). None: as the config
            says; ``'auto'``: so where the config says nothing and
            :func:`~fsa_seg.apis.configs.graphs_pay_off` on ``device``.

    Returns:
        the segmentor (an mmseg ``BaseSegmentor``) in eval mode on ``device``, with ``cfg`` and
        ``dataset_meta`` (classes and palette) attached as mmseg's ``init_model`` does.
    """
    cfg = load_config(config, cfg_options)
    apply_overrides(cfg, vocabulary=vocabulary, clip_weights=clip_weights,
                    vfm_weights=vfm_weights, random_weights=random_weights,
                    precision=precision, prob_thd=prob_thd, crop=crop, stride=stride,
                    text_cache_dir=text_cache_dir, trust_checkpoint=trust_checkpoint)
    device = device or default_device()
    use_cuda_graphs(cfg.model, cuda_graphs, device)
    _warn_if_pipelines_differ(cfg)
    model = build_segmentor(cfg, seed=seed, check_network=check_network)
    model.to(device)
    model.eval()
    return model


def build_segmentor(cfg: Config, seed: int = 0, check_network: bool = True):
    """``MODELS.build(cfg.model)`` with fast, explained failures when weights cannot be fetched,
    reproducible random weights, and ``cfg`` attached."""
    from mmseg.registry import MODELS
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    needed = downloadable_weights(cfg)
    offline = must_work_offline(needed, check_network)
    if has_random_weights(cfg):
        print_log(RANDOM_WEIGHTS_WARNING, logger='current', level=logging.WARNING)
    with torch.random.fork_rng(devices=[]), explained_download_failures(cfg, needed, offline), \
            explained_config_errors(cfg.filename):
        torch.manual_seed(seed)
        model = MODELS.build(cfg.model)
    model.cfg = cfg
    return model.eval()


# ---------------------------------------------------------------------------------- images
def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any PIL image → (H, W, 3) uint8 RGB: EXIF orientation applied, alpha dropped, grayscale
    repeated, 16-bit scaled to 8-bit."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I'):
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith('I;16') or values.max(initial=0) > 255:
            values = values / 257.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    elif image.mode == 'F':
        image = Image.fromarray(np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8))
    return np.asarray(image.convert('RGB'), dtype=np.uint8).copy()


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    """A uint8 array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) → (H, W, 3) RGB."""
    if array.dtype != np.uint8:
        raise ValueError(f'image arrays must be uint8, got {array.dtype}')
    if array.ndim == 3 and array.shape[2] in (1, 3, 4) or array.ndim == 2:
        if 0 in array.shape[:2]:
            raise ValueError(f'the image array is empty: {array.shape}')
        if array.ndim == 2 or array.shape[2] == 1:
            return np.repeat(array.reshape(*array.shape[:2], 1), 3, axis=2)
        return np.ascontiguousarray(array[..., :3])
    raise ValueError(f'image arrays must be (H, W), (H, W, 3) or (H, W, 4), got {array.shape}')


def load_image(source: ImageInput) -> np.ndarray:
    """An image file, PIL image or array → (H, W, 3) uint8 RGB.

    Arrays are taken as RGB (not mmcv's BGR): (H, W) grayscale, (H, W, 3) RGB or (H, W, 4) RGBA,
    uint8. Grayscale and RGBA files are converted the same way (alpha is dropped)."""
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source)
    if isinstance(source, Image.Image):
        return _to_rgb(source)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError('an image is a file path, a PIL image or a uint8 numpy array (H, W[, 3 '
                        f'or 4]); got a {type(source).__module__}.{type(source).__qualname__}')
    path = Path(source)
    if not path.is_file():
        raise ImageReadError(path, 'no such file')
    try:
        with Image.open(path) as image:
            image.load()
            return _to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageReadError(path, f'cannot read the image ({type(error).__name__}: '
                                   f'{error})') from error


def _evaluated_pipeline(cfg: Config) -> Optional[list]:
    return cfg.get('test_dataloader', {}).get('dataset', {}).get('pipeline')


def _warn_if_pipelines_differ(cfg: Config) -> None:
    """mmseg's ``inference_model`` reads only ``test_pipeline``; a config that edits it or the
    test dataloader's pipeline alone is said once, when its model is built."""
    evaluated = _evaluated_pipeline(cfg)
    if evaluated and cfg.get('test_pipeline') and list(cfg.test_pipeline) != list(evaluated):
        print_log(f'{cfg.filename}: test_pipeline differs from test_dataloader.dataset.pipeline; '
                  'images are prepared with the latter, as the evaluation prepares them',
                  logger='current', level=logging.WARNING)


def _pipeline_config(cfg: Config) -> list:
    """The steps that prepare an image: those of the evaluation (``test_dataloader``'s dataset),
    else ``test_pipeline``."""
    pipeline = _evaluated_pipeline(cfg) or cfg.get('test_pipeline')
    if not pipeline:
        raise ValueError(f'{cfg.filename}: no test_pipeline to prepare images with')
    steps = []
    for step in copy.deepcopy(list(pipeline)):
        kind = step['type'].split('.')[-1]
        if kind in ('LoadAnnotations', 'LoadDepthAnnotation'):
            continue
        if kind in ('LoadImageFromFile', 'InferencerLoader'):
            step = dict(type='LoadImageFromNDArray')
        steps.append(dict(step))
    if not steps or steps[0]['type'].split('.')[-1] != 'LoadImageFromNDArray':
        raise ValueError(f'{cfg.filename}: the test pipeline does not start by loading an image')
    return steps


def build_test_pipeline(cfg: Config) -> Compose:
    """The config's test pipeline for in-memory images: annotations dropped, the file loader
    replaced by ``LoadImageFromNDArray`` (which takes BGR, as mmcv loads)."""
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    return Compose(_pipeline_config(cfg))


@dataclass
class SegmentationResult:
    """One image's segmentation, at the image's own size.

    Attributes:
        labels: (H, W) int64 class indices.
        probs: (C, H, W) float32 class probabilities (the max over each class's synonyms of the
            softmax over all synonyms).
        class_names: the C class names (first synonym of each class).
        source: the image's path, if it came from a file.
        meta: ``img_shape`` (the network input's size), ``ori_shape`` and ``undefined_pixels``,
            the count of pixels whose probabilities are not finite, so labels arbitrary (the
            segmentor warns of them).
    """
    labels: np.ndarray
    probs: np.ndarray
    class_names: List[str]
    source: Optional[str] = None
    meta: Dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def pixel_counts(self) -> np.ndarray:
        """(C,) number of pixels of each class."""
        return np.bincount(self.labels.reshape(-1), minlength=self.num_classes)

    def shares(self) -> np.ndarray:
        """(C,) fraction of the image's pixels of each class (sums to 1)."""
        counts = self.pixel_counts().astype(np.float64)
        return counts / max(counts.sum(), 1.0)


def _resized_to_nothing(pipeline: Compose, height: int, width: int) -> bool:
    """Whether a keep-ratio ``Resize`` of the pipeline rounds a side of the image to 0 px."""
    for step in pipeline.transforms:
        if isinstance(step, Resize) and step.keep_ratio and step.scale:
            width, height = mmcv.rescale_size((width, height), step.scale)
            if min(width, height) < 1:
                return True
    return False


def prepare_image(pipeline: Compose, rgb: np.ndarray, source: Optional[str] = None) -> dict:
    """An RGB array through the test pipeline (``source``: its path, if it came from a file).

    Raises:
        ImageSizeError: the pipeline's resize leaves a side of no pixel (an image thousands of
            times wider than high, or higher than wide)."""
    height, width = rgb.shape[:2]
    if _resized_to_nothing(pipeline, height, width):  # OpenCV would refuse the resize
        raise ImageSizeError(source or 'the image', f'{height}x{width} px is too thin for the '
                             'resize of the config\'s test pipeline (a side would keep no '
                             'pixel)')
    item = pipeline(dict(img=np.ascontiguousarray(rgb[..., ::-1])))  # mmseg loads BGR
    if source is not None:   # the pipeline's LoadImageFromNDArray knows no path
        item['data_samples'].set_metainfo(dict(img_path=source))
    return item


def run_model(model, pipeline: Compose, images: Sequence[np.ndarray], batch_size: int = 1,
              sources: Optional[Sequence[Optional[str]]] = None) -> List[SegmentationResult]:
    """Segment RGB arrays (``sources``: their paths, where they came from files, for the results
    and the warnings); see :func:`run_prepared`."""
    if batch_size < 1:
        raise ValueError(f'batch_size must be at least 1, got {batch_size}')
    sources = list(sources or [None] * len(images))
    return run_prepared(model, [prepare_image(pipeline, image, source)
                                for image, source in zip(images, sources)], batch_size)


def run_prepared(model, prepared: Sequence[dict], batch_size: int = 1
                 ) -> List[SegmentationResult]:
    """Segment images prepared by :func:`prepare_image`. Images are batched by prepared size,
    as any data preprocessor takes them (mmseg's needs one size a batch); batch size never
    changes a result."""
    if batch_size < 1:
        raise ValueError(f'batch_size must be at least 1, got {batch_size}')
    sources = [item['data_samples'].metainfo.get('img_path') for item in prepared]
    groups: Dict[tuple, List[int]] = {}
    for index, item in enumerate(prepared):
        groups.setdefault(tuple(item['inputs'].shape), []).append(index)
    names = list(model.vocabulary.class_names)
    results: List[Optional[SegmentationResult]] = [None] * len(prepared)
    for indices in groups.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            data = dict(inputs=[prepared[i]['inputs'] for i in chunk],
                        data_samples=[prepared[i]['data_samples'] for i in chunk])
            with torch.no_grad():
                samples = model.test_step(data)
            for index, sample in zip(chunk, samples):
                results[index] = SegmentationResult(
                    labels=sample.pred_sem_seg.data[0].cpu().numpy().astype(np.int64),
                    probs=sample.seg_logits.data.float().cpu().numpy(),
                    class_names=names, source=sources[index],
                    meta=dict(img_shape=tuple(sample.metainfo['img_shape'][:2]),
                              ori_shape=tuple(sample.metainfo['ori_shape'][:2]),
                              undefined_pixels=sample.metainfo['undefined_pixels']))
    return results


def segment(model, images: Union[ImageInput, Sequence[ImageInput]], batch_size: int = 1
            ) -> Union[SegmentationResult, List[SegmentationResult]]:
    """Segment one image (path, PIL image, or RGB uint8 array) or a list of them.

    Returns a :class:`SegmentationResult` per image (a list for a list), at each image's size.
    Unreadable files raise :class:`ImageReadError`."""
    single = not isinstance(images, (list, tuple))
    items = [images] if single else list(images)
    arrays = [load_image(item) for item in items]
    sources = [str(item) if isinstance(item, (str, os.PathLike)) else None for item in items]
    results = run_model(model, build_test_pipeline(model.cfg), arrays, batch_size, sources)
    return results[0] if single else results
