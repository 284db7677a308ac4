"""Crop batches replayed from CUDA graphs (fsa_seg/models/cuda_graphs.py): one capture
per signature and model state, fresh outputs, eager fallbacks, and a segmentor whose predictions
do not change. On CPU a recording capture stands in for CUDA's (its replay runs the forward on
the static input, as a graph replays its kernels); on a GPU the real graphs are checked against
eager bit for bit and for host synchronisation."""
import copy
import gc
import pickle
import warnings
import weakref

import pytest
import torch
from cuda_checks import host_syncs_raise, needs_cuda
from mmseg.registry import MODELS

from fsa_seg.apis import load_test_config
from fsa_seg.apis.configs import ConfigError
from fsa_seg.models.cuda_graphs import CropGraphs, hold_during_capture, model_state
from fsa_seg.models.pos_embed import ResampledCache

from doubles import TINY_VFM, RecordingCapture


def cpu_graphs(**kwargs):
    capture = RecordingCapture(**kwargs)
    return CropGraphs(device_types=('cpu',), capture=capture, capacity=2), capture


def double(x):
    return x * 2


@torch.no_grad()
def test_one_capture_per_signature_and_state_and_fresh_outputs():
    graphs, capture = cpu_graphs()
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    out_a = graphs(double, a, 'state')
    out_b = graphs(double, b, 'state')                 # replayed on b's values
    assert torch.equal(out_a, a * 2) and torch.equal(out_b, b * 2)  # out_a not overwritten
    assert capture.shapes == [(2, 3)]
    graphs(double, torch.randn(4, 3), 'state')         # another shape
    graphs(double, a, 'other state')                   # another model state
    assert capture.shapes == [(2, 3), (4, 3), (2, 3)]
    assert torch.equal(graphs(double, a.double(), 'other state'), a.double() * 2)  # dtype
    assert len(capture.shapes) == 4


@torch.no_grad()
def test_least_recently_used_graphs_are_dropped_beyond_the_capacity():
    graphs, capture = cpu_graphs()
    for rows in (1, 2, 1, 3, 1, 2):                    # capacity 2: 2 was dropped when 3 came
        graphs(double, torch.ones(rows, 2), 'state')
    assert capture.shapes == [(1, 2), (2, 2), (3, 2), (2, 2)] and len(graphs) == 2
    graphs.clear()
    assert len(graphs) == 0


def test_autograd_and_other_devices_run_eagerly():
    graphs, capture = cpu_graphs()
    x = torch.randn(2, 2, requires_grad=True)
    assert torch.equal(graphs(double, x, 's'), x * 2)  # autograd on: never captured
    with torch.no_grad():
        cuda_only = CropGraphs(capture=capture)
        with pytest.warns(UserWarning, match=r'^cuda_graphs: crops on cpu run eagerly \(graphs '
                                             r'replay crops on cuda only\)$'):
            assert torch.equal(cuda_only(double, x, 's'), x * 2)
        with warnings.catch_warnings():
            warnings.simplefilter('error')                # said once
            assert torch.equal(cuda_only(double, x, 's'), x * 2)
    assert capture.shapes == []


@torch.no_grad()
def test_a_capture_that_fails_falls_back_to_eager_once_and_out_of_memory_is_raised():
    graphs, capture = cpu_graphs(fails_with=RuntimeError('operation not permitted when stream '
                                                         'is capturing\nmore'))
    x = torch.randn(2, 2)
    with pytest.warns(UserWarning, match=r'capture failed for crops of shape \(2, 2\): '
                                         r'operation not permitted when stream is capturing '
                                         r'\(they run eagerly\)$'):
        assert torch.equal(graphs(double, x, 's'), x * 2)
    assert torch.equal(graphs(double, x, 's'), x * 2)  # not tried again
    assert capture.shapes == [(2, 2)]
    # what a measurement of replays reports: these crops were not replayed
    assert graphs.failures == ['crops of shape (2, 2): operation not permitted when stream is '
                               'capturing']
    graphs.clear()
    assert graphs.failures == []
    graphs, _ = cpu_graphs(fails_with=torch.cuda.OutOfMemoryError('out of memory'))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        graphs(double, x, 's')


