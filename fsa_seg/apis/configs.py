"""Configs by name or path, and the options of :func:`~fsa_seg.apis.init_segmentor` applied to
them.

A config name (``'proxyclip_fsa_vit-b16_dino-b8_voc21'``, with or without ``.py``) is looked up
in :func:`config_roots`; a path is used as it is.
"""
import copy
import difflib
import fnmatch
import inspect
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Set, Tuple, Union

import torch
from mmengine.config import Config
from mmengine.config.utils import ConfigParsingError

from ..models.components import model_components
from ..models.segmentors.base import (
    DEFAULT_TEST_CFG,
    TrainingFreeSegmentor,
    checked_prob_thd,
    size_pair,
    sliding_window,
)
from ..models.text import load_vocabulary
from ..models.weights import WeightsError

DEFAULT_CONFIG = 'proxyclip_fsa_vit-b16_dino-b8_voc21'
PACKAGE_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = PACKAGE_DIR.parent
PRECISIONS = ('fp32', 'fp16', 'bf16')   # what inference offers (fp64: tests only)

ConfigSource = Union[str, os.PathLike, Config]
Size = Union[int, Sequence[int]]


class ConfigNotFoundError(FileNotFoundError):
    """A config name or path that does not lead to a config file."""


class ConfigError(ValueError):
    """A config file that cannot be read, or whose model or dataset cannot be built from it."""


# mmengine's builders prefix each error with the class that raised it, once per level.
_BUILD_PREFIX = re.compile(r'^(class `\w+` in [\w.]+: )+')


def plain_message(error: BaseException) -> str:
    """An exception's message without mmengine's builder prefixes (and KeyError's quotes)."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return _BUILD_PREFIX.sub('', str(message)).strip()


def _registry_miss(error: BaseException) -> bool:
    return isinstance(error, KeyError) and 'registry' in plain_message(error)


@contextmanager
def explained_config_errors(where: str):
    """Errors of building from a config (a wrong value, an unknown argument or type) →
    :class:`ConfigError` naming ``where``; others pass unchanged."""
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError) as error:
        if isinstance(error, KeyError) and not _registry_miss(error):
            raise
        raise ConfigError(f'{where}: {plain_message(error)}') from error


# ---------------------------------------------------------------------------------- lookup
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


def list_configs(pattern: Optional[str] = None) -> List[str]:
    """Names of every config that :func:`resolve_config` finds by name; with ``pattern``, those
    matching it (shell wildcards; without any, a substring)."""
    names = sorted({path.stem for root in config_roots() for path in _named_configs(root)})
    if pattern is None:
        return names
    if not any(char in pattern for char in '*?['):
        pattern = f'*{pattern}*'
    return [name for name in names if fnmatch.fnmatchcase(name, pattern)]


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


# ---------------------------------------------------------------------------------- loading
def read_config(config: ConfigSource, cfg_options: Optional[dict] = None) -> Config:
    """A config (name, path or :class:`Config`, copied) with ``cfg_options`` merged in."""
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
    else:
        path = resolve_config(config)
        try:
            cfg = Config.fromfile(str(path))
        except (SyntaxError, NameError, AttributeError, KeyError, TypeError, ValueError,
                ImportError, FileNotFoundError, ConfigParsingError) as error:
            # Whatever fails while reading a config file is a problem of that file (or of one
            # of its _base_ files, which mmengine's message names).
            raise ConfigError(f'cannot read config {path}: {type(error).__name__}: '
                              f'{plain_message(error)}') from error
    if cfg_options:
        try:
            cfg.merge_from_dict(cfg_options)
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(f'--cfg-options {cfg_options}: {plain_message(error)}') from error
    return cfg


# ---------------------------------------------------------------------------------- export
def composition_variables() -> Set[str]:
    """Top-level variables our configs only use to compose others (``_base_.clip``,
    ``_base_.protocol`` …): after merging they are copies of what the model holds, so an export
    leaves them out (editing them would change nothing)."""
    names = set()
    for root in config_roots():
        for path in root.rglob('*.py'):
            names.update(re.findall(r'_base_\.(\w+)', path.read_text(encoding='utf-8')))
    return names


def _dataset_copies(cfg: Config) -> Set[str]:
    """mmseg's dataset variables (``data_root``, ``dataset_type``) where they are copies of the
    test dataset's values: editing them in an export would change nothing."""
    dataset = cfg.get('test_dataloader', {}).get('dataset', {})
    return {name for name, key in (('data_root', 'data_root'), ('dataset_type', 'type'))
            if name in cfg and key in dataset and cfg[name] == dataset[key]}


def export_config(config: ConfigSource, cfg_options: Optional[dict] = None) -> str:
    """A config with every base merged in, as Python text: self-contained, to edit or to use as
    a ``_base_`` from anywhere (no checkout needed)."""
    from ..version import __version__
    cfg = read_config(config, cfg_options)
    unused = composition_variables() | _dataset_copies(cfg)
    merged = Config({k: v for k, v in cfg.to_dict().items() if k not in unused})
    name = Path(cfg.filename).stem if cfg.filename else 'config'
    return (f'# {name}: exported by fsa-seg {__version__} (`fsa-seg config {name}`), every base '
            'merged in.\n# Self-contained: edit it, or inherit it with _base_ = '
            "['./this_file.py'].\n" + merged.pretty_text)


