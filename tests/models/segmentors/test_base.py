import pytest
import torch
import torch.nn.functional as F
from cuda_checks import needs_cuda
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from fsa_seg.models.segmentors import base
from fsa_seg.models.segmentors.base import window_starts

from doubles import record_logs
from references import reference_pamr


def build(tiny_clip, **kwargs):
    cfg = dict(type='ClearCLIP', clip=tiny_clip, vocabulary=['cat', 'dog; puppy', 'grass'],
               templates='plain')
    cfg.update(kwargs)
    return MODELS.build(cfg)


def sample(height, width, ori=None):
    return SegDataSample(metainfo=dict(img_shape=(height, width), ori_shape=ori or (height, width)))


def test_windows_follow_mmseg_slide_inference():
    assert window_starts(500, 336, 112) == [0, 112, 164]
    assert window_starts(336, 336, 112) == [0]
    assert window_starts(200, 336, 112) == [0]  # one window, padded to the crop


def test_slide_with_one_window_covering_the_image_equals_whole_image(tiny_clip):
    image = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    slide = build(tiny_clip, test_cfg=dict(mode='slide', crop_size=(64, 64), stride=(32, 32)))
    whole = build(tiny_clip, test_cfg=dict(mode='whole'))
    whole.load_state_dict(slide.state_dict())
    whole.set_query_embeddings(slide.query_embeddings)
    a = slide.predict(image, [sample(64, 64)])[0]
    b = whole.predict(image, [sample(64, 64)])[0]
    assert torch.allclose(a.seg_logits.data, b.seg_logits.data, atol=1e-12)


def test_slide_averages_overlapping_windows(tiny_clip):
    model = build(tiny_clip, test_cfg=dict(mode='slide', crop_size=(32, 32), stride=(16, 16)))
    image = torch.randn(3, 48, 40, dtype=torch.float64)
    logits = model.inference_logits(image)
    expected = torch.zeros_like(logits)
    count = torch.zeros(48, 40, dtype=torch.float64)
    for y in (0, 16):
        for x in (0, 8):
            crop = model.crop_logits(image[None, :, y:y + 32, x:x + 32])[0]
            expected[:, y:y + 32, x:x + 32] += crop
            count[y:y + 32, x:x + 32] += 1
    assert torch.allclose(logits, expected / count, atol=1e-12)


def test_small_image_is_padded_to_the_crop_and_said_once(tiny_clip, monkeypatch):
    model = build(tiny_clip, test_cfg=dict(mode='slide', crop_size=(64, 64), stride=(32, 32)))
    logs = record_logs(monkeypatch, base)
    image = torch.randn(3, 20, 30, dtype=torch.float64)
    padded = torch.zeros(1, 3, 64, 64, dtype=torch.float64)
    padded[0, :, :20, :30] = image
    expected = model.crop_logits(padded)[0, :, :20, :30]
    assert torch.allclose(model.inference_logits(image), expected, atol=1e-12)
    model.inference_logits(torch.randn(3, 30, 20, dtype=torch.float64))
    model.inference_logits(torch.randn(3, 70, 20, dtype=torch.float64))  # one side fits
    assert logs == ['WARNING: the crop (64, 64) is larger than the image (20, 30) (as the test '
                    'pipeline prepares it) on both sides: its window is padded to the crop, 6.8x '
                    "the image's pixels; a crop no larger than the images is faster (said once)"]


@pytest.mark.parametrize('crop_batch_size', [16, 3])   # 3: batches span both images
def test_batch_of_two_equals_two_batches_of_one(tiny_clip, crop_batch_size):
    model = build(tiny_clip, test_cfg=dict(mode='slide', crop_size=(32, 32), stride=(16, 16)),
                  crop_batch_size=crop_batch_size)
    images = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    both = model.predict(images, [sample(48, 48, (60, 50)), sample(40, 48, (40, 48))])
    for i, (h, w, ori) in enumerate([(48, 48, (60, 50)), (40, 48, (40, 48))]):
        single = model.predict(images[i:i + 1, :, :h, :w], [sample(h, w, ori)])[0]
        assert torch.equal(both[i].pred_sem_seg.data, single.pred_sem_seg.data)
        assert torch.allclose(both[i].seg_logits.data, single.seg_logits.data, atol=1e-12)
        assert both[i].seg_logits.data.shape == (3, *ori)


