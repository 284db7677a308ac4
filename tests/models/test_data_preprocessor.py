"""Test batches of images of several sizes (fsa_seg/models/data_preprocessor.py)."""
import torch
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from fsa_seg.models.data_preprocessor import padded_to_the_largest


def test_images_are_padded_bottom_right_to_the_largest_and_one_size_is_left_alone():
    tall = torch.ones(3, 4, 2, dtype=torch.uint8)
    wide = torch.full((3, 2, 5), 2, dtype=torch.uint8)
    padded = padded_to_the_largest([tall, wide])
    assert [tuple(image.shape) for image in padded] == [(3, 4, 5), (3, 4, 5)]
    assert padded[0][:, :4, :2].eq(1).all() and padded[0][:, :, 2:].eq(0).all()
    assert padded[1][:, :2, :5].eq(2).all() and padded[1][:, 2:].eq(0).all()
    same = [tall, tall.clone()]
    assert padded_to_the_largest(same) is same


def samples_of(images):
    return [SegDataSample(metainfo=dict(img_shape=tuple(image.shape[-2:]),
                                        ori_shape=tuple(image.shape[-2:]))) for image in images]


def test_a_batch_of_several_sizes_gives_what_each_image_gives_alone(tiny_clip):
    """mmseg's SegDataPreProcessor refuses such a batch; each image is segmented on its own area,
    so the padding changes no result: the single-image outputs (to float64's rounding: the
    crops of all three go through the model together)."""
    model = MODELS.build(dict(type='ClearCLIP', clip=tiny_clip, vocabulary=['cat', 'dog', 'sky'],
                              templates='plain',
                              test_cfg=dict(mode='slide', crop_size=(32, 32), stride=(16, 16))))
    generator = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, size, generator=generator, dtype=torch.uint8)
              for size in ((3, 40, 56), (3, 30, 30), (3, 56, 28))]
    together = model.test_step(dict(inputs=images, data_samples=samples_of(images)))
    for image, sample in zip(images, together):
        alone = model.test_step(dict(inputs=[image], data_samples=samples_of([image])))[0]
        assert sample.seg_logits.data.shape[-2:] == image.shape[-2:]
        assert torch.allclose(sample.seg_logits.data, alone.seg_logits.data, atol=1e-12)
        assert torch.equal(sample.pred_sem_seg.data, alone.pred_sem_seg.data)
