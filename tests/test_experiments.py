"""The experiment matrix (fsa_seg/experiments.py) and the leaf configs written from it."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mmengine import Config

from fsa_seg.experiments import MATRIX, Backbone, Benchmark

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tools' / 'misc'))
from generate_configs import write_leaves  # noqa: E402

# FSA's λ from the FSA paper: 3.0 for ViT-B/16 and L/14, 2.3 for H/14, 4.5 with the MAE proxy.
PAPER_LAMDA = {'vit-b16': 3.0, 'vit-l14': 3.0, 'vit-h14': 2.3, 'mae-b16': 4.5}
CLIP_OF_BACKBONE = {'vit-b16': 'ViT-B-16', 'vit-l14': 'ViT-L-14', 'vit-h14': 'ViT-H-14'}


def leaf_files(configs: Path):
    return sorted(str(p.relative_to(configs)) for p in configs.glob('*/*.py')
                  if p.parent.name != '_base_')


def test_leaf_configs_are_up_to_date_and_exactly_the_matrix():
    check = subprocess.run([sys.executable, 'tools/misc/generate_configs.py', '--check'],
                           cwd=REPO, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert leaf_files(REPO / 'configs') == sorted(leaf.path for leaf in MATRIX.leaves())


def test_fsa_lamda_follows_the_paper():
    for leaf in MATRIX.leaves():
        if leaf.fsa_lamda is not None:
            assert leaf.fsa_lamda == PAPER_LAMDA.get(leaf.proxy, PAPER_LAMDA[leaf.backbone]), leaf


@pytest.mark.parametrize('baseline', [b.name for b in MATRIX.baselines])
def test_every_leaf_loads_with_its_backbone_benchmark_and_plugin(baseline):
    for leaf in (leaf for leaf in MATRIX.leaves() if leaf.baseline == baseline):
        model = Config.fromfile(str(REPO / 'configs' / leaf.path),
                                import_custom_modules=False).model
        assert model.type.lower() == baseline.replace('_', ''), leaf.path
        assert model.clip.model_name == CLIP_OF_BACKBONE[leaf.backbone] and model.clip.pretrained
        assert model.vocabulary.endswith(leaf.benchmark), leaf.path  # cass_coco_object: its own
        assert bool(model.get('plugin')) == (leaf.fsa_lamda is not None), leaf.path
        if leaf.fsa_lamda is not None:
            assert model.plugin.type == 'FSA' and model.plugin.lamda == leaf.fsa_lamda


def test_a_new_benchmark_and_backbone_are_one_entry_and_one_base_each(tmp_path):
    """A ninth benchmark and a fourth backbone: an entry each plus a base config each (the
    benchmark's vocabulary inline here; a bundled one would be a class-name file)."""
    configs = tmp_path / 'configs'
    shutil.copytree(REPO / 'configs' / '_base_', configs / '_base_')
    (configs / '_base_' / 'datasets' / 'toy.py').write_text(
        "_base_ = './voc20.py'\n"
        "protocol = dict(vocabulary=['sky', 'grass'], prob_thd=0.0)\n")
    (configs / '_base_' / 'backbones' / 'vit-b32.py').write_text(
        "clip = dict(model_name='ViT-B-32', pretrained='openai', quick_gelu=True)\n")
    matrix = MATRIX.extended(benchmarks=[Benchmark('toy')],
                             backbones=[Backbone('vit-b32', fsa_lamda=2.5)])
    written = write_leaves(configs, matrix)
    per_backbone = 2 * len(MATRIX.benchmarks) + 2  # ± FSA for each benchmark, the toy included
    old = len(list(MATRIX.leaves()))
    assert len(written) == len(leaf_files(configs)) == len(list(matrix.leaves()))
    toy = [leaf for leaf in matrix.leaves() if 'toy' in leaf.path or 'vit-b32' in leaf.path]
    assert len(written) - old == len(toy) > per_backbone
    for leaf in toy:
        model = Config.fromfile(str(configs / leaf.path), import_custom_modules=False).model
        if leaf.benchmark == 'toy':  # our protocol, for baselines with their own too
            assert model.vocabulary == ['sky', 'grass']
        if leaf.fsa_lamda is not None:
            expected = 4.5 if leaf.proxy == 'mae-b16' else (
                2.5 if leaf.backbone == 'vit-b32' else PAPER_LAMDA[leaf.backbone])
            assert model.plugin.lamda == expected, leaf.path
