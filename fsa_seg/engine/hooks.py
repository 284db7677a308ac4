"""Visualisation of every rank's images in distributed evaluation."""
from typing import Sequence

from mmengine.dist import gather_object, get_world_size
from mmseg.engine.hooks import SegVisualizationHook
from mmseg.registry import HOOKS
from mmseg.structures import SegDataSample


@HOOKS.register_module()
class DistSegVisualizationHook(SegVisualizationHook):
    """mmseg's :class:`SegVisualizationHook` that draws the images of every rank.

    mmseg's visualizer draws on rank 0 only, so with ``--show-dir`` a multi-process run kept
    rank 0's share of the images. Here each drawn iteration gathers the samples of all ranks to
    rank 0 (on the CPU), which draws them all; a single process behaves exactly as mmseg's hook.
    """

    def _after_iter(self, runner, batch_idx: int, data_batch: dict,
                    outputs: Sequence[SegDataSample], mode: str = 'val') -> None:
        if (self.draw and mode != 'train' and get_world_size() > 1
                and self.every_n_inner_iters(batch_idx, self.interval)):
            # Every rank runs the same iterations (the sampler pads the shards to one length),
            # so every rank reaches this collective.
            gathered = gather_object([sample.cpu() for sample in outputs])
            outputs = [sample for shard in gathered or [] for sample in shard]
        super()._after_iter(runner, batch_idx, data_batch, outputs, mode)
