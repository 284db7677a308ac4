"""fsa-seg as a user gets it: installed (``pip install .`` and ``pip install -e .``) into a fresh
virtual environment that shares this one's dependencies, used from a folder outside the
checkout, in fresh processes."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ('setup.py', 'README.md', '_fsa_seg_mmcv_lite.py', 'fsa_seg_mmcv_lite.pth', 'fsa_seg',
           'configs')
MMSEG_MODULES = ('mmseg', 'mmseg.apis', 'mmseg.datasets', 'mmseg.models')


def make_venv(root: Path, editable: bool) -> Path:
    """A venv over this interpreter's packages with fsa-seg installed from a copy of the sources;
    returns its python."""
    source = root / 'source'
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name,
                            ignore=shutil.ignore_patterns('__pycache__', '*.egg-info'))
        else:
            source.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    venv = root / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages', '--without-pip',
                    str(venv)], check=True)
    python = venv / 'bin' / 'python'
    install = [str(python), '-m', 'pip', 'install', '--quiet', '--no-deps',
               '--no-build-isolation', '--no-index']
    install += ['-e', str(source)] if editable else [str(source)]
    subprocess.run(install, check=True, cwd=root, capture_output=True)
    return python


@pytest.fixture(scope='module', params=['wheel', 'editable'])
def installed(request, tmp_path_factory):
    """(python of the venv, a working folder outside the checkout)."""
    root = tmp_path_factory.mktemp(f'install_{request.param}')
    python = make_venv(root, editable=request.param == 'editable')
    outside = root / 'work'
    outside.mkdir()
    return python, outside


def run_python(python: Path, cwd: Path, code: str, *args: str, timeout: int = 600):
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}  # as a user runs it
    return subprocess.run([str(python), '-c', textwrap.dedent(code), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_the_installed_package_is_the_one_imported(installed):
    python, outside = installed
    result = run_python(python, outside, 'import fsa_seg; print(fsa_seg.__file__)\n'
                        'from fsa_seg.analysis.published import published_results\n'
                        'print(len(published_results()))')
    assert result.returncode == 0, result.stderr[-2000:]
    location, published = result.stdout.split()
    assert not location.startswith(str(REPO)), result.stdout
    assert published == '173'  # the published numbers ship with the package


def test_mmseg_imported_before_fsa_seg_in_a_fresh_process(installed):
    """With mmcv-lite, the start-up hook supplies mmcv.ops whoever imports mmseg first."""
    python, outside = installed
    code = '''
        import importlib, sys
        importlib.import_module(sys.argv[1])
        import mmseg.models, mmcv.ops
        import fsa_seg
        from mmseg.registry import MODELS
        print(getattr(mmcv.ops, 'IS_FSA_SEG_FALLBACK', False), 'ClearCLIP' in MODELS.module_dict)
    '''
    runs = {module: subprocess.Popen(
        [str(python), '-c', textwrap.dedent(code), module], cwd=outside, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != 'PYTHONPATH'})
        for module in MMSEG_MODULES}
    compiled = importlib.util.find_spec('mmcv._ext') is not None  # the venv shares our mmcv
    for module, process in runs.items():
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, f'{module} first: {stderr[-2000:]}'
        assert stdout.split() == [str(not compiled), 'True'], (module, stdout)


@pytest.mark.parametrize('module_there', [True, False])
def test_the_start_up_hook_runs_only_while_its_module_is_there(module_there, tmp_path):
    """The .pth line installs the finder; where the module is gone (an editable install whose
    checkout was deleted) it does nothing, instead of a traceback at every Python start."""
    hook = (REPO / 'fsa_seg_mmcv_lite.pth').read_text(encoding='utf-8')
    assert hook.startswith('import ') and len(hook.splitlines()) == 1  # site runs such a line
    code = hook + "import sys; print([f.__name__ for f in sys.meta_path][0])"
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    if module_there:
        env['PYTHONPATH'] = str(REPO)
    result = subprocess.run([sys.executable, '-S', '-c', code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == '', result.stderr
    assert (result.stdout.strip() == 'MMCVOpsFinder') == module_there, result.stdout


TINY_CLIP = ("dict(type='OpenCLIP', random_init=True, arch=dict(embed_dim=32, vision_cfg=dict("
             "image_size=224, patch_size=16, width=64, layers=2, head_width=16), text_cfg=dict("
             "context_length=77, vocab_size=49408, width=32, heads=2, layers=1)))")


def test_custom_imports_alone_in_an_mmseg_script(installed):
    """The README's mmseg-pipeline example: a config with custom_imports, read by mmseg's own
    init_model in a script that never imports fsa_seg."""
    python, outside = installed
    config = outside / 'custom_imports_only.py'
    config.write_text(textwrap.dedent(f'''\
        default_scope = 'mmseg'
        custom_imports = dict(imports=['fsa_seg'], allow_failed_imports=False)
        model = dict(type='ClearCLIP', clip={TINY_CLIP}, vocabulary=['sky', 'building; house'],
                     templates='plain', text_cache_dir=False,
                     test_cfg=dict(mode='slide', crop_size=(224, 224), stride=(112, 112)))
        test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackSegInputs')]
        '''))
    code = '''
        import sys
        import numpy as np
        from mmseg.apis import inference_model, init_model
        model = init_model(sys.argv[1], device='cpu')
        result = inference_model(model, np.zeros((40, 60, 3), np.uint8))
        print(type(model).__name__, tuple(result.pred_sem_seg.shape), model.dataset_meta['classes'])
    '''
    result = run_python(python, outside, code, str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split('\n')[-2] == "ClearCLIP (40, 60) ('sky', 'building')"


def readme_block(first_line: str) -> str:
    """The README's code block that starts with ``first_line``."""
    text = (REPO / 'README.md').read_text(encoding='utf-8')
    start = text.index(first_line)
    return text[start:text.index('```', start)]


