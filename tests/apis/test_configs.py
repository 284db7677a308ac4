"""Config lookup by name or path, and the options of init_segmentor applied to a config
(fsa_seg.apis.configs)."""
from pathlib import Path

import pytest

from fsa_seg.apis import configs
from fsa_seg.apis.configs import ConfigNotFoundError, apply_overrides, load_config, resolve_config
from fsa_seg.models.weights import WeightsError

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / 'configs' / 'proxyclip' / 'proxyclip_fsa_vit-b16_dino-b8_voc21.py'


def test_config_name_resolves_inside_the_checkout():
    assert resolve_config('proxyclip_fsa_vit-b16_dino-b8_voc21') == DEFAULT
    assert resolve_config('proxyclip_fsa_vit-b16_dino-b8_voc21.py') == DEFAULT
    assert resolve_config(str(DEFAULT)) == DEFAULT


def test_unknown_config_name_suggests_close_names():
    with pytest.raises(ConfigNotFoundError, match='proxyclip_fsa_vit-b16_dino-b8_voc21'):
        resolve_config('proxyclip_fsa_vit-b16_dino-b8_voc2')


def test_config_name_without_configs_folder_says_what_to_do(monkeypatch):
    monkeypatch.setattr(configs, 'config_roots', lambda: [])
    with pytest.raises(ConfigNotFoundError, match='FSA_SEG_CONFIGS'):
        resolve_config('proxyclip_fsa_vit-b16_dino-b8_voc21')


def test_weight_files_replace_the_tags_and_keep_quick_gelu(tmp_path):
    clip_file, vfm_file = tmp_path / 'clip.bin', tmp_path / 'dino.pth'
    clip_file.write_bytes(b'x')
    vfm_file.write_bytes(b'x')
    cfg = apply_overrides(load_config(DEFAULT), clip_weights=str(clip_file),
                          vfm_weights=str(vfm_file))
    assert cfg.model.clip.pretrained == str(clip_file) and cfg.model.clip.quick_gelu is True
    assert cfg.model.vfm.pretrained == str(vfm_file)
    # ViT-H/14 LAION was not trained with QuickGELU: a file must not switch it on.
    vit_h = REPO / 'configs' / 'maskclip' / 'maskclip_vit-h14_voc21.py'
    cfg = apply_overrides(load_config(vit_h), clip_weights=str(clip_file))
    assert cfg.model.clip.quick_gelu is False
    with pytest.raises(ValueError, match='ProxyCLIP'):
        apply_overrides(load_config(vit_h), vfm_weights=str(vfm_file))
    with pytest.raises(WeightsError, match='not found'):
        apply_overrides(load_config(DEFAULT), clip_weights=str(tmp_path / 'missing.bin'))


def test_overrides_of_window_threshold_and_vocabulary():
    cfg = apply_overrides(load_config(DEFAULT), random_weights=True, crop=224, stride=(100, 90),
                          precision='bf16')
    assert cfg.model.test_cfg == dict(mode='slide', crop_size=(224, 224), stride=(100, 90))
    assert cfg.model.clip.random_init and 'pretrained' not in cfg.model.clip
    assert cfg.model.vfm.random_init and cfg.model.vfm.pretrained is None
    assert cfg.model.clip.precision == 'bf16'
    assert cfg.model.prob_thd == 0.2  # the config's own vocabulary keeps its threshold
    cfg = apply_overrides(load_config(DEFAULT), vocabulary=['a; b', 'c'])
    assert cfg.model.vocabulary == [['a', 'b'], ['c']] and cfg.model.prob_thd == 0.0
    assert apply_overrides(load_config(DEFAULT), vocabulary='voc21').model.prob_thd == 0.2
    with pytest.raises(ValueError, match='gaps'):
        apply_overrides(load_config(DEFAULT), crop=100, stride=200)
