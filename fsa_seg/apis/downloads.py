"""Pretrained weights that a config downloads, and what happens when they cannot be.

A config names open_clip / timm pretrained tags, downloaded into their caches. Where
huggingface.co cannot be reached, building does not wait on retries: it uses only cached
weights and otherwise fails at once with :class:`WeightsUnavailableError`, which says which local
files to pass (``clip_weights=`` / ``vfm_weights=``, on the command line ``--clip-weights`` /
``--vfm-weights``).
"""
import logging
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple
from urllib.parse import urlparse

from mmengine.config import Config
from mmengine.logging import print_log

from ..models.weights import WeightsError, is_local_path

HUB_PROBE_TIMEOUT = 3.0


class WeightsUnavailableError(WeightsError):
    """Pretrained weights could not be fetched; the message says which local files to pass."""


# ---------------------------------------------------------------------------------- what
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
    found = [_clip_download(cfg.model.clip), _vfm_download(cfg.model.get('vfm'))]
    return [weights for weights in found if weights is not None]


def _clip_download(clip: dict) -> Optional[DownloadableWeights]:
    tag = clip.get('pretrained')
    if not tag or clip.get('random_init') or clip.get('arch') is not None \
            or is_local_path(str(tag)):
        return None
    import open_clip
    name = clip.get('model_name', 'ViT-B-16')
    pretrained_cfg = open_clip.get_pretrained_cfg(name, tag) or {}
    sources = []
    if pretrained_cfg.get('hf_hub'):
        sources.append(f'https://huggingface.co/{pretrained_cfg["hf_hub"].strip("/")} '
                       '(open_clip_model.safetensors or open_clip_pytorch_model.bin)')
    if pretrained_cfg.get('url'):
        sources.append(pretrained_cfg['url'])
    return DownloadableWeights('CLIP', '--clip-weights', 'clip_weights',
                               f'open_clip {name}, pretrained={tag!r}', tuple(sources))


def _vfm_download(vfm: Optional[dict]) -> Optional[DownloadableWeights]:
    if not vfm or vfm.get('random_init'):
        return None
    from ..models.vfm.timm_vfm import VFM_PRESETS, timm_pretrained_cfg
    preset = VFM_PRESETS.get(vfm.get('name', 'dino_vitb8'))
    if preset is None:
        return None
    pretrained = vfm.get('pretrained', True)
    if pretrained is True:
        pretrained = preset.tag
    if not isinstance(pretrained, str) or is_local_path(pretrained) \
            or os.path.isfile(pretrained):
        return None
    full_name = f'{preset.arch}.{pretrained}'
    pretrained_cfg = timm_pretrained_cfg(full_name)
    sources = []
    if pretrained_cfg is not None and pretrained_cfg.hf_hub_id:
        sources.append(f'https://huggingface.co/{pretrained_cfg.hf_hub_id} (model.safetensors)')
    if pretrained_cfg is not None and pretrained_cfg.url:
        sources.append(pretrained_cfg.url)
    return DownloadableWeights('VFM', '--vfm-weights', 'vfm_weights', f'timm {full_name}',
                               tuple(sources))


# ---------------------------------------------------------------------------------- network
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


def must_work_offline(needed: Sequence[DownloadableWeights], check_network: bool = True) -> bool:
    """Whether downloads must come from the local caches only: ``HF_HUB_OFFLINE`` says so, or
    weights are ``needed`` and huggingface.co does not answer the probe."""
    if _env_offline():
        return True
    if needed and check_network and not hub_reachable():
        print_log('huggingface.co is not reachable: using only weights already in the local '
                  'caches', logger='current', level=logging.WARNING)
        return True
    return False


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


# ---------------------------------------------------------------------------------- failures
@contextmanager
def explained_download_failures(cfg: Config, needed: Sequence[DownloadableWeights],
                                offline: bool):
    """Build ``cfg``'s weights inside the block: offline, from the caches only and without
    open_clip's log lines; a failed download becomes a :class:`WeightsUnavailableError`."""
    try:
        with hub_offline(offline and not _env_offline()), _quiet_download_errors(offline):
            yield
    except WeightsError as error:
        if not needed or isinstance(error, WeightsUnavailableError) \
                or any(path in str(error) for path in _local_weight_files(cfg)):
            raise  # nothing to download, or a local file is the problem: the error says which
        config_name = Path(cfg.filename).stem if cfg.filename else 'the config'
        raise WeightsUnavailableError(
            missing_weights_message(config_name, needed, error, offline)) from error


def _local_weight_files(cfg: Config) -> List[str]:
    components = [cfg.model.clip, cfg.model.get('vfm') or {}]
    return [c['pretrained'] for c in components
            if isinstance(c.get('pretrained'), str) and os.path.isfile(c['pretrained'])]


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
