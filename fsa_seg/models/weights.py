"""Weight loading shared by every pretrained component (CLIP, vision foundation models).

A model never runs silently on random weights: ``random_init=True`` is the one explicit opt-in
(tests use it); anything else that leaves weights unloaded is a :class:`WeightsError`.
"""
import os
import pickle
from typing import Dict, Iterable, Mapping, Optional

import torch
from safetensors import SafetensorError
from torch import nn

# What a bad checkpoint file raises while it is read: missing or unreadable (OSError), empty
# (EOFError), truncated (RuntimeError of torch's zip reader), not a checkpoint at all.
UNREADABLE_FILE_ERRORS = (OSError, EOFError, RuntimeError, pickle.UnpicklingError,
                          SafetensorError)
# ... and while it is loaded: keys or shapes that do not fit (RuntimeError of a strict
# load_state_dict, KeyError/ValueError of the key converters).
CHECKPOINT_ERRORS = UNREADABLE_FILE_ERRORS + (KeyError, ValueError)
# What fetching weights raises when the network, the hub or the cache is the problem: OSError
# covers urllib's, requests' and huggingface_hub's connection, HTTP, offline-mode and
# missing-file errors; a cached file may be unreadable. Anything else (an out-of-memory
# RuntimeError, a TypeError of a version mismatch) is not a download problem and propagates.
DOWNLOAD_ERRORS = (OSError, EOFError, pickle.UnpicklingError, SafetensorError)


class WeightsError(RuntimeError):
    """Weights could not be found, fetched, or do not fit the model."""


def require_weights(model_name: str, pretrained: Optional[str], random_init: bool) -> None:
    """Refuse to build a model without weights unless random weights were asked for."""
    if random_init and pretrained:
        raise ValueError(f'{model_name}: pass either pretrained={pretrained!r} or '
                         'random_init=True, not both.')
    if not random_init and not pretrained:
        raise WeightsError(
            f'{model_name}: no weights given. Pass a pretrained tag or a local checkpoint path; '
            'random weights are only used with the explicit random_init=True (tests).')


def is_local_path(pretrained: str) -> bool:
    return os.sep in pretrained or pretrained.endswith(('.pt', '.pth', '.bin', '.safetensors'))


def read_state_dict(path: str, strip_prefixes: Iterable[str] = ()) -> Dict[str, torch.Tensor]:
    """Read a checkpoint file (torch or safetensors), unwrap common containers, strip prefixes."""
    if not os.path.isfile(path):
        raise WeightsError(f'checkpoint file not found: {path}')
    try:
        if path.endswith('.safetensors'):
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = torch.load(path, map_location='cpu', weights_only=False)
    except UNREADABLE_FILE_ERRORS as error:
        raise WeightsError(f'cannot read checkpoint {path}: {error}') from error
    if isinstance(state, nn.Module):
        state = state.state_dict()
    for key in ('state_dict', 'model', 'module'):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise WeightsError(f'{path} holds no state dict (found {type(state).__name__}).')
    state = dict(state)
    for prefix in strip_prefixes:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor],
                           source: str) -> None:
    """Load all weights or none: list missing, unexpected and mis-shaped keys in the error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mis_shaped = sorted(f'{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}'
                        for k in set(own) & set(state)
                        if tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or mis_shaped:
        def head(items):
            return ', '.join(items[:5]) + (f' … (+{len(items) - 5})' if len(items) > 5 else '')
        problems = [f'{label} ({len(items)}): {head(items)}'
                    for label, items in (('missing keys', missing),
                                         ('unexpected keys', unexpected),
                                         ('shape mismatches', mis_shaped)) if items]
        raise WeightsError(f'checkpoint {source} does not match {type(model).__name__}: '
                           + '; '.join(problems))
    model.load_state_dict(state, strict=True)
