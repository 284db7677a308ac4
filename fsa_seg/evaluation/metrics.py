"""mmseg's IoUMetric, keeping the per-class results it only prints, and checking each annotation
against its image and the benchmark's classes."""
import logging
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.logging import print_log
from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS

from .journal import Journal, to_line

BAD_ANNOTATION_POLICIES = ('error', 'warn')
FLAG = '--allow-bad-annotations'


class AnnotationError(ValueError):
    """An annotation that does not fit its image or the benchmark's classes."""


def annotation_problem(sample: dict, num_classes: int, ignore_index: int) -> Optional[dict]:
    """What is wrong with a sample's annotation (after the dataset's label conventions, e.g.
    ``reduce_zero_label``), or None: a size other than the image's, or values outside
    ``{0..C-1} ∪ {ignore_index}``."""
    label = sample['gt_sem_seg']['data'].squeeze(0)
    height, width = sample['pred_sem_seg']['data'].shape[-2:]  # the image's original size
    file = sample.get('seg_map_path', 'annotation')
    if tuple(label.shape[-2:]) != (height, width):
        return dict(file=file, problem='size',
                    message=f'{file}: annotation is {label.shape[-2]}x{label.shape[-1]} (HxW) '
                            f'but its image {sample.get("img_path", "")} is {height}x{width}')
    outside = (label >= num_classes) & (label != ignore_index)
    if not bool(outside.any()):  # one check per image, not per crop
        return None
    values = sorted(int(v) for v in torch.unique(label[outside]))
    shown = ', '.join(map(str, values[:10])) + (' …' if len(values) > 10 else '')
    reduced = ' after reduce_zero_label' if sample.get('reduce_zero_label') else ''
    return dict(file=file, problem='values', values=values, pixels=int(outside.sum()),
                message=f'{file}: label values {shown}{reduced} lie outside the '
                        f'{num_classes} classes (0..{num_classes - 1}, {ignore_index} = ignore)')