def test_readme_inheritance_example_outside_the_checkout(installed, tmp_path, request):
    """The README's example, verbatim, from a folder outside the checkout against the
    non-editable install: export a config, inherit it, evaluate with fsa-seg test."""
    if request.node.callspec.params['installed'] != 'wheel':
        pytest.skip('run against the non-editable install')
    python, outside = installed
    fsa_seg_command = python.parent / 'fsa-seg'
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    export = subprocess.run([str(fsa_seg_command), 'config', 'clearclip_fsa_vit-b16_voc21',
                             '--dump', 'clearclip_voc21.py'], cwd=outside, env=env,
                            capture_output=True, text=True, timeout=600)
    assert export.returncode == 0, export.stderr[-2000:]
    import torch

    from fsa_seg.models.backbones import OpenCLIP, tiny_clip_arch

    from synthetic_data import make_benchmark
    weights = tmp_path / 'ViT-B-16.pt'  # stands in for OpenAI's file: a tiny CLIP's weights
    torch.save(OpenCLIP(arch=tiny_clip_arch(), random_init=True).model.state_dict(), weights)
    data_root = make_benchmark('voc21', tmp_path / 'data', sizes=((40, 56), (30, 30)))
    example = readme_block('# my_experiment.py')
    assert "_base_ = ['./clearclip_voc21.py']" in example
    (outside / 'my_experiment.py').write_text(
        example.replace('/models/ViT-B-16.pt', str(weights))
        .replace('/datasets/VOC2012', str(data_root)))
    (outside / 'tiny.py').write_text(  # the tiny CLIP the weights fit, fast settings
        "_base_ = ['./my_experiment.py']\n"
        f'model = dict(clip=dict(arch={tiny_clip_arch()!r}), templates="plain",\n'
        '             test_cfg=dict(crop_size=(224, 224), stride=(112, 112)))\n'
        'test_dataloader = dict(num_workers=0, persistent_workers=False)\n')
    run = subprocess.run([str(fsa_seg_command), 'test', 'tiny.py', '--out', 'results.json',
                          '--allow-partial-split', '--work-dir', 'work'], cwd=outside, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((outside / 'results.json').read_text())
    assert results['num_images'] == 2 and len(results['per_class']) == 21