def test_windows_of_several_images_share_forward_passes(tiny_clip):
    """Crops of one size from different images go through the model together; whole-image
    inference batches only images of one (padded) size."""
    calls = []
    for mode, expected in ((dict(mode='slide', crop_size=(32, 32), stride=(16, 16)), [6]),
                           (dict(mode='whole'), [1, 1])):
        model = build(tiny_clip, test_cfg=mode)
        model.crop_logits = lambda crops, context=None, f=model.crop_logits: (
            calls.append(len(crops)) or f(crops, context))
        images = torch.randn(2, 3, 48, 48, dtype=torch.float64)
        model.predict(images, [sample(48, 48), sample(40, 32)])  # 4 + 2 windows; 48², 48×32
        assert calls == expected
        calls.clear()


def test_pixels_without_finite_probabilities_are_counted_and_named_once_per_batch(
        tiny_clip, monkeypatch):
    """One NaN input pixel makes every logit of its whole-image pass NaN: all the pixels of
    that image at its original size are undefined, none of the other image's."""
    messages = record_logs(monkeypatch, base)
    model = build(tiny_clip, test_cfg=dict(mode='whole'))
    images = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    images[0, :, 5, 7] = float('nan')
    samples = [sample(48, 48, (60, 50)), sample(40, 48)]
    samples[0].set_metainfo(dict(img_path='data/a.jpg'))
    model.predict(images, samples)
    assert [s.metainfo['undefined_pixels'] for s in samples] == [3000, 0]
    assert len(messages) == 1
    assert 'not finite' in messages[0]
    assert messages[0].endswith('3000 of the 3000 pixels of data/a.jpg')
    model.predict(images[1:], samples[1:])   # a batch without: no warning
    assert len(messages) == 1
    model.predict(images.flip(0), [sample(40, 48), sample(48, 48)])  # no path: its place
    assert len(messages) == 2 and messages[1].endswith(
        '2304 of the 2304 pixels of image 2 of the batch')


def test_an_empty_batch_gives_no_samples(tiny_clip):
    assert build(tiny_clip).predict(torch.empty(0, 3, 48, 48, dtype=torch.float64)) == []


def test_synonym_max_and_probability_threshold_on_a_hand_made_map(tiny_clip):
    model = build(tiny_clip, logit_scale=1.0, prob_thd=0.4)
    # queries: cat | dog, puppy | grass; two pixels.
    logits = torch.log(torch.tensor([[0.1, 0.5], [0.3, 0.2], [0.35, 0.2], [0.25, 0.1]],
                                    dtype=torch.float64)).view(4, 1, 2)
    probs = model.class_probabilities(logits, (1, 2))
    expected = torch.tensor([[0.1, 0.5], [0.35, 0.2], [0.25, 0.1]], dtype=torch.float64)
    assert torch.allclose(probs[:, 0], expected)
    # pixel 0: dog wins with 0.35 < 0.4 → class 0; pixel 1: cat 0.5 ≥ 0.4.
    assert model.label_map(probs).tolist() == [[[0, 0]]]
    model.prob_thd = 0.3
    assert model.label_map(probs).tolist() == [[[1, 0]]]