@torch.no_grad()
def test_copies_and_pickles_of_a_model_start_without_graphs():
    graphs, capture = cpu_graphs()
    graphs(double, torch.ones(1), 's')
    for clone in (copy.deepcopy(graphs), pickle.loads(pickle.dumps(graphs))):
        assert len(clone) == 0 and clone.capacity == 2 and clone.device_types == ('cpu',)


@torch.no_grad()
def test_a_graph_keeps_alive_what_a_cache_served_during_its_capture():
    """A replay reads the cache's tensor at its captured address: the graph, not the cache,
    decides how long it lives (a cache of one grid, graphs of two shapes)."""
    graphs, _ = cpu_graphs()
    cache, source = ResampledCache(capacity=1), torch.ones(1)

    def forward(x):
        return x + cache(source, x.shape[-1], lambda: torch.arange(float(x.shape[-1])))

    x = torch.zeros(2, 3)
    graphs(forward, x, 's')
    served = weakref.ref(cache(source, 3, None))
    forward(torch.zeros(1, 4))                           # eagerly: the cache drops grid 3
    gc.collect()
    assert served() is not None                          # the graph of (2, 3) still holds it
    assert torch.equal(graphs(forward, x + 1, 's'), x + 1 + torch.arange(3.0))
    graphs(forward, torch.zeros(2, 5), 's')
    graphs(forward, torch.zeros(2, 6), 's')              # capacity 2: the (2, 3) graph goes
    gc.collect()
    assert served() is None
    assert hold_during_capture(x) is x                   # outside a capture: held by nothing


def test_model_state_follows_storage_and_in_place_changes():
    layer = torch.nn.Linear(2, 2)
    tensors = list(layer.parameters())
    before = model_state(tensors, 'plugin')
    assert model_state(tensors, 'plugin') == before
    assert model_state(tensors, 'other plugin') != before
    layer.load_state_dict({k: v.clone() for k, v in layer.state_dict().items()})  # in place
    assert model_state(tensors, 'plugin') != before
    after_load = model_state(tensors, 'plugin')
    layer.double()                                       # new storage, the same parameters
    assert model_state(tensors, 'plugin') != after_load


# ---------------------------------------------------------------------------- in a segmentor
def tiny_proxyclip(tiny_clip, plugin=dict(type='FSA'), crop_batch_size=4, **kwargs):
    return MODELS.build(dict(
        type='ProxyCLIP', clip=tiny_clip, vocabulary=['a', 'b', 'c'], templates='plain',
        text_cache_dir=False, plugin=plugin,
        vfm=dict(type='TimmVFM', name='dino_vitb8', random_init=True, model_kwargs=TINY_VFM),
        test_cfg=dict(mode='slide', crop_size=(112, 112), stride=(56, 56)),
        crop_batch_size=crop_batch_size, **kwargs))


def test_a_segmentor_keeps_a_graph_for_every_crop_batch_size(tiny_clip):
    """Batches of several images end in crop batches of any size up to ``crop_batch_size``:
    that many graphs are kept, at least 8."""
    assert tiny_proxyclip(tiny_clip, crop_batch_size=12, cuda_graphs=True).crop_graphs.capacity \
        == 12
    assert tiny_proxyclip(tiny_clip, cuda_graphs=True).crop_graphs.capacity == 8


