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

Weights: a config names open_clip / timm pretrained tags, downloaded into their caches. Where
huggingface.co cannot be reached, building does not wait on retries: it uses only cached
weights and otherwise fails at once with :class:`WeightsUnavailableError`, which says which local
files to pass (``clip_weights=`` / ``vfm_weights=``, on the command line ``--clip-weights`` /
``--vfm-weights``).
"""
import copy
import difflib
import logging
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union
from urllib.parse import urlparse

import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import Compose
from mmengine.logging import print_log
from mmengine.registry import init_default_scope
from PIL import Image, ImageOps

from ..models.text import Vocabulary, load_vocabulary
from ..models.weights import WeightsError, is_local_path
from ..visualization import make_palette

DEFAULT_CONFIG = 'proxyclip_fsa_vit-b16_dino-b8_voc21'
PACKAGE_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = PACKAGE_DIR.parent
PRECISIONS = ('fp32', 'fp16', 'bf16')
HUB_PROBE_TIMEOUT = 3.0

ImageInput = Union[str, os.PathLike, np.ndarray, Image.Image]
Size = Union[int, Sequence[int]]


class ConfigNotFoundError(FileNotFoundError):
    """A config name or path that does not lead to a config file."""


class ImageReadError(OSError):
    """An image file that cannot be read (missing, corrupt or not an image)."""

    def __init__(self, path, reason: str):
        super().__init__(f'{path}: {reason}')
        self.path, self.reason = str(path), reason


class WeightsUnavailableError(WeightsError):
    """Pretrained weights could not be fetched; the message says which local files to pass."""


# ---------------------------------------------------------------------------------- configs
def config_roots() -> List[Path]:
    """Folders that config names are looked up in: ``$FSA_SEG_CONFIGS``, configs shipped inside
    the package (``fsa_seg/.mim/configs``, ``fsa_seg/configs``), and the checkout's ``configs/``."""
    candidates = [os.environ.get('FSA_SEG_CONFIGS'), PACKAGE_DIR / '.mim' / 'configs',
                  PACKAGE_DIR / 'configs', REPO_ROOT / 'configs']
    roots = []
    for candidate in candidates:
        if candidate and (Path(candidate) / '_base_' / 'default_runtime.py').is_file():
            root = Path(candidate).resolve()
            if root not in roots:
                roots.append(root)
    return roots


def _named_configs(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob('*.py')):
        if '_base_' not in path.relative_to(root).parts:
            yield path


def list_configs() -> List[str]:
    """Names of every config that :func:`resolve_config` finds by name."""
    return sorted({path.stem for root in config_roots() for path in _named_configs(root)})


def resolve_config(config: Union[str, os.PathLike]) -> Path:
    """A config file path, or a config name (``'proxyclip_fsa_vit-b16_dino-b8_voc21'``, with or
    without ``.py``) looked up in :func:`config_roots`."""
    path = Path(config).expanduser()
    if path.is_file():
        return path.resolve()
    name = path.name[:-3] if path.name.endswith('.py') else path.name
    roots = config_roots()
    if not roots:
        raise ConfigNotFoundError(
            f'config {str(config)!r} is not a file, and there is no configs folder to look the '
            f'name up in: this fsa_seg installation ({PACKAGE_DIR}) has no configs. Pass the path '
            f'of a config file (a checkout\'s configs/proxyclip/{DEFAULT_CONFIG}.py), or set '
            'FSA_SEG_CONFIGS to a checkout\'s configs/ folder.')
    for root in roots:
        for candidate in _named_configs(root):
            if candidate.stem == name:
                return candidate
    close = difflib.get_close_matches(name, list_configs(), n=5, cutoff=0.5)
    hint = f' Did you mean: {", ".join(close)}?' if close else ''
    raise ConfigNotFoundError(
        f'config {str(config)!r} is neither a file nor the name of a config in '
        f'{", ".join(str(r) for r in roots)}.{hint}')


def load_config(config: Union[str, os.PathLike, Config],
                cfg_options: Optional[dict] = None) -> Config:
    """A config (name, path or :class:`Config`, copied) with ``cfg_options`` merged in."""
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
    else:
        cfg = Config.fromfile(str(resolve_config(config)))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if 'model' not in cfg or 'clip' not in cfg.model:
        raise ValueError(f'{cfg.filename or "the config"} has no model.clip: not a config of an '
                         'fsa_seg training-free segmentor')
    return cfg