def test_post_refine_refines_the_logits_at_the_original_size(tiny_clip):
    """As NACLIP applies PAMR: the raw logits resized to the original size, refined there on the
    network input's valid area resized to that size, then scaled, softmaxed, class max."""
    refine = dict(type='PAMR', steps=3, dilations=(1, 2))
    model = build(tiny_clip, test_cfg=dict(mode='whole'), post_refine=refine)
    plain = build(tiny_clip, test_cfg=dict(mode='whole'))
    plain.load_state_dict(model.state_dict())
    plain.set_query_embeddings(model.query_embeddings)
    inputs = torch.randn(1, 3, 40, 48, dtype=torch.float64)   # valid area 32×44 (batch padding)
    ori = (41, 57)
    out = model.predict(inputs, [sample(32, 44, ori)])[0]
    image = inputs[:, :, :32, :44]
    logits = plain.inference_logits(image[0])
    resized = F.interpolate(logits[None], size=ori, mode='bilinear', align_corners=False)
    guide = F.interpolate(image, size=ori, mode='bilinear', align_corners=False)
    refined = reference_pamr(guide, resized, 3, (1, 2))[0]
    assert (refined - resized[0]).abs().max() > 1e-3      # the refinement does something
    probs = (refined * 40).softmax(0)                      # queries: cat | dog, puppy | grass
    expected = torch.stack([probs[0], probs[1:3].amax(0), probs[3]])
    assert (out.seg_logits.data - expected).abs().max() < 1e-12
    assert torch.equal(out.pred_sem_seg.data[0], expected.argmax(0))


def test_without_plugin_and_post_refine_predict_is_the_plain_pipeline_bit_for_bit(tiny_clip):
    model = build(tiny_clip, test_cfg=dict(mode='slide', crop_size=(32, 32), stride=(16, 16)),
                  plugin=None, post_refine=None)
    assert model.plugin is None and model.post_refine is None
    inputs = torch.randn(1, 3, 40, 48, dtype=torch.float64)
    for ori in ((36, 44), (50, 61)):
        out = model.predict(inputs, [sample(36, 44, ori)])[0]
        probs = model.class_probabilities(model.inference_logits(inputs[0, :, :36, :44]), ori)
        assert torch.equal(out.seg_logits.data, probs)
        assert torch.equal(out.pred_sem_seg.data, model.label_map(probs))


def test_vocabulary_can_change_at_run_time(tiny_clip):
    model = build(tiny_clip, test_cfg=dict(mode='whole'))
    model.set_vocabulary(['sky', 'road', 'tree; bush', 'car'])
    assert model.num_classes == 4 and model.query_embeddings.shape == (5, 32)
    assert model.dataset_meta['classes'] == ('sky', 'road', 'tree', 'car')
    assert len(model.dataset_meta['palette']) == 4
    out = model.predict(torch.randn(1, 3, 32, 32, dtype=torch.float64))[0]
    assert out.seg_logits.data.shape == (4, 32, 32)
    assert int(out.pred_sem_seg.data.max()) < 4


def test_attention_logits_are_cosines_with_the_queries_in_aligned_rows(tiny_clip):
    """The plug-ins' logits_fn: cos(ln_post(out_proj(heads)) @ proj, text) for each query, a view
    of rows padded to a multiple of 8 queries (5 → 8), whose product a GPU runs in its aligned
    kernels; the query embeddings keep their 5 rows. Differentiable, as the cosines are."""
    model = build(tiny_clip, test_cfg=dict(mode='whole'))
    model.set_vocabulary(['sky', 'road', 'tree; bush', 'car'])
    attn = model.clip.last_block.attn
    heads = torch.randn(2, attn.num_heads, 7, attn.out_proj.in_features // attn.num_heads,
                        generator=torch.Generator().manual_seed(0), dtype=model.clip.dtype,
                        requires_grad=True)
    logits = model.attention_logits(heads)
    merged = heads.transpose(1, 2).flatten(2)
    features = model.clip.visual.ln_post(merged @ attn.out_proj.weight.t()
                                         + attn.out_proj.bias) @ model.clip.visual.proj
    expected = F.normalize(features, dim=-1) @ model.query_embeddings.double().t()
    assert logits.shape == (2, 7, 5) and logits.stride(-2) == 8
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-14)
    gradient, = torch.autograd.grad(logits.sum(), heads)
    torch.testing.assert_close(gradient, torch.autograd.grad(expected.sum(), heads)[0],
                               rtol=0, atol=1e-13)
    assert model.query_embeddings.shape == (5, 32)
    assert not model.aligned_query_embeddings[5:].any()


def test_training_is_refused(tiny_clip):
    with pytest.raises(NotImplementedError, match='training-free'):
        build(tiny_clip).loss(None, None)


