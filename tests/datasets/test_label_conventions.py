"""End-to-end label conventions: each benchmark config, run through mmengine's Runner and
mmseg's IoUMetric on a synthetic copy of its on-disk layout, scores a known prediction exactly."""
from pathlib import Path

import numpy as np
import pytest
from mmengine import Config
from mmengine.runner import Runner
from mmengine.structures import PixelData
from mmseg.models.segmentors import BaseSegmentor
from mmseg.registry import MODELS
from PIL import Image

import fsa_seg.datasets  # noqa: F401  (registers PascalVOC20Dataset, COCOObjectDataset)

from synthetic_data import BENCHMARKS, DEFAULT_SIZES, LAYOUTS, make_benchmark

pytestmark = pytest.mark.filterwarnings('ignore:The draw is False')  # default_runtime's hook

REPO = Path(__file__).resolve().parents[2]
DATASET_CONFIGS = REPO / 'configs' / '_base_' / 'datasets'
RUNTIME_CONFIG = REPO / 'configs' / '_base_' / 'default_runtime.py'

# Expected after loading: number of classes, short side of the resized image, and whether raw
# label 0 is ignored (reduce_zero_label: 0 -> 255, v -> v - 1).
EXPECTED = {
    'voc21': (21, 336, False),
    'voc20': (20, 336, True),
    'context60': (60, 336, False),
    'context59': (59, 336, True),
    'coco_object': (81, 336, False),
    'coco_stuff164k': (171, 336, False),
    'cityscapes': (19, 448, False),
    'ade20k': (150, 448, True),
}


@MODELS.register_module(name='GroundTruthTestSegmentor', force=True)
class GroundTruthTestSegmentor(BaseSegmentor):
    """Predicts the ground truth, with ``boxes`` (y0, y1, x0, x1, label) painted over it, and
    records what each sample looked like when it reached the model."""

    def __init__(self, boxes=(), data_preprocessor=None):
        super().__init__(data_preprocessor=data_preprocessor)
        self.boxes = [tuple(box) for box in boxes]
        self.seen = []

    def predict(self, inputs, data_samples):
        for sample in data_samples:
            gt = sample.gt_sem_seg.data
            pred = gt.clone()
            for y0, y1, x0, x1, label in self.boxes:
                pred[:, y0:y1, x0:x1] = label
            sample.pred_sem_seg = PixelData(data=pred)
            self.seen.append(
                dict(img_path=sample.img_path, input_hw=tuple(inputs.shape[-2:]),
                     gt=gt[0].cpu().numpy()))
        return data_samples

    def extract_feat(self, inputs):
        raise NotImplementedError

    def encode_decode(self, inputs, batch_data_samples):
        raise NotImplementedError

    def loss(self, inputs, data_samples):
        raise NotImplementedError

    def _forward(self, inputs, data_samples=None):
        raise NotImplementedError


