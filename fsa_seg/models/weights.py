"""Weight loading shared by every pretrained component (CLIP, vision foundation models).

A model never runs silently on random weights: ``random_init=True`` is the one explicit opt-in
(tests use it); anything else that leaves weights unloaded is a :class:`WeightsError`.

A checkpoint file is untrusted input: a pickle runs code while it is read. Files are read with
``torch.load(weights_only=True)`` (tensors and plain containers only), which also admits the few
extras the official DINO / DINOv2 / SAM / MAE checkpoints carry (:data:`SAFE_CHECKPOINT_GLOBALS`);
safetensors files are safe by design, and OpenAI's TorchScript archives are read as open_clip
reads them (``torch.jit.load``, no Python pickle). Anything else is refused with an
:class:`UntrustedCheckpointError` naming what the pickle would create, unless the caller trusts
the file (``trust_checkpoint=True``, ``--trust-checkpoint``), which loads it fully, with a warning.
"""
import argparse
import logging
import os
import pickle
import re
import warnings
import zipfile
from typing import Any, Dict, Iterable, Mapping, Optional

import torch
from safetensors import SafetensorError
from torch import nn

# What the official checkpoints carry besides tensors and containers: DINO and MAE save their
# training arguments (an argparse.Namespace of strings and numbers) next to the weights.
SAFE_CHECKPOINT_GLOBALS = [argparse.Namespace]
TRUST_HINT = ('pass --trust-checkpoint (Python: trust_checkpoint=True) to load it anyway, only '
              'if you trust where it comes from')
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


class UntrustedCheckpointError(WeightsError):
    """A checkpoint whose pickle would create objects that weights-only loading refuses."""


def is_torchscript_archive(path: str) -> bool:
    """A TorchScript archive (OpenAI's CLIP releases): a zip with a ``constants.pkl`` record,
    the test ``torch.load`` itself uses to hand such files to ``torch.jit.load``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.rsplit('/', 1)[-1] == 'constants.pkl' for name in archive.namelist())


def _warn_trusted(path: str) -> None:
    from mmengine.logging import print_log
    print_log(f'WARNING: loading {path} with full unpickling (--trust-checkpoint): it can run '
              'any code it contains', logger='current', level=logging.WARNING)


def _refusal(path: str, error: pickle.UnpicklingError) -> WeightsError:
    """The weights-only unpickler's refusal as our error: untrusted content, or no checkpoint."""
    unsafe = sorted(set(re.findall(r'GLOBAL ([\w.]+) was not an allowed global', str(error))))
    if unsafe:
        return UntrustedCheckpointError(
            f'{path}: refused to load: its pickle would create {", ".join(unsafe)} when read, and '
            'a pickle can run any code that way (weights-only loading admits tensors, plain '
            f'containers and {", ".join(g.__qualname__ for g in SAFE_CHECKPOINT_GLOBALS)}); '
            + TRUST_HINT)
    detail = str(error).strip().splitlines()[-1]
    return WeightsError(f'cannot read checkpoint {path}: not a torch checkpoint ({detail})')


def safe_torch_load(path: str, trust: bool = False, mmap: bool = False) -> Any:
    """``torch.load`` under the policy of this module: weights only (plus
    :data:`SAFE_CHECKPOINT_GLOBALS`), TorchScript archives through ``torch.jit.load``, a full
    unpickle only with ``trust`` (warned)."""
    if trust:
        _warn_trusted(path)
        return torch.load(path, map_location='cpu', weights_only=False)
    if is_torchscript_archive(path):
        return torch.jit.load(path, map_location='cpu')
    try:
        with torch.serialization.safe_globals(SAFE_CHECKPOINT_GLOBALS):
            return torch.load(path, map_location='cpu', weights_only=True,
                              mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        raise _refusal(path, error) from error


def load_open_clip_checkpoint(model: nn.Module, path: str, trust: bool = False) -> None:
    """``open_clip.load_checkpoint`` (its key conversions, strict) for a file read under the
    policy of this module. open_clip falls back to a full unpickle where ``torch.load`` raises
    TypeError, so an untrusted pickle is first read here with weights only (memory-mapped: no
    copy of the tensors); only a file that passes goes to open_clip."""
    import open_clip
    if trust:
        _warn_trusted(path)
        open_clip.load_checkpoint(model, path, strict=True, weights_only=False)
    elif path.endswith('.safetensors'):
        open_clip.load_checkpoint(model, path, strict=True)
    elif is_torchscript_archive(path):
        with warnings.catch_warnings():  # torch.load hands it to torch.jit.load, and says so
            warnings.filterwarnings('ignore', message=".*looks like a TorchScript archive")
            open_clip.load_checkpoint(model, path, strict=True, weights_only=False)
    else:
        safe_torch_load(path, mmap=True)
        with torch.serialization.safe_globals(SAFE_CHECKPOINT_GLOBALS):
            open_clip.load_checkpoint(model, path, strict=True, weights_only=True)


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


def read_state_dict(path: str, strip_prefixes: Iterable[str] = (),
                    trust: bool = False) -> Dict[str, torch.Tensor]:
    """Read a checkpoint file (safetensors, or torch under the policy of this module, ``trust``
    to unpickle it fully), unwrap common containers, strip prefixes."""
    if not os.path.isfile(path):
        raise WeightsError(f'checkpoint file not found: {path}')
    from safetensors.torch import load_file
    try:
        state = load_file(path) if path.endswith('.safetensors') else safe_torch_load(path, trust)
    except WeightsError:
        raise
    except UNREADABLE_FILE_ERRORS + (ValueError,) as error:
        # torch's and safetensors' errors for truncated or foreign files
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