def _pair(value: Size, what: str) -> Tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) <= 0:
        raise ValueError(f'{what} must be a positive size or (height, width), got {value!r}')
    return pair


def _set_pretrained(component: dict, pretrained) -> None:
    component.pop('random_init', None)
    component['pretrained'] = pretrained


def apply_overrides(cfg: Config, *, vocabulary=None, clip_weights: Optional[str] = None,
                    vfm_weights: Optional[str] = None, random_weights: bool = False,
                    precision: Optional[str] = None, prob_thd: Optional[float] = None,
                    crop: Optional[Size] = None, stride: Optional[Size] = None,
                    text_cache_dir: Union[str, bool, None] = None) -> Config:
    """Apply the options of :func:`init_segmentor` to ``cfg.model`` (in place; see there)."""
    model = cfg.model
    if random_weights and (clip_weights or vfm_weights):
        raise ValueError('random weights and weight files exclude each other')
    if clip_weights:
        if not os.path.isfile(clip_weights):
            raise WeightsError(f'CLIP weights file not found: {clip_weights}')
        clip = dict(model.clip)
        tag = clip.get('pretrained')
        if clip.get('quick_gelu') is None and clip.get('arch') is None and tag \
                and not is_local_path(tag):
            # The tag decided QuickGELU; a file does not say, so keep what the tag implied.
            import open_clip
            clip['quick_gelu'] = bool(open_clip.get_pretrained_cfg(
                clip.get('model_name', 'ViT-B-16'), tag).get('quick_gelu', False))
        _set_pretrained(clip, os.path.abspath(clip_weights))
        model.clip = clip
    if vfm_weights:
        if 'vfm' not in model:
            raise ValueError(f'{model.type} has no vision foundation model: vfm weights apply to '
                             'ProxyCLIP configs only')
        if not os.path.isfile(vfm_weights):
            raise WeightsError(f'VFM weights file not found: {vfm_weights}')
        vfm = dict(model.vfm)
        _set_pretrained(vfm, os.path.abspath(vfm_weights))
        model.vfm = vfm
    if random_weights:
        model.clip = {k: v for k, v in model.clip.items() if k != 'pretrained'}
        model.clip['random_init'] = True
        if 'vfm' in model:
            model.vfm = dict(model.vfm, pretrained=None, random_init=True)
    if precision is not None:
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
        model.clip = dict(model.clip, precision=precision)
    if vocabulary is not None:
        vocab = load_vocabulary(vocabulary)
        own = load_vocabulary(model.vocabulary) if model.get('vocabulary') is not None else None
        model.vocabulary = [list(synonyms) for synonyms in vocab.classes]
        if vocab != own:
            # The config's threshold sends uncertain pixels to class 0 (its background); in
            # another vocabulary class 0 is whatever came first, so no threshold unless asked.
            model.prob_thd = 0.0
    if prob_thd is not None:
        if not 0.0 <= float(prob_thd) <= 1.0:
            raise ValueError(f'prob_thd must lie in [0, 1], got {prob_thd}')
        model.prob_thd = float(prob_thd)
    if crop is not None or stride is not None:
        test_cfg = dict(model.get('test_cfg') or dict(  # TrainingFreeSegmentor's default
            mode='slide', crop_size=(336, 336), stride=(112, 112)))
        slide = test_cfg.get('mode') == 'slide'
        crop_hw = _pair(crop, 'crop') if crop is not None else (
            tuple(test_cfg['crop_size']) if slide else None)
        if crop_hw is None:
            raise ValueError(f'{cfg.filename}: whole-image inference; give a crop size as well')
        stride_hw = _pair(stride, 'stride') if stride is not None else (
            tuple(test_cfg['stride']) if slide else crop_hw)
        stride_hw = tuple(min(s, c) for s, c in zip(stride_hw, crop_hw)) if stride is None \
            else stride_hw
        if any(s > c for s, c in zip(stride_hw, crop_hw)):
            raise ValueError(f'stride {stride_hw} is larger than the crop {crop_hw}: windows '
                             'would leave gaps')
        model.test_cfg = dict(mode='slide', crop_size=crop_hw, stride=stride_hw)
        if 'vfm' in model and 'input_size' in model.vfm:  # MAE: built at the slide crop size
            model.vfm = dict(model.vfm, input_size=crop_hw)
    if text_cache_dir is not None:
        model.text_cache_dir = text_cache_dir
    return cfg