def run_benchmark(benchmark: str, data_root: Path, work_dir: Path, boxes=()):
    """Compose the dataset config with the default runtime, as real configs do, swap in the
    ground-truth segmentor and run the test loop. Returns (metrics, runner)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    composed = work_dir / 'config.py'
    composed.write_text(f"_base_ = ['{DATASET_CONFIGS / benchmark}.py', '{RUNTIME_CONFIG}']\n")
    cfg = Config.fromfile(composed)
    cfg.model = dict(type='GroundTruthTestSegmentor', boxes=list(boxes),
                     data_preprocessor=dict(type='SegDataPreProcessor'))
    cfg.test_dataloader.dataset.data_root = str(data_root)
    cfg.test_dataloader.update(num_workers=0, persistent_workers=False)
    # Unique names: mmengine keeps loggers and visualizers as named global instances.
    cfg.update(work_dir=str(work_dir), launcher='none', log_level='WARNING',
               experiment_name=f'{benchmark}_{work_dir.parent.name}')
    cfg.visualizer.name = cfg.experiment_name
    runner = Runner.from_cfg(cfg)
    return runner.test(), runner


def label_path(benchmark: str, data_root: Path, img_path: str) -> Path:
    layout = LAYOUTS[benchmark]
    relative = str(Path(img_path).relative_to(data_root / layout.img_dir))
    return data_root / layout.seg_dir / (relative[:-len(layout.img_suffix)] + layout.seg_suffix)


def to_train_ids(raw: np.ndarray, reduce_zero_label: bool) -> np.ndarray:
    if not reduce_zero_label:
        return raw
    return np.where((raw == 0) | (raw == 255), 255, raw.astype(np.int64) - 1)


# Not `benchmark`: pytest-benchmark (installed here) owns that fixture name.
@pytest.mark.parametrize('name', BENCHMARKS)
def test_ground_truth_prediction_scores_100(name, tmp_path):
    """Right split, GT at original size, image resized to the protocol's short side, labels
    decoded by the benchmark's convention, and every class id in range: mIoU 100."""
    num_classes, short_side, reduce_zero_label = EXPECTED[name]
    data_root = make_benchmark(name, tmp_path / 'data')
    metrics, runner = run_benchmark(name, data_root, tmp_path / 'work')
    seen = runner.model.seen

    assert metrics['mIoU'] == 100 and metrics['aAcc'] == 100
    layout = LAYOUTS[name]
    expected_images = sorted(str(data_root / layout.img_dir / (layout.name(i) + layout.img_suffix))
                             for i in range(len(DEFAULT_SIZES)))
    assert sorted(s['img_path'] for s in seen) == expected_images  # training decoy left out
    for sample in seen:
        raw = np.array(Image.open(label_path(name, data_root, sample['img_path'])))
        assert sample['gt'].shape == raw.shape  # ground truth is not resized
        assert min(sample['input_hw']) == short_side
        np.testing.assert_array_equal(sample['gt'], to_train_ids(raw, reduce_zero_label))
    labels = np.unique(np.concatenate([s['gt'].ravel() for s in seen]))
    classes = labels[labels != 255]
    assert classes.min() == 0 and classes.max() == num_classes - 1


# A 4x6 raw VOC label map: background left, aeroplane right, a 255 border row at the bottom.
VOC_RAW = np.array([[0, 0, 0, 1, 1, 1]] * 3 + [[255] * 6], dtype=np.uint8)


@pytest.mark.parametrize(
    'name, boxes, expected_iou, expected',
    [
        # VOC21: two background pixels (rows 0-1, col 2) predicted as aeroplane; the border row
        # predicted as bicycle does not count, so bicycle has neither ground truth nor scored
        # prediction (NaN, left out of the mean).
        ('voc21', [(0, 2, 2, 3, 1), (3, 4, 0, 6, 2)],
         dict(background=100 * 7 / 9, aeroplane=100 * 9 / 11, bicycle=np.nan),
         dict(mIoU=100 * (7 / 9 + 9 / 11) / 2, aAcc=100 * 16 / 18, mAcc=100 * (7 / 9 + 1) / 2)),
        # VOC20: background is ignored, so painting it (class 5) changes nothing; three
        # aeroplane pixels (col 5) predicted as bicycle.
        ('voc20', [(0, 3, 0, 3, 5), (0, 3, 5, 6, 1)],
         dict(aeroplane=100 * 6 / 9, bicycle=0.0, bus=np.nan),
         dict(mIoU=100 * (6 / 9 + 0) / 2, aAcc=100 * 6 / 9, mAcc=100 * 6 / 9)),
    ])
def test_known_error_gives_hand_computed_iou(name, boxes, expected_iou, expected, tmp_path):
    data_root = make_benchmark(name, tmp_path / 'data', labels=[VOC_RAW])
    metrics, runner = run_benchmark(name, data_root, tmp_path / 'work', boxes=boxes)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=0.006), key
    per_class = runner.test_evaluator.metrics[0].per_class  # PerClassIoUMetric (fsa_seg)
    for class_name, value in expected_iou.items():
        assert per_class[class_name]['IoU'] == pytest.approx(value, nan_ok=True), class_name
