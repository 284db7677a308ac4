"""Config lookup by name or path, and the options of init_segmentor applied to a config
(fsa_seg.apis.configs)."""
from pathlib import Path

import pytest
from mmengine.config import Config

from fsa_seg.apis import configs
from fsa_seg.apis.configs import (
    ConfigNotFoundError,
    apply_overrides,
    load_config,
    read_config,
    resolve_config,
    use_cuda_graphs,
)
from fsa_seg.experiments import MATRIX
from fsa_seg.models.backbones import tiny_clip_arch
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
    with pytest.raises(ValueError, match='MaskCLIP has no component that takes --vfm-weights'):
        apply_overrides(load_config(vit_h), vfm_weights=str(vfm_file))
    with pytest.raises(WeightsError, match='not found'):
        apply_overrides(load_config(DEFAULT), clip_weights=str(tmp_path / 'missing.bin'))


def test_overrides_of_window_threshold_and_vocabulary():
    cfg = apply_overrides(load_config(DEFAULT), random_weights=True, crop=224, stride=(100, 90),
                          precision='bf16')
    assert cfg.model.test_cfg == dict(mode='slide', crop_size=(224, 224), stride=(100, 90))
    assert cfg.model.clip.random_init and 'pretrained' not in cfg.model.clip
    assert cfg.model.vfm.random_init and not cfg.model.vfm.get('pretrained')
    assert cfg.model.clip.precision == 'bf16'
    # asked for the precision it runs in, a config stays as it is (a resume compares configs)
    assert 'precision' not in apply_overrides(load_config(DEFAULT), precision='fp32').model.clip
    assert cfg.model.prob_thd == 0.2  # the config's own vocabulary keeps its threshold
    cfg = apply_overrides(load_config(DEFAULT), vocabulary=['a; b', 'c'])
    assert cfg.model.vocabulary == [['a', 'b'], ['c']] and cfg.model.prob_thd == 0.0
    assert apply_overrides(load_config(DEFAULT), vocabulary='voc21').model.prob_thd == 0.2
    with pytest.raises(ValueError, match='gaps'):
        apply_overrides(load_config(DEFAULT), crop=100, stride=200)
    window = apply_overrides(load_config(DEFAULT), crop=224.0, stride=[112, 96.0]).model.test_cfg
    assert window.crop_size == (224, 224) and window.stride == (112, 96)
    for size in (224.5, -224, 0, (224,), '224', (224, None)):
        with pytest.raises(ValueError, match='crop must be a positive size or .* whole pixels'):
            apply_overrides(load_config(DEFAULT), crop=size)


# ---------------------------------------------------------------------------------- export
def test_list_configs_by_pattern():
    assert configs.list_configs('sclip_fsa_vit-b16_voc2?') == ['sclip_fsa_vit-b16_voc20',
                                                              'sclip_fsa_vit-b16_voc21']
    assert configs.list_configs('proxyclip_fsa_vit-h14_mae') == [
        f'proxyclip_fsa_vit-h14_mae-b16_{b}' for b in sorted(b.name for b in MATRIX.benchmarks)]
    assert configs.list_configs('no_such_thing') == []


def test_an_exported_config_is_self_contained_and_equal(tmp_path):
    name = 'proxyclip_fsa_vit-b16_mae-b16_cityscapes'
    exported = tmp_path / 'elsewhere' / 'exported.py'
    exported.parent.mkdir()
    exported.write_text(configs.export_config(name))
    original, copy = Config.fromfile(str(resolve_config(name))), Config.fromfile(str(exported))
    assert copy.model == original.model
    assert copy.model.test_cfg.crop_size == (224, 224) and copy.model.plugin.lamda == 4.5
    for key in ('test_dataloader', 'test_evaluator', 'test_pipeline', 'default_hooks',
                'custom_imports', 'split_size'):
        assert copy[key] == original[key], key
    # variables that only composed the leaf would change nothing if edited: left out
    assert not {'clip', 'vfm', 'fsa', 'protocol', 'data_root', 'dataset_type'} & set(copy)
    assert original.data_root == copy.test_dataloader.dataset.data_root
    assert 'clip' in original and '_base_ =' not in exported.read_text().replace(
        "_base_ = ['./this_file.py']", '')  # the header's usage hint


TINY_CLIP = dict(arch=tiny_clip_arch(layers=2), random_init=True)


def model_of(text: str, folder: Path):
    path = folder / 'user.py'
    path.write_text(text)
    return Config.fromfile(str(path)).model


