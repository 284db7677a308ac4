"""PerClassIoUMetric: mmseg's metrics per class, and each annotation checked as it is scored."""
import pytest
import torch

from fsa_seg.evaluation import AnnotationError, PerClassIoUMetric

from doubles import record_logs

PRED = [[0, 1, 2], [0, 1, 1]]


def sample(pred, gt, name='a'):
    return dict(pred_sem_seg=dict(data=torch.tensor([pred])),
                gt_sem_seg=dict(data=torch.tensor([gt], dtype=torch.uint8)),
                seg_map_path=f'/data/{name}.png', img_path=f'/data/{name}.jpg')


def evaluate(samples, **kwargs):
    metric = PerClassIoUMetric(**kwargs)
    metric.dataset_meta = dict(classes=('sky', 'tree', 'road'))
    metric.process({}, samples)
    return metric, metric.compute_metrics(metric.results)


def test_values_outside_the_classes_stop_the_run_naming_the_file():
    with pytest.raises(AnnotationError, match=r'/data/a.png: label values 30 lie outside the 3 '
                                              r'classes \(0..2, 255 = ignore\)'):
        evaluate([sample(PRED, [[0, 1, 2], [30, 1, 255]])])


def test_allowed_values_outside_the_classes_are_ignored_and_counted():
    metric, metrics = evaluate([sample(PRED, [[0, 1, 2], [30, 1, 255]])],
                               on_bad_annotation='warn')
    # by hand: the four valid pixels are all right; mmseg's metric would have counted the
    # "30" pixel as a false positive of class 0 (class 0 IoU 50 %, mIoU 83.33)
    assert metrics['mIoU'] == 100.0 and metrics['aAcc'] == 100.0
    assert metric.per_class['sky'] == dict(IoU=100.0, Acc=100.0)
    assert metric.annotation_problems == [dict(file='/data/a.png', problem='values',
                                               values=[30], pixels=1)]
    assert metric.num_images == 1


def test_an_annotation_of_another_size_stops_the_run_or_is_left_out():
    good = sample([[0, 0], [1, 1]], [[0, 0], [1, 0]], 'good')
    wrong = sample(PRED, [[0, 1], [2, 2]], 'wrong')
    with pytest.raises(AnnotationError, match=r'/data/wrong.png: annotation is 2x2 \(HxW\) but '
                                              r'its image /data/wrong.jpg is 2x3'):
        evaluate([good, wrong])
    metric, metrics = evaluate([good, wrong], on_bad_annotation='warn')
    # the good image alone, by hand: sky 2/3 IoU, tree 1/2 IoU, road absent (NaN)
    assert metric.per_class['sky']['IoU'] == pytest.approx(200 / 3, abs=0.01)
    assert metric.per_class['tree']['IoU'] == pytest.approx(50.0)
    assert metrics['aAcc'] == 75.0 and metric.num_images == 1
    assert [p['problem'] for p in metric.annotation_problems] == ['size']


def test_a_clean_annotation_changes_nothing():
    metric, metrics = evaluate([sample(PRED, [[0, 1, 2], [0, 1, 255]])])
    assert metrics['mIoU'] == 100.0 and metric.annotation_problems == []


def test_predictions_with_undefined_pixels_are_listed_and_still_scored(monkeypatch):
    """The segmentor's ``undefined_pixels`` (see test_base.py) is carried to the results; the
    image is scored as predicted, as the official code scores it."""
    from fsa_seg.evaluation import metrics as module
    messages = record_logs(monkeypatch, module)
    clean = sample(PRED, [[0, 1, 2], [0, 1, 1]], 'clean')
    undefined = dict(sample(PRED, [[0, 1, 2], [0, 2, 1]], 'nan'), undefined_pixels=4)
    metric, metrics = evaluate([clean, undefined])
    assert metric.undefined_predictions == [dict(file='/data/nan.jpg', pixels=4)]
    assert metrics['aAcc'] == pytest.approx(1100 / 12, abs=0.01)   # 11 of 12 pixels right
    assert messages == ['WARNING: 1 of the scored images had pixels (4 in all) whose class '
                        'probabilities were not finite, so labels arbitrary; these metrics '
                        'count them as predicted (warnings above)']
    metric, _ = evaluate([clean])
    assert metric.undefined_predictions == [] and len(messages) == 1