# ---------------------------------------------------------------------------------- weights
@dataclass(frozen=True)
class DownloadableWeights:
    """Pretrained weights that a config fetches by tag, and how to give them as a local file."""
    component: str       # 'CLIP' or 'VFM'
    option: str          # command-line flag
    argument: str        # init_segmentor keyword
    description: str
    sources: Tuple[str, ...]


def downloadable_weights(cfg: Config) -> List[DownloadableWeights]:
    """The weights ``cfg.model`` would download (pretrained tags, not files nor random)."""
    found = []
    clip = cfg.model.clip
    tag = clip.get('pretrained')
    if tag and not clip.get('random_init') and clip.get('arch') is None \
            and not is_local_path(str(tag)):
        import open_clip
        name = clip.get('model_name', 'ViT-B-16')
        pretrained_cfg = open_clip.get_pretrained_cfg(name, tag) or {}
        sources = []
        if pretrained_cfg.get('hf_hub'):
            sources.append(f'https://huggingface.co/{pretrained_cfg["hf_hub"].strip("/")} '
                           '(open_clip_model.safetensors or open_clip_pytorch_model.bin)')
        if pretrained_cfg.get('url'):
            sources.append(pretrained_cfg['url'])
        found.append(DownloadableWeights('CLIP', '--clip-weights', 'clip_weights',
                                         f'open_clip {name}, pretrained={tag!r}', tuple(sources)))
    vfm = cfg.model.get('vfm')
    if vfm and not vfm.get('random_init'):
        from ..models.vfm.timm_vfm import VFM_PRESETS
        preset = VFM_PRESETS.get(vfm.get('name', 'dino_vitb8'))
        pretrained = vfm.get('pretrained', True)
        if preset is not None and pretrained is True:
            pretrained = preset.tag
        if preset is not None and isinstance(pretrained, str) and not is_local_path(pretrained) \
                and not os.path.isfile(pretrained):
            import timm
            full_name = f'{preset.arch}.{pretrained}'
            sources = []
            try:
                pretrained_cfg = timm.models.get_pretrained_cfg(full_name)
            except RuntimeError:
                pretrained_cfg = None
            if pretrained_cfg is not None and pretrained_cfg.hf_hub_id:
                sources.append(f'https://huggingface.co/{pretrained_cfg.hf_hub_id} '
                               '(model.safetensors)')
            if pretrained_cfg is not None and pretrained_cfg.url:
                sources.append(pretrained_cfg.url)
            found.append(DownloadableWeights('VFM', '--vfm-weights', 'vfm_weights',
                                             f'timm {full_name}', tuple(sources)))
    return found


def _hub_address() -> Tuple[str, int]:
    """Host and port that a Hugging Face download connects to first (the proxy if one is set)."""
    endpoint = os.environ.get('HF_ENDPOINT') or 'https://huggingface.co'
    proxy = os.environ.get('HTTPS_PROXY') or os.environ.get('https_proxy') \
        or os.environ.get('ALL_PROXY') or os.environ.get('all_proxy')
    parsed = urlparse(proxy if proxy else endpoint)
    default_port = 443 if parsed.scheme == 'https' else 80 if parsed.scheme == 'http' else 1080
    return parsed.hostname or 'huggingface.co', parsed.port or default_port


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT) -> bool:
    """Whether a TCP connection to huggingface.co (or ``$HF_ENDPOINT``, or the HTTPS proxy)
    opens within ``timeout`` seconds."""
    try:
        with socket.create_connection(_hub_address(), timeout=timeout):
            return True
    except OSError:
        return False


def _env_offline() -> bool:
    return os.environ.get('HF_HUB_OFFLINE', '').strip().lower() in ('1', 'true', 'yes', 'on')


@contextmanager
def hub_offline(enabled: bool = True):
    """Hugging Face downloads use the local cache only (``HF_HUB_OFFLINE``) inside the block."""
    if not enabled:
        yield
        return
    import huggingface_hub.constants as hf_constants
    saved_constant = hf_constants.HF_HUB_OFFLINE
    saved_env = os.environ.get('HF_HUB_OFFLINE')
    hf_constants.HF_HUB_OFFLINE = True
    os.environ['HF_HUB_OFFLINE'] = '1'
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = saved_constant
        if saved_env is None:
            os.environ.pop('HF_HUB_OFFLINE', None)
        else:
            os.environ['HF_HUB_OFFLINE'] = saved_env


