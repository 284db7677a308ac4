"""Checkpoints are untrusted input: weights-only reading, the official checkpoints' extras,
OpenAI's TorchScript archives, and a pickle that would create a file."""
import argparse
import builtins

import open_clip
import pytest
import torch

from fsa_seg.models.backbones import OpenCLIP, tiny_clip_arch
from fsa_seg.models.vfm import TimmVFM
from fsa_seg.models.weights import (
    UntrustedCheckpointError,
    WeightsError,
    read_state_dict,
    safe_torch_load,
)

TINY_VIT = dict(embed_dim=32, depth=1, num_heads=2)


class CreatesAFile:
    """Unpickling this calls open(path, 'w'): a pickle runs code as it is read."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return builtins.open, (self.path, 'w')


def test_a_pickle_that_would_create_a_file_is_refused_and_creates_nothing(tmp_path):
    marker = tmp_path / 'created_by_the_checkpoint'
    evil = tmp_path / 'evil.pth'
    torch.save({'model': {'w': torch.zeros(2)}, 'payload': CreatesAFile(marker)}, evil)
    with pytest.raises(UntrustedCheckpointError,
                       match=r'evil.pth: refused to load: its pickle would create io.open when '
                             r'read, and a pickle can run any code.*--trust-checkpoint'):
        read_state_dict(str(evil))
    assert not marker.exists()
    # through both loaders of local files
    with pytest.raises(WeightsError, match='refused to load.*--trust-checkpoint'):
        OpenCLIP(arch=tiny_clip_arch(layers=1), pretrained=str(evil))
    with pytest.raises(UntrustedCheckpointError, match='--trust-checkpoint'):
        TimmVFM('dino_vitb16', pretrained=str(evil), model_kwargs=TINY_VIT)
    assert not marker.exists()
    # trusting it runs it: what the flag is for, and why it warns
    safe_torch_load(str(evil), trust=True)
    assert marker.exists()


def test_dino_and_mae_style_checkpoints_with_their_training_arguments_load(tmp_path):
    vfm = TimmVFM('dino_vitb16', random_init=True, model_kwargs=TINY_VIT)
    path = tmp_path / 'dino_vitbase16_pretrain_full_checkpoint.pth'
    torch.save({'model': vfm.model.state_dict(), 'epoch': 100,
                'args': argparse.Namespace(arch='vit_base', patch_size=16, lr=5e-4)}, path)
    loaded = TimmVFM('dino_vitb16', pretrained=str(path), model_kwargs=TINY_VIT)
    for key, value in vfm.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


def scripted_like_openai(state: dict) -> torch.jit.ScriptModule:
    """A TorchScript archive as OpenAI's CLIP releases are: the weights, plus the three
    hyper-parameter entries their state dicts carry."""
    root = torch.nn.Module()
    entries = dict(state, input_resolution=torch.tensor(224), context_length=torch.tensor(77),
                   vocab_size=torch.tensor(49408))
    for key, value in entries.items():
        module = root
        *path, name = key.split('.')
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        module.register_buffer(name, value.clone())
    return torch.jit.script(root)


def test_openai_torchscript_archives_load_as_open_clip_loads_them(tmp_path):
    reference = open_clip.CLIP(**tiny_clip_arch(layers=1), quick_gelu=True)
    path = tmp_path / 'ViT-tiny.pt'
    torch.jit.save(scripted_like_openai(reference.state_dict()), path)
    clip = OpenCLIP(arch=tiny_clip_arch(layers=1), pretrained=str(path), quick_gelu=True)
    for key, value in reference.state_dict().items():
        assert torch.equal(clip.model.state_dict()[key], value), key


def test_plain_state_dicts_and_unreadable_files(tmp_path):
    path = tmp_path / 'plain.pth'
    torch.save({'module.a': torch.ones(2)}, path)
    assert read_state_dict(str(path), strip_prefixes=('module.',))['a'].tolist() == [1.0, 1.0]
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'not a checkpoint')
    with pytest.raises(WeightsError, match='cannot read checkpoint .*garbage.pth'):
        read_state_dict(str(garbage))
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(path.read_bytes()[:60])
    with pytest.raises(WeightsError, match='cannot read checkpoint .*truncated.pth'):
        read_state_dict(str(truncated))

