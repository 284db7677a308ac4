"""Whether the Hugging Face Hub can be reached, and its offline mode for a block of code.

The weights of open_clip and timm tags come from the Hub. Where it cannot be reached, its client
retries each request for about 23 s (5 retries, backing off from 1 to 8 s) before failing, or
before falling back to a cached file. So every download path asks first: the components that
fetch weights (:func:`hub_offline_if_unreachable`) and the API's model build
(:mod:`fsa_seg.apis.downloads`), which names the files to pass instead.
"""
import os
import socket
from contextlib import contextmanager
from typing import Iterator, Optional, Tuple
from urllib.parse import urlparse

HUB_PROBE_TIMEOUT = 3.0


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


def env_offline() -> bool:
    """Whether the user set ``HF_HUB_OFFLINE``."""
    return os.environ.get('HF_HUB_OFFLINE', '').strip().lower() in ('1', 'true', 'yes', 'on')


@contextmanager
def hub_offline(enabled: bool = True):
    """Hugging Face downloads use the local cache only (``HF_HUB_OFFLINE``) inside the block.
    (huggingface_hub reads its switch from a module constant, set from the environment when it
    is imported: both are set here and restored.)"""
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
def hub_offline_if_unreachable() -> Iterator[Optional[str]]:
    """Within: the Hub in its offline mode (cached files at once, a missing one an OSError)
    where it cannot be reached (:func:`hub_reachable`), rather than its client's retries: with
    CLIP's and a VFM's weights, about 50 s of every offline run. Yields the host that did not
    answer where offline mode was switched on here; None where it was on already or the Hub
    answered."""
    import huggingface_hub.constants as hf_constants
    if env_offline() or hf_constants.HF_HUB_OFFLINE or hub_reachable():
        yield None
        return
    with hub_offline():
        yield _hub_address()[0]


def unreachable_hub_note(host: Optional[str]) -> str:
    """What to add to a failed download's message inside :func:`hub_offline_if_unreachable`."""
    return f'; {host} cannot be reached (no network?), so only the local cache was searched' \
        if host else ''