@contextmanager
def _quiet_download_errors(enabled: bool):
    """Offline, open_clip logs each failed download before raising; the raised error (and
    :func:`missing_weights_message`) already says it, so those log lines are held back."""
    if not enabled:
        yield
        return
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(previous)


def missing_weights_message(config_name: str, needed: Sequence[DownloadableWeights],
                            error: Exception, offline: bool) -> str:
    why = ('huggingface.co cannot be reached from here and they are not in the local cache'
           if offline else 'the download failed')
    lines = [f'cannot load the pretrained weights of {config_name}: {why}.',
             'Download these files where there is network access and pass them as local files:']
    for weights in needed:
        lines.append(f'  {weights.option} PATH   {weights.component}: {weights.description}')
        lines.extend(f'      from {source}' for source in weights.sources)
    arguments = ', '.join(f'{w.argument}=PATH' for w in needed)
    lines += [f'  (Python: init_segmentor(..., {arguments}))',
              'or copy a Hugging Face cache that holds them (~/.cache/huggingface/hub, or '
              '$HF_HOME/hub) to this machine.',
              f'Underlying error: {type(error).__name__}: {error}']
    return '\n'.join(lines)


# ---------------------------------------------------------------------------------- building
def _local_weight_files(cfg: Config) -> List[str]:
    components = [cfg.model.clip, cfg.model.get('vfm') or {}]
    return [c['pretrained'] for c in components
            if isinstance(c.get('pretrained'), str) and os.path.isfile(c['pretrained'])]


def has_random_weights(cfg: Config) -> bool:
    return bool(cfg.model.clip.get('random_init')) or bool(
        cfg.model.get('vfm') and cfg.model.vfm.get('random_init'))


def _model_dtype_cast(model: torch.nn.Module, precision: Optional[str]) -> None:
    """The VFM runs in the CLIP's precision too (TimmVFM casts its inputs to its own dtype)."""
    if precision and precision != 'fp32' and getattr(model, 'vfm', None) is not None:
        dtype = {'fp16': torch.float16, 'bf16': torch.bfloat16}[precision]
        model.vfm.to(dtype)


