"""Text classifier: one L2-normalised embedding per query (synonym), cached on disk.

Each name goes through every template; the embeddings are L2-normalised per template, averaged
and renormalised (the CLIP paper's zero-shot classifier). The cache key covers everything that
determines the result, so a hit never needs the text encoder; an unreadable or inconsistent
entry is recomputed, not trusted.
"""
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)
EncodeFn = Callable[[List[str]], Tensor]


def default_cache_dir() -> Path:
    root = os.environ.get('FSA_SEG_CACHE') or os.path.join(
        os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'fsa_seg')
    return Path(root) / 'text_embeddings'


def embed_queries(encode: EncodeFn, queries: Sequence[str], templates: Sequence[str],
                  batch_size: int = 256) -> Tensor:
    """(len(queries), D) float32 embeddings: per template normalised, averaged, renormalised."""
    prompts = [template.format(query) for query in queries for template in templates]
    chunks = [encode(prompts[i:i + batch_size]).float() for i in range(0, len(prompts), batch_size)]
    per_prompt = F.normalize(torch.cat(chunks), dim=-1)
    per_query = per_prompt.view(len(queries), len(templates), -1).mean(dim=1)
    return F.normalize(per_query, dim=-1)


def cache_key(model_id: str, weights_id: str, templates: Sequence[str],
              queries: Sequence[str]) -> str:
    payload = json.dumps(dict(model=model_id, weights=weights_id, templates=list(templates),
                              queries=list(queries)), sort_keys=True)
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
    """Atomic write: a crash never leaves a half-written entry under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, suffix='.tmp')
    os.close(handle)
    try:
        torch.save({'embeddings': embeddings}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def cached_query_embeddings(encode: EncodeFn, queries: Sequence[str], templates: Sequence[str],
                            model_id: str, weights_id: str,
                            cache_dir: Union[str, Path, None] = None) -> Tensor:
    """Embeddings of ``queries`` from the cache, or computed with ``encode`` and cached.

    ``cache_dir=False`` disables the cache."""
    if cache_dir is False:
        return embed_queries(encode, queries, templates)
    path = Path(cache_dir or default_cache_dir()) / (
        cache_key(model_id, weights_id, templates, queries) + '.pt')
    if path.is_file():
        embeddings = _read_entry(path, len(queries))
        if embeddings is not None:
            return embeddings
    embeddings = embed_queries(encode, queries, templates)
    try:
        _write_entry(path, embeddings)
    except OSError as error:  # a read-only cache must not stop inference
        logger.warning('cannot write text-embedding cache %s (%s)', path, error)
    return embeddings