def load_config(config: ConfigSource, cfg_options: Optional[dict] = None) -> Config:
    """:func:`read_config`, refusing configs that are not of an fsa_seg segmentor."""
    cfg = read_config(config, cfg_options)
    if segmentor_class(cfg.get('model') or {}) is None:
        raise ValueError(f'{cfg.filename or "the config"}: its model is not an fsa_seg '
                         'training-free segmentor (fsa_seg.models.segmentors)')
    return cfg


def segmentor_class(model: dict) -> Optional[type]:
    """The training-free segmentor class a model config builds, or None."""
    cls = _registered_class(model.get('type'))
    return cls if isinstance(cls, type) and issubclass(cls, TrainingFreeSegmentor) else None


def components(model: dict) -> List[Tuple[str, type]]:
    """(key, class) of the weighted components of a model config (CLIP, a VFM, …)."""
    return list(model_components(model, segmentor_class(model)))


def _config_nodes(node) -> Iterator[dict]:
    """Every dict in a config tree, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _config_nodes(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _config_nodes(value)


def has_random_weights(cfg: Config) -> bool:
    """Whether any part of the model is built with random weights (``random_init``, the one
    opt-in every weighted component takes)."""
    return any(node.get('random_init') for node in _config_nodes(cfg.model))


# ---------------------------------------------------------------------------------- overrides
GRAPH_CHOICES = (True, False, None, 'auto')  # cuda_graphs of use_cuda_graphs


def apply_overrides(cfg: Config, *, vocabulary=None, clip_weights: Optional[str] = None,
                    vfm_weights: Optional[str] = None, random_weights: bool = False,
                    precision: Optional[str] = None, prob_thd: Optional[float] = None,
                    crop: Optional[Size] = None, stride: Optional[Size] = None,
                    text_cache_dir: Union[str, bool, None] = None,
                    trust_checkpoint: bool = False) -> Config:
    """Apply the options of :func:`init_segmentor` to ``cfg.model`` (in place; see there)."""
    model = cfg.model
    if random_weights and (clip_weights or vfm_weights):
        raise ValueError('random weights and weight files exclude each other')
    for argument, path in (('clip_weights', clip_weights), ('vfm_weights', vfm_weights)):
        if path:
            use_weights_file(model, argument, path)
    if random_weights:
        use_random_weights(model)
    if precision is not None:
        use_precision(model, precision)
    if vocabulary is not None:
        _use_vocabulary(model, vocabulary)
    if prob_thd is not None:
        model.prob_thd = checked_prob_thd(prob_thd)
    if crop is not None or stride is not None:
        _use_sliding_window(cfg, crop, stride)
    if text_cache_dir is not None:
        model.text_cache_dir = text_cache_dir
    if trust_checkpoint:
        trust_checkpoints(model)
    return cfg


def use_precision(model: dict, precision: str) -> None:
    """Run the model in ``precision`` (fp32, fp16, bf16): every component that takes one (the
    others follow CLIP's inside the segmentor)."""
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
    for key, component in components(model):
        if not component.takes_precision:
            continue
        # the default stays implicit: a config asked for what it runs in is the same config
        # (a resumed evaluation compares them)
        default = inspect.signature(component).parameters['precision'].default
        if model[key].get('precision', default) != precision:
            model[key] = dict(model[key], precision=precision)


def use_cuda_graphs(model: dict, cuda_graphs: Union[bool, str, None],
                    device: Optional[str]) -> None:
    """Replay crop batches from CUDA graphs (the segmentor's ``cuda_graphs``) or not. None: as
    the config says; ``'auto'``: as the config says where it sets ``cuda_graphs``, else where
    :func:`graphs_pay_off` on ``device`` (None: CUDA if available)."""
    if cuda_graphs not in GRAPH_CHOICES:
        raise ValueError(f'cuda_graphs must be one of {GRAPH_CHOICES}, got {cuda_graphs!r}')
    if cuda_graphs is None or (cuda_graphs == 'auto' and 'cuda_graphs' in model):
        return
    if cuda_graphs == 'auto':
        if not graphs_pay_off(model, device):
            return
        cuda_graphs = True
    segmentor = segmentor_class(model)
    if cuda_graphs and segmentor is not None and not segmentor.supports_cuda_graphs:
        raise ValueError(f'{segmentor.__name__} runs host code per crop and cannot replay '
                         'crops as CUDA graphs: leave out --cuda-graphs')
    model['cuda_graphs'] = cuda_graphs


def graphs_pay_off(model: dict, device: Optional[str] = None) -> bool:
    """Whether crops are replayed from CUDA graphs by default: on a CUDA device, by a segmentor
    that can, sliding windows (one capture per crop-batch shape, a few per dataset; whole
    images would need one per image size). On an H100, ``tools/test.py`` with ProxyCLIP + FSA
    in fp16: 103 images/s, 39.6 eagerly, the same labels."""
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    segmentor = segmentor_class(model)
    test_cfg = model.get('test_cfg') or {}
    return (str(device).startswith('cuda') and segmentor is not None and
            segmentor.supports_cuda_graphs and test_cfg.get('mode', 'slide') == 'slide')


def use_weights_file(model: dict, argument: str, path: str) -> None:
    """The component that takes ``argument`` (``clip_weights``, ``vfm_weights``: its
    ``weights_argument``) loads the local file ``path``, switched by its own rule."""
    keys = [(key, cls) for key, cls in components(model) if cls.weights_argument == argument]
    option = '--' + argument.replace('_', '-')
    if not keys:
        raise ValueError(f'{model.get("type")} has no component that takes {option} '
                         f'({argument}=)')
    if not os.path.isfile(path):
        raise WeightsError(f'{option}: weights file not found: {path}')
    for key, cls in keys:
        model[key] = cls.weights_file_config(dict(model[key]), os.path.abspath(path))


def _registered_class(kind):
    """The class a config's ``type`` names in mmseg's MODELS registry, or None."""
    from mmseg.registry import MODELS
    if isinstance(kind, type):
        return kind
    return MODELS.get(kind) if isinstance(kind, str) else None


def _with_random_weights(node, switched: List[str]):
    if isinstance(node, (list, tuple)):
        return type(node)(_with_random_weights(value, switched) for value in node)
    if not isinstance(node, dict):
        return node
    node = {key: _with_random_weights(value, switched) for key, value in node.items()}
    component = _registered_class(node.get('type'))
    if hasattr(component, 'random_weights_config'):
        switched.append(component.__name__)
        return component.random_weights_config(node)
    return node


def use_random_weights(model: dict) -> List[str]:
    """Build every component of a model config with random weights: the explicit opt-in of
    tests, benchmarks and pipeline checks. Each component found by its ``type`` that knows how
    (a ``random_weights_config`` classmethod) rewrites its own config; this function knows no
    component and no config key. Returns the components switched."""
    _add_default_types(model)
    switched: List[str] = []
    for key, value in list(model.items()):
        model[key] = _with_random_weights(value, switched)
    if not switched and not any(node.get('random_init') for node in _config_nodes(model)):
        raise ConfigError(f'no part of {model.get("type", "the model")} can be built with random '
                          'weights: no component whose type has a random_weights_config')
    return switched


def _add_default_types(model: dict) -> None:
    """Give the segmentor's components their default type where the config names none (a
    component replaced with ``_delete_=True``), so that they are found by type."""
    defaults = getattr(segmentor_class(model), 'component_types', {})
    for key, kind in defaults.items():
        if isinstance(model.get(key), dict) and 'type' not in model[key]:
            model[key] = dict(type=kind, **model[key])


def trust_checkpoints(model: dict) -> List[str]:
    """Let every component that reads checkpoint files (a class taking ``trust_checkpoint``,
    found by its ``type``) unpickle them fully: ``--trust-checkpoint``. Returns the components
    switched."""
    import inspect
    _add_default_types(model)
    switched = []
    for node in _config_nodes(model):
        component = _registered_class(node.get('type'))
        if component is not None and 'trust_checkpoint' in inspect.signature(
                component.__init__).parameters:
            node['trust_checkpoint'] = True
            switched.append(component.__name__)
    return switched


def _use_vocabulary(model, vocabulary) -> None:
    vocab = load_vocabulary(vocabulary)
    own = load_vocabulary(model.vocabulary) if model.get('vocabulary') is not None else None
    # A bundled name or a file stays as it is (bundled lists keep their display names and are
    # not held to the checks of a user's list); a list is written out.
    model.vocabulary = (str(vocabulary) if isinstance(vocabulary, (str, os.PathLike))
                        else [list(synonyms) for synonyms in vocab.classes])
    if vocab != own:
        # The config's threshold sends uncertain pixels to class 0 (its background); in
        # another vocabulary class 0 is whatever came first, so no threshold unless asked.
        model.prob_thd = 0.0


def _use_sliding_window(cfg: Config, crop: Optional[Size], stride: Optional[Size]) -> None:
    """Slide with the given crop and stride; what is not given comes from the config's window
    (a stride no larger than the crop), and a whole-image config must give the crop."""
    model = cfg.model
    test_cfg = dict(model.get('test_cfg') or DEFAULT_TEST_CFG)
    slide = test_cfg.get('mode') == 'slide'
    if crop is not None:
        crop_hw = size_pair(crop, 'crop')
    elif slide:
        crop_hw = size_pair(test_cfg['crop_size'], 'crop')
    else:
        raise ValueError(f'{cfg.filename}: whole-image inference; give a crop size as well')
    if stride is not None:
        stride_hw = stride
    elif slide:
        stride_hw = tuple(min(s, c) for s, c in zip(size_pair(test_cfg['stride'], 'stride'),
                                                    crop_hw))
    else:
        stride_hw = crop_hw
    crop_hw, stride_hw = sliding_window(crop_hw, stride_hw)
    model.test_cfg = dict(mode='slide', crop_size=crop_hw, stride=stride_hw)
