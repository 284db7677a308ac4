"""Random weights for evaluation: each component rewrites its own config; the tools call that
generically over the model config and know no component's keys."""
import pytest
import torch
from mmseg.registry import MODELS
from torch import nn

from fsa_seg.apis.configs import ConfigError, has_random_weights, use_random_weights
from fsa_seg.models.backbones import OpenCLIP, tiny_clip_arch
from fsa_seg.models.vfm import TimmVFM


class Component(nn.Module):
    """A component with its own idea of weights: a `checkpoint` key, a `seeded` switch."""

    def __init__(self, checkpoint=None, seeded=False):
        super().__init__()
        self.checkpoint, self.seeded = checkpoint, seeded

    @classmethod
    def random_weights_config(cls, cfg):
        return dict({k: v for k, v in cfg.items() if k != 'checkpoint'}, seeded=True)


@pytest.fixture
def component_registered():
    MODELS.register_module(name='TestRandomWeightsComponent', module=Component)
    yield
    MODELS.module_dict.pop('TestRandomWeightsComponent')


def test_every_component_found_by_its_type_rewrites_its_own_config(component_registered):
    model = dict(type='ClearCLIP', vocabulary='voc21',
                 clip=dict(type='OpenCLIP', model_name='ViT-B-16', pretrained='openai'),
                 heads=[dict(type='TestRandomWeightsComponent', checkpoint='/w.pth')],
                 extra=dict(inner=dict(type='TimmVFM', name='dino_vitb8')))
    switched = use_random_weights(model)
    assert sorted(switched) == ['Component', 'OpenCLIP', 'TimmVFM']
    assert model['clip'] == dict(type='OpenCLIP', model_name='ViT-B-16', random_init=True)
    assert model['heads'] == [dict(type='TestRandomWeightsComponent', seeded=True)]
    assert model['extra']['inner'] == dict(type='TimmVFM', name='dino_vitb8', random_init=True)
    assert model['vocabulary'] == 'voc21' and model['type'] == 'ClearCLIP'


def test_a_component_without_its_type_is_found_by_the_segmentors_default():
    """After ``_delete_=True`` a component may name no type: the segmentor's default applies."""
    model = dict(type='ProxyCLIP', clip=dict(model_name='ViT-B-16', pretrained='openai'),
                 vfm=dict(name='dino_vitb8'))
    assert sorted(use_random_weights(model)) == ['OpenCLIP', 'TimmVFM']
    assert model['clip'] == dict(type='OpenCLIP', model_name='ViT-B-16', random_init=True)


def test_a_model_without_such_components_is_an_error():
    with pytest.raises(ConfigError, match='no part of mmseg.EncoderDecoder can be built'):
        use_random_weights(dict(type='mmseg.EncoderDecoder',
                                backbone=dict(type='mmseg.ResNetV1c', depth=18)))


def test_the_switched_components_build_without_any_weights():
    clip = OpenCLIP(**OpenCLIP.random_weights_config(
        dict(arch=tiny_clip_arch(layers=1), pretrained='/nowhere/clip.pt')))
    vfm = TimmVFM(**TimmVFM.random_weights_config(
        dict(name='dino_vitb16', pretrained='/nowhere/dino.pth',
             model_kwargs=dict(embed_dim=32, depth=1, num_heads=2))))
    assert clip.weights_id.startswith('random:')
    assert vfm(torch.zeros(1, 3, 32, 32)).shape == (1, 32, 2, 2)


def test_has_random_weights_looks_at_every_component():
    from mmengine.config import Config
    assert has_random_weights(Config(dict(model=dict(a=[dict(b=dict(random_init=True))]))))
    assert not has_random_weights(Config(dict(model=dict(clip=dict(pretrained='openai')))))
