"""Helpers of the end-to-end tests: tiny user configs over ours, tools/test.py in this process,
and the IoU of a model's own predictions computed by hand (an expectation independent of
tools/test.py's data loading and metric)."""
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TINY_ARCH = ("dict(embed_dim=32, vision_cfg=dict(image_size=224, patch_size=16, width=64, "
             "layers=3, head_width=16, mlp_ratio=4.0), text_cfg=dict(context_length=77, "
             "vocab_size=49408, width=32, heads=2, layers=1))")


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
