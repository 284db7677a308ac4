"""Pretrained weights that a config downloads, and what happens when they cannot be.

A config names open_clip / timm pretrained tags, downloaded into their caches. Where
huggingface.co cannot be reached, building does not wait on retries: it uses only cached
weights and otherwise fails at once with :class:`WeightsUnavailableError`, which says which local
files to pass (``clip_weights=`` / ``vfm_weights=``, on the command line ``--clip-weights`` /
``--vfm-weights``).
"""
import logging
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import List, Sequence

from mmengine.config import Config
from mmengine.logging import print_log

from ..models.components import DownloadableWeights
from ..models.hub import env_offline, hub_offline, hub_reachable
from ..models.weights import WeightsError

_PROCESS_STATE = threading.RLock()  # held while the offline flag or logging are switched


class WeightsUnavailableError(WeightsError):
    """Pretrained weights could not be fetched; the message says which local files to pass."""


# ---------------------------------------------------------------------------------- what
def downloadable_weights(cfg: Config) -> List[DownloadableWeights]:
    """The weights ``cfg.model`` would download (pretrained tags, not files nor random): what
    each of its components says of itself."""
    from .configs import components
    found = [cls.downloadable_weights(cfg.model[key]) for key, cls in components(cfg.model)]
    return [weights for weights in found if weights is not None]


# ---------------------------------------------------------------------------------- network
def must_work_offline(needed: Sequence[DownloadableWeights], check_network: bool = True) -> bool:
    """Whether downloads must come from the local caches only: ``HF_HUB_OFFLINE`` says so, or
    weights are ``needed`` and huggingface.co does not answer the probe."""
    if env_offline():
        return True
    if needed and check_network and not hub_reachable():
        print_log('huggingface.co is not reachable: using only weights already in the local '
                  'caches', logger='current', level=logging.WARNING)
        return True
    return False


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
        # Both switch process-wide state (Hugging Face's offline flag, logging), restored on
        # exit: builds in other threads wait rather than see it.
        with _PROCESS_STATE, hub_offline(offline and not env_offline()), \
                _quiet_download_errors(offline):
            yield
    except WeightsError as error:
        if not needed or isinstance(error, WeightsUnavailableError) \
                or any(path in str(error) for path in _local_weight_files(cfg)):
            raise  # nothing to download, or a local file is the problem: the error says which
        config_name = Path(cfg.filename).stem if cfg.filename else 'the config'
        raise WeightsUnavailableError(
            missing_weights_message(config_name, needed, error, offline)) from error


def _local_weight_files(cfg: Config) -> List[str]:
    from .configs import components
    nodes = [cfg.model[key] for key, _ in components(cfg.model)]
    return [node['pretrained'] for node in nodes
            if isinstance(node.get('pretrained'), str) and os.path.isfile(node['pretrained'])]


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
