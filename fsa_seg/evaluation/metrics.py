"""mmseg's IoUMetric, keeping the per-class results it only prints."""
from typing import Dict, List

import numpy as np
from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS


@METRICS.register_module()
class PerClassIoUMetric(IoUMetric):
    """Same metrics and log as :class:`mmseg.evaluation.IoUMetric`; after each evaluation
    ``per_class`` maps each class name to its IoU and Acc (in %, NaN for classes absent from
    both prediction and ground truth) and ``num_images`` counts the evaluated images, for the
    JSON results of ``tools/test.py``."""

    def compute_metrics(self, results: List[tuple]) -> Dict[str, float]:
        metrics = super().compute_metrics(results)
        if self.format_only:
            return metrics
        intersect, union, pred_area, label_area = (sum(column) for column in zip(*results))
        per_metric = self.total_area_to_metrics(intersect, union, pred_area, label_area,
                                                ['mIoU'], self.nan_to_num, self.beta)
        iou, acc = (np.asarray(per_metric[k], dtype=float) * 100 for k in ('IoU', 'Acc'))
        self.per_class = {name: dict(IoU=float(i), Acc=float(a))
                          for name, i, a in zip(self.dataset_meta['classes'], iou, acc)}
        self.num_images = len(results)
        return metrics


class AnnotationError(ValueError):
    """An annotation that does not fit its image or the benchmark's classes."""
