"""Test batches of images of different sizes.

mmseg's ``SegDataPreProcessor`` refuses a test batch whose images differ in size, which most
benchmarks' images do (VOC, Context, ADE20K: ``test_dataloader.batch_size > 1`` would stop at the
first such batch). A training-free segmentor segments each image of a batch on its own area
(``img_shape``), so padding the batch to its largest image changes no result: this preprocessor
pads the images bottom and right before mmseg's, and leaves a batch of one size as it is.
"""
from typing import List, Sequence, Union

import torch.nn.functional as F
from mmseg.models.data_preprocessor import SegDataPreProcessor
from mmseg.registry import MODELS
from torch import Tensor


@MODELS.register_module()
class PaddingSegDataPreProcessor(SegDataPreProcessor):
    """mmseg's ``SegDataPreProcessor`` that also takes test batches of several image sizes."""

    def forward(self, data: dict, training: bool = False) -> dict:
        if not training:
            data = dict(data, inputs=padded_to_the_largest(data['inputs']))
        return super().forward(data, training)


def padded_to_the_largest(images: Union[Tensor, Sequence[Tensor]]) -> Union[Tensor, List[Tensor]]:
    """(C, h, w) images → the same, zero-padded bottom and right to the largest h and w; a
    stacked batch or a batch of one size is returned as it is."""
    if isinstance(images, Tensor) or len({tuple(image.shape[-2:]) for image in images}) <= 1:
        return images
    height = max(image.shape[-2] for image in images)
    width = max(image.shape[-1] for image in images)
    return [F.pad(image, (0, width - image.shape[-1], 0, height - image.shape[-2]))
            for image in images]
