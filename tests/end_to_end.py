"""Helpers of the end-to-end tests: tiny user configs over ours, tools/test.py in this process,
and the IoU of a model's own predictions computed by hand (an expectation independent of
tools/test.py's data loading and metric)."""
import json
import os
import runpy
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TINY_ARCH = ("dict(embed_dim=32, vision_cfg=dict(image_size=224, patch_size=16, width=64, "
             "layers=3, head_width=16, mlp_ratio=4.0), text_cfg=dict(context_length=77, "
             "vocab_size=49408, width=32, heads=2, layers=1))")


TINY_VFM = ("dict(_delete_=True, type='TimmVFM', name='dino_vitb16', random_init=True, "
            "model_kwargs=dict(embed_dim=32, depth=2, num_heads=2))")


def tiny_config(tmp_path: Path, config: str, data_root: Path, proxy: bool = False,
                clip_weights: Path = None) -> Path:
    """A user-style config: inherit one of ours, swap in tiny models (random weights, or the
    given checkpoint file)."""
    vfm = f', vfm={TINY_VFM}' if proxy else ''
    weights = f"pretrained='{clip_weights}'" if clip_weights else 'random_init=True'
    clip = f"dict(_delete_=True, type='OpenCLIP', {weights}, arch={TINY_ARCH})"
    text = (f"_base_ = ['{REPO / 'configs' / config}']\n"
            f"model = dict(clip={clip}{vfm}, templates='plain',\n"
            "             test_cfg=dict(crop_size=(224, 224), stride=(112, 112)))\n"
            f"test_dataloader = dict(num_workers=0, persistent_workers=False,\n"
            f"                       dataset=dict(data_root='{data_root}'))\n")
    path = tmp_path / ('tiny_' + Path(config).name)
    path.write_text(text)
    return path


def tiny_proxyclip_112(folder: Path) -> Path:
    """ProxyCLIP + FSA (the benchmarks' config) with a tiny CLIP and VFM, 112-pixel crops and
    images resized to 112 on the short side: a quick end to end run of the benchmarks."""
    from fsa_seg.analysis.benchmark import PROXYCLIP_CONFIG
    from fsa_seg.apis.configs import resolve_config
    from fsa_seg.models.backbones import tiny_clip_arch
    config = folder / 'tiny_proxyclip_fsa.py'
    config.write_text(
        f"_base_ = [{str(resolve_config(PROXYCLIP_CONFIG))!r}]\n"
        f"model = dict(clip=dict(arch={tiny_clip_arch()!r}),\n"
        "             vfm=dict(model_kwargs=dict(embed_dim=32, depth=2, num_heads=2)),\n"
        "             templates='plain', text_cache_dir=False,\n"
        "             test_cfg=dict(crop_size=(112, 112), stride=(56, 56)))\n"
        "test_pipeline = [dict(type='LoadImageFromFile'),\n"
        "                 dict(type='Resize', scale=(2048, 112), keep_ratio=True),\n"
        "                 dict(type='LoadAnnotations'), dict(type='PackSegInputs')]\n"
        "test_dataloader = dict(dataset=dict(pipeline=test_pipeline))\n")
    return config


def free_port() -> int:
    """A TCP port free now, for a torchrun rendezvous."""
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


DIST_TEST_SH = ('bash', 'tools/dist_test.sh')


def dist_test(config, *args, entry=('fsa-seg', 'dist-test'), port=None, **popen):
    """``fsa-seg dist-test CONFIG 2 ARGS`` (or ``entry``: tools/dist_test.sh) in CPU processes
    on a free port: its completed process, or with ``popen`` arguments the running one."""
    command = [*entry, str(config), '2', *map(str, args)]
    env = dict(os.environ, PORT=str(port or free_port()), OMP_NUM_THREADS='1')
    if popen:
        return subprocess.Popen(command, cwd=REPO, env=env, text=True, **popen)
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)


def run_test_script(*args, status: int = 0):
    """Run tools/test.py in this process (as `python tools/test.py ARGS` would); its exit
    status must be ``status``."""
    argv = sys.argv
    sys.argv = ['tools/test.py', *map(str, args)]
    try:
        with pytest.raises(SystemExit) as exit_:
            runpy.run_path(str(REPO / 'tools' / 'test.py'), run_name='__main__')
    finally:
        sys.argv = argv
    assert exit_.value.code == status


def assert_reports_the_iou_of_its_own_predictions(config, data_root, results_file, benchmark,
                                                  labels_of=None):
    """The per-class IoU and mIoU tools/test.py reported equal those computed here by hand from
    the same model's predictions (by default the Python API, the config's pipeline; the same
    seed for the random weights; or ``labels_of(image_path)``) and the raw VOC annotations
    (VOC20: background and 255 ignored, labels − 1). Returns the confusion matrix (rows: truth)."""
    from fsa_seg.apis import init_segmentor, segment

    results = json.loads(Path(results_file).read_text())
    if labels_of is None:
        model = init_segmentor(str(config), device='cpu', seed=0)

        def labels_of(image):
            return np.asarray(segment(model, str(image)).labels)
    names = (data_root / 'ImageSets' / 'Segmentation' / 'val.txt').read_text().split()
    classes = 20 if benchmark == 'voc20' else 21
    confusion = np.zeros((classes, classes), dtype=np.int64)
    for name in names:
        predicted = labels_of(data_root / 'JPEGImages' / f'{name}.jpg')
        raw = np.array(Image.open(data_root / 'SegmentationClass' / f'{name}.png')).astype(int)
        truth = np.where((raw == 0) | (raw == 255), 255, raw - 1) if classes == 20 else raw
        valid = truth != 255
        np.add.at(confusion, (truth[valid], predicted[valid]), 1)
    union = confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
    with np.errstate(invalid='ignore'):
        iou = 100 * np.diag(confusion) / union        # NaN: a class neither true nor predicted
    assert results['num_images'] == len(names)
    reported = [metrics['IoU'] for metrics in results['per_class'].values()]  # class order
    np.testing.assert_allclose(reported, iou, rtol=0, atol=1e-5)   # mmseg counts in float32
    assert results['metrics']['mIoU'] == pytest.approx(np.nanmean(iou), abs=0.005)  # 2 decimals
    return confusion