def test_a_crop_smaller_than_a_patch_is_refused(tiny_clip):
    patch = build(tiny_clip).clip.patch_size
    crop = (patch[0], patch[1] - 1)
    with pytest.raises(ValueError, match=rf'the crop \({crop[0]}, {crop[1]}\) is smaller than '
                                         r"CLIP's patches"):
        build(tiny_clip, test_cfg=dict(mode='slide', crop_size=crop, stride=crop))
    build(tiny_clip, test_cfg=dict(mode='slide', crop_size=patch, stride=patch))  # one patch


def test_windows_and_threshold_are_checked_when_built(tiny_clip):
    """A number is a square size; what would crash mid-run (no pair, stride 0) or leave pixels
    no window covers (stride > crop: NaN probabilities there) or send every pixel to class 0
    (prob_thd > 1) is refused when the model is built."""
    model = build(tiny_clip, test_cfg=dict(mode='slide', crop_size=64, stride=32.0))
    assert model.test_cfg.crop_size == (64, 64) and model.test_cfg.stride == (32, 32)
    assert model.windows(64, 96)[0] == [(0, 64, 0, 64), (0, 64, 32, 96)]
    for window, message in [
            (dict(crop_size=64, stride=(0, 0)), r'stride must be a positive size .*\(0, 0\)'),
            (dict(crop_size=(64, 64)), r'stride must be a positive size .*None'),
            (dict(crop_size=(64, 64), stride=(32, 80)),
             r'^stride \(32, 80\) is larger than the crop \(64, 64\): windows would leave gaps$'),
            (dict(crop_size='64', stride=32), r"crop must be a positive size .*'64'")]:
        with pytest.raises(ValueError, match=message):
            build(tiny_clip, test_cfg=dict(mode='slide', **window))
    for prob_thd in (1.5, -0.1, '0.2'):
        with pytest.raises(ValueError, match=r'prob_thd must lie in \[0, 1\]'):
            build(tiny_clip, prob_thd=prob_thd)
    with pytest.raises(ValueError, match="test_cfg.mode must be 'slide' or 'whole', got None"):
        build(tiny_clip, test_cfg=dict(crop_size=64, stride=32))


def test_mmseg_checkpoint_arguments_are_accepted_only_when_empty(tiny_clip):
    build(tiny_clip, pretrained=None, train_cfg=None)  # what mmseg.apis.init_model passes
    with pytest.raises(ValueError, match='clip.pretrained'):
        build(tiny_clip, pretrained='some_checkpoint.pth')


# ---------------------------------------------------------------------------- upsampling
def test_crops_upsample_channels_last_on_cuda_and_as_before_elsewhere():
    """On CUDA the maps go channels-last into the upsampling (torch's kernel for that layout
    runs a thread per value, its kernel for contiguous maps a thread per pixel over all
    channels); seen through fake CUDA tensors. On CPU the result is F.interpolate's on the maps
    as given, bit for bit and in the same layout."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        values = torch.empty(2, 768, 21, 21, device='cuda', dtype=torch.float16)
        out = base.upsample_bilinear(values, (42, 42))
    assert out.shape == (2, 768, 42, 42) and out.dtype == torch.float16
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    generator = torch.Generator().manual_seed(0)
    for maps in (torch.randn(2, 21, 7, 9, generator=generator, dtype=torch.float64),
                 torch.randn(2, 7, 9, 21, generator=generator).permute(0, 3, 1, 2)):
        out = base.upsample_bilinear(maps, (28, 20))
        expected = F.interpolate(maps, size=(28, 20), mode='bilinear', align_corners=False)
        assert torch.equal(out, expected) and out.stride() == expected.stride()


@needs_cuda
def test_on_cuda_the_channels_last_upsampling_agrees_with_the_contiguous_one():
    maps = torch.randn(2, 768, 21, 21, device='cuda')
    expected = F.interpolate(maps, size=(42, 42), mode='bilinear', align_corners=False)
    torch.testing.assert_close(base.upsample_bilinear(maps, (42, 42)), expected,
                               rtol=1e-6, atol=1e-6)