@pytest.mark.parametrize('base', [
    "'{repo}/configs/clearclip/clearclip_vit-b16_voc21.py'",
    "'{repo}/configs/clearclip/clearclip_fsa_vit-b16_voc21.py'",
    "'{repo}/configs/proxyclip/proxyclip_vit-b16_dino-b16_voc21.py'",
    "'{repo}/configs/proxyclip/proxyclip_fsa_vit-b16_dino-b16_voc21.py'",
    # composing the bases directly, as a new leaf does
    "'{repo}/configs/_base_/models/sclip.py', '{repo}/configs/_base_/backbones/vit-b16.py'",
    "'{repo}/configs/_base_/models/proxyclip.py', '{repo}/configs/_base_/backbones/vit-b16.py'",
])
def test_delete_replaces_clip_vfm_and_plugin_whatever_the_base(tmp_path, base):
    bases = base.format(repo=REPO)
    proxy = 'proxyclip' in base
    vfm = ("vfm=dict(_delete_=True, type='TimmVFM', name='dino_vitb16', random_init=True),"
           if proxy else '')
    model = model_of(
        f'_base_ = [{bases}]\n'
        f'model = dict(clip=dict(_delete_=True, **{TINY_CLIP!r}), {vfm}\n'
        "             plugin=dict(_delete_=True, type='FSA', lamda=2.0))\n", tmp_path)
    assert model.clip == TINY_CLIP  # the base's type, name and weights are gone
    if proxy:
        assert model.vfm == dict(type='TimmVFM', name='dino_vitb16', random_init=True)
    assert model.plugin == dict(type='FSA', lamda=2.0)
    # without _delete_ the keys merge; plugin=None switches FSA off
    model = model_of(f'_base_ = [{bases}]\n'
                     "model = dict(clip=dict(precision='fp16'), plugin=None)\n", tmp_path)
    assert model.clip.precision == 'fp16' and model.clip.type == 'OpenCLIP'
    assert model.plugin is None


def test_a_deleted_clip_builds(tmp_path):
    from mmseg.registry import MODELS
    model = model_of(
        f"_base_ = ['{REPO}/configs/clearclip/clearclip_fsa_vit-b16_voc21.py']\n"
        f'model = dict(clip=dict(_delete_=True, **{TINY_CLIP!r}), templates="plain",\n'
        '             text_cache_dir=False)\n', tmp_path)
    segmentor = MODELS.build(model)
    assert segmentor.clip.model_name == 'custom' and segmentor.plugin.lamda == 3.0


def test_mmengine_finds_installed_packages_without_pkg_resources():
    import mmseg

    from fsa_seg.compat import mmengine_packages
    package_dir = str(Path(mmseg.__file__).parent)
    assert mmengine_packages.get_installed_path('mmseg') == package_dir
    assert mmengine_packages.get_installed_path('mmsegmentation') == package_dir
    assert mmengine_packages.is_installed('mmsegmentation') and mmengine_packages.is_installed(
        'mmseg')
    assert not mmengine_packages.is_installed('no_such_package_here')


def test_config_errors_name_the_file(tmp_path):
    broken = tmp_path / 'broken.py'
    broken.write_text("model = dict(type='ClearCLIP'\n")
    with pytest.raises(configs.ConfigError, match=f'{broken}.*SyntaxError'):
        load_config(broken)
    missing_base = tmp_path / 'missing_base.py'
    missing_base.write_text("_base_ = ['./nowhere.py']\n")
    with pytest.raises(configs.ConfigError, match='nowhere.py'):
        load_config(missing_base)


@pytest.mark.parametrize('device, expected', [('cuda', True), ('cuda:1', True), ('cpu', None)])
def test_auto_cuda_graphs_where_they_pay_off(device, expected):
    """'auto': graphs for a sliding-window segmentor that can replay its crops on a CUDA
    device; never for CASS (no error), whole images, or on CPU; a config's own choice stays;
    None leaves the config as it is; True for CASS is refused in one line."""
    model = read_config('proxyclip_fsa_vit-b16_dino-b8_voc21').model
    use_cuda_graphs(model, 'auto', device)
    assert model.get('cuda_graphs') is expected
    whole = dict(read_config('proxyclip_fsa_vit-b16_dino-b8_voc21').model,
                 test_cfg=dict(mode='whole'))
    cass = read_config('cass_vit-b16_voc21').model
    for other in (whole, cass):
        use_cuda_graphs(other, 'auto', device)
        assert 'cuda_graphs' not in other
    chosen = dict(model, cuda_graphs=False)
    use_cuda_graphs(chosen, 'auto', device)
    use_cuda_graphs(chosen, None, device)
    assert chosen['cuda_graphs'] is False
    with pytest.raises(ValueError, match=r'^CASS runs host code per crop and cannot replay '
                                          r'crops as CUDA graphs: leave out --cuda-graphs$'):
        use_cuda_graphs(cass, True, device)
    with pytest.raises(ValueError, match='cuda_graphs must be one of'):
        use_cuda_graphs(model, 'on', device)
