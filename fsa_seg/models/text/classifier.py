"""Text classifier: one L2-normalised embedding per query (synonym), cached on disk.

Each name goes through every template; the embeddings are L2-normalised per template, averaged
and renormalised (the CLIP paper's zero-shot classifier). The cache key is a hash of everything
the result depends on (the text encoder's identity — architecture, QuickGELU, dtype, tokenizer,
weights — and the templates and names), so a hit never needs the text encoder; an unreadable or
inconsistent entry is recomputed, not trusted. Entries are readable by whoever the umask lets
read the user's other files (a cache shared by a group works).
"""
import hashlib
import json
import logging
import os
import secrets
import sys
from pathlib import Path
from typing import Callable, List, Optional, Protocol, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

logger = logging.getLogger(__name__)

PROGRESS_FORMAT = ('{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} names '
                   '[{elapsed}<{remaining}]')
LOG_PROGRESS_INTERVAL = 15.0  # seconds between progress lines when stderr is a log, not a terminal


class TextEncoder(Protocol):
    """What the classifier needs of a text encoder (``OpenCLIP`` is one)."""

    #: Identifies everything the embeddings depend on besides the prompts: part of the cache key.
    text_id: str

    def encode_text(self, texts: List[str],
                    progress: Optional[Callable[[int], None]] = None) -> Tensor:
        """(len(texts), D) embeddings; ``progress(k)`` after each batch of ``k`` texts."""


def default_cache_dir() -> Path:
    root = os.environ.get('FSA_SEG_CACHE') or os.path.join(
        os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'fsa_seg')
    return Path(root) / 'text_embeddings'


class _LogLines:
    """tqdm's target when stderr is not a terminal: each refresh on a line of its own, instead of
    ``\\r`` rewrites that a log file keeps as one ever-growing line."""

    def __init__(self, stream):
        self.stream, self.last = stream, ''

    def write(self, text: str) -> None:
        line = text.replace('\r', '').strip()
        if line and line != self.last:
            self.stream.write(line + '\n')
            self.last = line

    def flush(self) -> None:
        self.stream.flush()


def _progress_bar(num_names: int, num_templates: int, enabled: bool) -> tqdm:
    stream = sys.stderr
    interactive = hasattr(stream, 'isatty') and stream.isatty()
    return tqdm(total=num_names, desc=f'text embeddings ({num_templates} templates)',
                bar_format=PROGRESS_FORMAT, disable=not enabled,
                file=stream if interactive else _LogLines(stream), ascii=not interactive,
                mininterval=0.1 if interactive else LOG_PROGRESS_INTERVAL)


def embed_queries(encoder: TextEncoder, queries: Sequence[str], templates: Sequence[str],
                  progress: bool = True) -> Tensor:
    """(len(queries), D) float32 embeddings: per template normalised, averaged, renormalised.

    ``progress`` shows a bar of the names done (in prompts' worth of work) and the time left."""
    prompts = [template.format(query) for query in queries for template in templates]
    prompts_done = 0
    with _progress_bar(len(queries), len(templates), progress) as bar:

        def advance(num_prompts: int) -> None:
            nonlocal prompts_done
            prompts_done += num_prompts
            bar.update(prompts_done // len(templates) - bar.n)

        per_prompt = F.normalize(encoder.encode_text(prompts, progress=advance).float(), dim=-1)
    per_query = per_prompt.view(len(queries), len(templates), -1).mean(dim=1)
    return F.normalize(per_query, dim=-1)


def cache_key(text_id: str, templates: Sequence[str], queries: Sequence[str]) -> str:
    """Hash of the encoder's identity (see :attr:`TextEncoder.text_id`), templates and names."""
    payload = json.dumps(dict(encoder=text_id, templates=list(templates), queries=list(queries)),
                         sort_keys=True)
    return hashlib.sha256(payload.encode('utf-8')).hexdigest()


def _read_entry(path: Path, num_queries: int) -> Optional[Tensor]:
    try:
        entry = torch.load(path, map_location='cpu', weights_only=True)
        embeddings = entry['embeddings']
        if (embeddings.ndim == 2 and embeddings.shape[0] == num_queries
                and torch.isfinite(embeddings).all()):
            return embeddings
    except Exception as error:  # corrupt or foreign file: recompute
        logger.warning('ignoring unreadable text-embedding cache entry %s (%s)', path, error)
        return None
    logger.warning('ignoring inconsistent text-embedding cache entry %s', path)
    return None


def _write_entry(path: Path, embeddings: Tensor) -> None:
    """Atomic write: a crash never leaves a half-written entry under the final name. The file is
    created with mode 0o666 less the umask, like any other file of the user (mkstemp's 0o600
    would hide a shared cache from the group)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp')
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), 'wb') as handle:
            torch.save({'embeddings': embeddings}, handle)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def cached_query_embeddings(encoder: TextEncoder, queries: Sequence[str],
                            templates: Sequence[str],
                            cache_dir: Union[str, Path, None, bool] = None,
                            progress: bool = True) -> Tensor:
    """Embeddings of ``queries`` from the cache, or computed with ``encoder`` and cached.

    ``cache_dir=False`` disables the cache. ``progress`` shows a bar while computing."""
    if cache_dir is False:
        return embed_queries(encoder, queries, templates, progress)
    path = Path(cache_dir or default_cache_dir()) / (
        cache_key(encoder.text_id, templates, queries) + '.pt')
    if path.is_file():
        embeddings = _read_entry(path, len(queries))
        if embeddings is not None:
            return embeddings
    embeddings = embed_queries(encoder, queries, templates, progress)
    try:
        _write_entry(path, embeddings)
    except OSError as error:  # a read-only cache must not stop inference
        logger.warning('cannot write text-embedding cache %s (%s)', path, error)
    return embeddings