@METRICS.register_module()
class PerClassIoUMetric(IoUMetric):
    """Same metrics and log as :class:`mmseg.evaluation.IoUMetric`; after each evaluation
    ``per_class`` maps each class name to its IoU and Acc (in %, NaN for classes absent from
    both prediction and ground truth), ``num_images`` counts the evaluated images and
    ``annotation_problems`` lists the bad annotations met and ``undefined_predictions`` the
    scored images with pixels whose class probabilities were not finite (the segmentor's
    ``undefined_pixels``), for the JSON results of ``tools/test.py``.

    Every annotation is checked as it is scored (no extra pass over the data): a size other
    than its image's, or values outside the classes and ignore index (which mmseg's metric
    would silently drop from the label area while still counting the predictions there).

    With a ``journal`` (a :class:`~fsa_seg.evaluation.journal.Journal`, which ``tools/test.py``
    gives it), each image's result is written as it is scored, and a resumed evaluation adds
    the images scored before it. The areas are summed in float64, exact in any order of
    the images (mmseg's float32 sums round past 2^24 pixels a class).

    Args:
        on_bad_annotation: ``'error'`` (default): stop with an :class:`AnnotationError` naming
            the file and values. ``'warn'``: a warning per file; out-of-range pixels are
            ignored, an annotation of the wrong size is left out, and both are counted.
    """

    def __init__(self, on_bad_annotation: str = 'error', **kwargs):
        if on_bad_annotation not in BAD_ANNOTATION_POLICIES:
            raise ValueError(f'on_bad_annotation must be one of {BAD_ANNOTATION_POLICIES}, '
                             f'got {on_bad_annotation!r}')
        super().__init__(**kwargs)
        self.on_bad_annotation = on_bad_annotation
        self.annotation_problems: List[dict] = []
        self.undefined_predictions: List[dict] = []
        self.journal: Optional[Journal] = None
        self.num_resumed = 0  # of the images evaluated, those scored before a resumed run

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        """mmseg's, one sample at a time; each result carries the annotation's problem (or
        None), the prediction's undefined pixels (the segmentor's ``undefined_pixels``) and the
        image's path, so that results gathered from every rank keep one entry per image."""
        if self.format_only:
            return super().process(data_batch, data_samples)
        num_classes = len(self.dataset_meta['classes'])
        first = len(self.results)
        for sample in data_samples:
            self._score(data_batch, sample, num_classes)
        if self.journal is not None:
            self.journal.write(to_line(result) for result in self.results[first:]
                               if result[6] is not None)

    def _score(self, data_batch: dict, sample: dict, num_classes: int) -> None:
        """Append the sample's result: mmseg's four areas, the annotation's problem, the
        prediction's undefined pixels and the image's path."""
        problem = annotation_problem(sample, num_classes, self.ignore_index)
        if problem is not None:
            self._report(problem)
        about = (problem, sample.get('undefined_pixels', 0), sample.get('img_path'))
        if problem is not None and problem['problem'] == 'size':
            zeros = torch.zeros(num_classes)  # as mmseg's areas: float32, CPU
            self.results.append((zeros, zeros, zeros, zeros, *about))
            return
        if problem is not None:  # out-of-range values: ignored pixels
            label = sample['gt_sem_seg']['data']
            label = label.masked_fill((label >= num_classes) & (label != self.ignore_index),
                                      self.ignore_index)
            sample = dict(sample, gt_sem_seg=dict(sample['gt_sem_seg'], data=label))
        super().process(data_batch, [sample])
        self.results[-1] = (*self.results[-1], *about)

    def _report(self, problem: dict) -> None:
        if self.on_bad_annotation == 'error':
            raise AnnotationError(f'{problem["message"]}. Fix the annotation or the dataset '
                                  f'type, or pass {FLAG} to evaluate without it')
        what = ('left out' if problem['problem'] == 'size'
                else f'{problem["pixels"]} pixels ignored')
        print_log(f'{problem["message"]}; {what} ({FLAG})', logger='current',
                  level=logging.WARNING)

    def evaluate(self, size: int) -> dict:
        if self.journal is not None:  # every process has scored all its images
            self.journal.close()
        return super().evaluate(size)

    def compute_metrics(self, results: List[tuple]) -> Dict[str, float]:
        if self.format_only:
            return super().compute_metrics(results)
        earlier = []
        if self.journal is not None and self.journal.resume:
            earlier = self.journal.earlier_results(r[6] for r in results)
        self.num_resumed = len(earlier)
        results = list(results) + earlier
        problems = [result[4] for result in results if result[4] is not None]
        scored = [result for result in results
                  if result[4] is None or result[4]['problem'] != 'size']
        # float64 sums: exact pixel counts in any order (mmseg's float32 sums round past 2^24
        # pixels a class, so they depend on the order of the images; a resumed run's differs)
        areas = [tuple(area.double() for area in result[:4]) for result in scored]
        metrics = super().compute_metrics(areas)
        intersect, union, pred_area, label_area = (sum(column) for column in zip(*areas))
        per_metric = self.total_area_to_metrics(intersect, union, pred_area, label_area,
                                                ['mIoU'], self.nan_to_num, self.beta)
        iou, acc = (np.asarray(per_metric[k], dtype=float) * 100 for k in ('IoU', 'Acc'))
        self.per_class = {name: dict(IoU=float(i), Acc=float(a))
                          for name, i, a in zip(self.dataset_meta['classes'], iou, acc)}
        self.num_images = len(areas)
        self.annotation_problems = [{k: v for k, v in p.items() if k != 'message'}
                                    for p in problems]
        self.undefined_predictions = [dict(file=result[6] or 'image', pixels=result[5])
                                      for result in scored if result[5]]
        if self.undefined_predictions:
            pixels = sum(entry['pixels'] for entry in self.undefined_predictions)
            print_log(f'WARNING: {len(self.undefined_predictions)} of the scored images had '
                      f'pixels ({pixels} in all) whose class probabilities were not finite, so '
                      'labels arbitrary; these metrics count them as predicted (warnings above)',
                      logger='current', level=logging.WARNING)
        return metrics