def default_device() -> str:
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def init_segmentor(config: Union[str, os.PathLike, Config] = DEFAULT_CONFIG,
                   device: Optional[str] = None, vocabulary=None,
                   cfg_options: Optional[dict] = None, *, clip_weights: Optional[str] = None,
                   vfm_weights: Optional[str] = None, random_weights: bool = False,
                   precision: Optional[str] = None, prob_thd: Optional[float] = None,
                   crop: Optional[Size] = None, stride: Optional[Size] = None,
                   text_cache_dir: Union[str, bool, None] = None, seed: int = 0,
                   check_network: bool = True):
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
            cached weights only and fail at once with :class:`WeightsUnavailableError`.

    Returns:
        the segmentor (an mmseg ``BaseSegmentor``) in eval mode on ``device``, with ``cfg`` and
        ``dataset_meta`` (classes and palette) attached as mmseg's ``init_model`` does.
    """
    cfg = load_config(config, cfg_options)
    apply_overrides(cfg, vocabulary=vocabulary, clip_weights=clip_weights,
                    vfm_weights=vfm_weights, random_weights=random_weights,
                    precision=precision, prob_thd=prob_thd, crop=crop, stride=stride,
                    text_cache_dir=text_cache_dir)
    model = build_segmentor(cfg, seed=seed, check_network=check_network)
    model.to(device or default_device())
    _model_dtype_cast(model, precision)
    # Query embeddings on the CLIP's device, whether or not the segmentor keeps them as buffers.
    model.set_query_embeddings(model.query_embeddings)
    model.eval()
    return model


def build_segmentor(cfg: Config, seed: int = 0, check_network: bool = True):
    """``MODELS.build(cfg.model)`` with fast, explained failures when weights cannot be fetched,
    reproducible random weights, and ``cfg``/``dataset_meta`` attached."""
    from mmseg.registry import MODELS
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    config_name = Path(cfg.filename).stem if cfg.filename else 'the config'
    needed = downloadable_weights(cfg)
    offline = _env_offline()
    if needed and check_network and not offline and not hub_reachable():
        offline = True
        print_log('huggingface.co is not reachable: using only weights already in the local '
                  'caches', logger='current', level=logging.WARNING)
    if has_random_weights(cfg):
        print_log(RANDOM_WEIGHTS_WARNING, logger='current', level=logging.WARNING)
    try:
        with torch.random.fork_rng(devices=[]), hub_offline(offline and not _env_offline()), \
                _quiet_download_errors(offline):
            torch.manual_seed(seed)
            model = MODELS.build(cfg.model)
    except WeightsError as error:
        if not needed or isinstance(error, WeightsUnavailableError) \
                or any(path in str(error) for path in _local_weight_files(cfg)):
            raise  # nothing to download, or a local file is the problem: the error says which
        raise WeightsUnavailableError(
            missing_weights_message(config_name, needed, error, offline)) from error
    model.cfg = cfg
    refresh_dataset_meta(model)
    return model.eval()


RANDOM_WEIGHTS_WARNING = (
    '\n' + '!' * 78 + '\n'
    '!!  RANDOM WEIGHTS: this model was built without pretrained weights.\n'
    '!!  Its predictions are MEANINGLESS; use it only to test the pipeline.\n' + '!' * 78)


def refresh_dataset_meta(model) -> None:
    """mmseg's ``dataset_meta`` (classes, palette) from the model's current vocabulary."""
    names = list(model.vocabulary.class_names)
    model.dataset_meta = dict(classes=tuple(names),
                              palette=make_palette(len(names)).tolist())


def set_vocabulary(model, vocabulary, templates=None) -> Vocabulary:
    """``model.set_vocabulary`` that also refreshes ``dataset_meta``."""
    vocab = model.set_vocabulary(vocabulary, templates)
    refresh_dataset_meta(model)
    return vocab


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


def load_image(source: ImageInput) -> np.ndarray:
    """An image file, PIL image or array → (H, W, 3) uint8 RGB.

    Arrays are taken as RGB (not mmcv's BGR): (H, W) grayscale, (H, W, 3) RGB or (H, W, 4) RGBA,
    uint8. Grayscale and RGBA files are converted the same way (alpha is dropped)."""
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8:
            raise ValueError(f'image arrays must be uint8, got {source.dtype}')
        if source.ndim == 2:
            return np.repeat(source[..., None], 3, axis=2)
        if source.ndim == 3 and source.shape[2] in (3, 4):
            return np.ascontiguousarray(source[..., :3])
        if source.ndim == 3 and source.shape[2] == 1:
            return np.repeat(source, 3, axis=2)
        raise ValueError(f'image arrays must be (H, W), (H, W, 3) or (H, W, 4), got {source.shape}')
    if isinstance(source, Image.Image):
        return _to_rgb(source)
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


def _pipeline_config(cfg: Config) -> list:
    pipeline = cfg.get('test_pipeline') or cfg.get('test_dataloader', {}).get(
        'dataset', {}).get('pipeline')
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


def _prepare(pipeline: Compose, rgb: np.ndarray) -> dict:
    return pipeline(dict(img=np.ascontiguousarray(rgb[..., ::-1])))  # mmseg loads BGR


def run_model(model, pipeline: Compose, images: Sequence[np.ndarray],
              batch_size: int = 1) -> List[SegmentationResult]:
    """Segment RGB arrays. Images whose prepared size differs are never batched together (the
    data preprocessor needs one size per batch); batch size never changes a result."""
    if batch_size < 1:
        raise ValueError(f'batch_size must be at least 1, got {batch_size}')
    prepared = [_prepare(pipeline, image) for image in images]
    groups: Dict[tuple, List[int]] = {}
    for index, item in enumerate(prepared):
        groups.setdefault(tuple(item['inputs'].shape), []).append(index)
    names = list(model.vocabulary.class_names)
    results: List[Optional[SegmentationResult]] = [None] * len(images)
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
                    class_names=names,
                    meta=dict(img_shape=tuple(sample.metainfo['img_shape'][:2]),
                              ori_shape=tuple(sample.metainfo['ori_shape'][:2])))
    return results


def segment(model, images: Union[ImageInput, Sequence[ImageInput]], batch_size: int = 1
            ) -> Union[SegmentationResult, List[SegmentationResult]]:
    """Segment one image (path, PIL image, or RGB uint8 array) or a list of them.

    Returns a :class:`SegmentationResult` per image (a list for a list), at each image's size.
    Unreadable files raise :class:`ImageReadError`."""
    single = not isinstance(images, (list, tuple))
    items = [images] if single else list(images)
    arrays = [load_image(item) for item in items]
    results = run_model(model, build_test_pipeline(model.cfg), arrays, batch_size)
    for item, result in zip(items, results):
        if isinstance(item, (str, os.PathLike)):
            result.source = str(item)
    return results[0] if single else results
