"""tools/test.py end to end on generated datasets with tiny random models."""
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from synthetic_data import make_benchmark

REPO = Path(__file__).resolve().parents[2]
TINY_CLIP = ("dict(_delete_=True, random_init=True, arch=dict(embed_dim=32, vision_cfg=dict("
             "image_size=224, patch_size=16, width=64, layers=3, head_width=16, mlp_ratio=4.0), "
             "text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)))")
TINY_VFM = ("dict(_delete_=True, type='TimmVFM', name='dino_vitb16', random_init=True, "
            "model_kwargs=dict(embed_dim=32, depth=2, num_heads=2))")


def tiny_config(tmp_path: Path, config: str, data_root: Path, proxy: bool = False) -> Path:
    """A user-style config: inherit one of ours, swap in tiny random models."""
    vfm = f', vfm={TINY_VFM}' if proxy else ''
    text = (f"_base_ = ['{REPO / 'configs' / config}']\n"
            f"model = dict(clip={TINY_CLIP}{vfm}, templates='plain',\n"
            "             test_cfg=dict(crop_size=(224, 224), stride=(112, 112)))\n"
            f"test_dataloader = dict(num_workers=0, persistent_workers=False,\n"
            f"                       dataset=dict(data_root='{data_root}'))\n")
    path = tmp_path / ('tiny_' + Path(config).name)
    path.write_text(text)
    return path


def run_test_script(*args):
    """Run tools/test.py in this process (as `python tools/test.py ARGS` would)."""
    argv = sys.argv
    sys.argv = ['tools/test.py', *map(str, args)]
    try:
        runpy.run_path(str(REPO / 'tools' / 'test.py'), run_name='__main__')
    finally:
        sys.argv = argv


def test_voc21_end_to_end_in_a_fresh_process(tmp_path):
    data_root = make_benchmark('voc21', tmp_path / 'data')
    config = tiny_config(tmp_path, 'clearclip/clearclip_vit-b16_voc21.py', data_root)
    out = tmp_path / 'results.json'
    result = subprocess.run(
        [sys.executable, 'tools/test.py', str(config), '--work-dir', str(tmp_path / 'work'),
         '--out', str(out), '--allow-partial-split'],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert 'mIoU' in log and 'per class results' in log
    results = json.loads(out.read_text())
    assert results['num_images'] == 3 and results['complete'] is False
    assert set(results['metrics']) >= {'aAcc', 'mIoU', 'mAcc'}
    assert len(results['per_class']) == 21 and 'aeroplane' in results['per_class']


@pytest.mark.parametrize('config,proxy', [
    ('vanilla_clip/vanilla_clip_fsa_vit-b16_voc21.py', False),
    ('maskclip/maskclip_fsa_vit-b16_voc21.py', False),
    ('sclip/sclip_fsa_vit-b16_voc21.py', False),
    ('clearclip/clearclip_fsa_vit-b16_voc21.py', False),
    ('naclip/naclip_fsa_vit-b16_voc21.py', False),
    ('proxyclip/proxyclip_vit-b16_dino-b16_voc21.py', True),
    ('proxyclip/proxyclip_fsa_vit-b16_dino-b16_voc21.py', True),
])
def test_every_baseline_with_fsa_and_proxyclip_run_end_to_end(tmp_path, config, proxy):
    data_root = make_benchmark('voc21', tmp_path / 'data', sizes=((40, 56), (30, 30)))
    out = tmp_path / 'results.json'
    run_test_script(tiny_config(tmp_path, config, data_root, proxy), '--work-dir',
                    tmp_path / 'work', '--out', out, '--allow-partial-split')
    results = json.loads(out.read_text())
    assert results['num_images'] == 2
    assert 0 <= results['metrics']['mIoU'] <= 100


def test_missing_dataset_folder_says_where_and_how(tmp_path):
    config = tiny_config(tmp_path, 'clearclip/clearclip_vit-b16_voc21.py',
                         tmp_path / 'nowhere' / 'VOC2012')
    with pytest.raises(FileNotFoundError, match=r'nowhere/VOC2012/JPEGImages.*data/README.md'):
        run_test_script(config, '--work-dir', tmp_path / 'work')


def test_incomplete_dataset_is_refused_without_the_flag(tmp_path):
    data_root = make_benchmark('voc21', tmp_path / 'data', sizes=((30, 30), ))
    config = tiny_config(tmp_path, 'clearclip/clearclip_vit-b16_voc21.py', data_root)
    with pytest.raises(RuntimeError, match='1 images.*1449.*--allow-partial-split'):
        run_test_script(config, '--work-dir', tmp_path / 'work')