@torch.no_grad()
def test_a_segmentor_with_graphs_predicts_what_it_predicts_without(tiny_clip):
    """Two image sizes (windows 2 × 2 and 1 × 3: batches of 4, and of 3), a new vocabulary and
    new weights in place: the same predictions as eager, one capture per batch shape and state."""
    torch.manual_seed(0)
    eager = tiny_proxyclip(tiny_clip)
    torch.manual_seed(0)  # the same random weights, text tower included
    graphed = tiny_proxyclip(tiny_clip, cuda_graphs=True)
    graphed.crop_graphs, capture = cpu_graphs()
    images = [torch.randn(1, 3, 150, 160, dtype=torch.float64),
              torch.randn(1, 3, 112, 200, dtype=torch.float64)]

    def same_predictions():
        for image in images:
            expected = eager.predict(image)[0].seg_logits.data
            assert torch.equal(graphed.predict(image)[0].seg_logits.data, expected)

    same_predictions()
    same_predictions()
    assert capture.shapes == [(4, 3, 112, 112), (3, 3, 112, 112)]
    # a graph keeps the logits on DINO-B/8's 14 × 14 grid (3 queries), upsampled outside it
    assert capture.output_shapes == [(4, 3, 14, 14), (3, 3, 14, 14)]
    for model in (eager, graphed):
        model.set_vocabulary(['x', 'y'])
    assert len(graphed.crop_graphs) == 0                 # the old embeddings' graphs are freed
    same_predictions()
    weights = {k: v * 1.5 for k, v in eager.state_dict().items()}
    for model in (eager, graphed):
        model.load_state_dict(weights, strict=False)
    same_predictions()
    assert len(capture.shapes) == 6
    for model in (eager, graphed):               # an in-place edit of the CLIP's position grid
        model.clip.visual.positional_embedding.mul_(0.5)
    same_predictions()
    for model in (eager, graphed):               # new storage of every parameter and buffer
        model.float()
    images = [image.float() for image in images]
    same_predictions()
    assert len(capture.shapes) == 10


def test_cass_refuses_graphs_in_one_line(tiny_clip):
    with pytest.raises(ValueError, match='CASS runs host code per crop and cannot replay crops '
                                         'as CUDA graphs: leave cuda_graphs off'):
        MODELS.build(dict(type='CASS', clip=tiny_clip, vocabulary=['a'], templates='plain',
                          text_cache_dir=False, cuda_graphs=True,
                          vfm=dict(type='TimmVFM', name='dino_vitb8', random_init=True,
                                   model_kwargs=TINY_VFM)))
    with pytest.raises(ConfigError, match=r'CASS runs host code per crop .* leave out '
                                          r'--cuda-graphs$'):
        load_test_config('cass_vit-b16_voc21', cuda_graphs=True)
    cfg = load_test_config('proxyclip_fsa_vit-b16_dino-b8_voc21', cuda_graphs=True)
    assert cfg.model.cuda_graphs is True


@needs_cuda
@pytest.mark.parametrize('plugin', [None, dict(type='FSA')], ids=['baseline', 'fsa'])
def test_on_cuda_replayed_crops_equal_eager_bit_for_bit_without_host_syncs(tiny_clip, plugin):
    """Real CUDA graphs, fp16, FSA's fused kernel inside: replays equal eager exactly, and a
    replay (state check, input copy, replay, output copy) never synchronises with the host."""
    torch.manual_seed(0)
    model = tiny_proxyclip(dict(tiny_clip, precision='fp16'), plugin=plugin,
                           cuda_graphs=True).cuda()
    crops = [torch.randn(4, 3, 112, 112, device='cuda') for _ in range(3)]
    with torch.no_grad():
        eager = [model.crop_logits(c) for c in crops]
        replayed = [model.replayed_crop_logits(c) for c in crops]
        assert len(model.crop_graphs) == 1
        with host_syncs_raise():
            again = model.replayed_crop_logits(crops[0])
    for expected, out in zip(eager + eager[:1], replayed + [again]):
        assert torch.equal(out, expected)


@needs_cuda
@torch.no_grad()
def test_on_cuda_a_graph_replays_after_the_position_cache_dropped_its_grid(tiny_clip):
    """Whole-image inference meets more grids than the position-embedding caches keep: a graph
    captured on the first size must still read that size's embeddings (held by the graph) after
    the caches dropped them and their memory could have been reused."""
    torch.manual_seed(0)
    model = tiny_proxyclip(dict(tiny_clip, precision='fp16'), cuda_graphs=True).cuda()
    first = torch.randn(1, 3, 112, 112, device='cuda', dtype=torch.float16)
    expected = model.crop_logits(first)
    assert torch.equal(model.replayed_crop_logits(first), expected)
    for size in (128, 144, 160, 176, 192, 208, 240, 256):  # 8 new grids (224 is native)
        model.crop_logits(torch.randn(1, 3, size, size, device='cuda', dtype=torch.float16))
    # NaN over what the caches freed, wherever the allocator placed it
    nans = [torch.full((n,), float('nan'), device='cuda') for n in range(256, 1 << 16, 256)]
    assert torch.equal(model.replayed_crop_logits(first), expected)
    del nans
