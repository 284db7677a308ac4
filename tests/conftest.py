"""Shared fixtures: tiny random CLIPs, the golden FSA fixture, a private text cache, the
pass-through plug-ins (tests/doubles.py) registered for a test."""
import os
import signal
import socket
import sys
from pathlib import Path

import torch

# Without a GPU, the fused FSA kernel (Triton) runs on CPU tensors in Triton's interpreter, which
# must be chosen before Triton is first imported (timm and mmseg import it).
if not torch.cuda.is_available() and 'triton' not in sys.modules:
    os.environ.setdefault('TRITON_INTERPRET', '1')

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))  # tests import helpers such as synthetic_data by name

import fsa_seg  # noqa: E402,F401  (registers modules, installs the mmcv.ops fallback)
from fsa_seg.models.backbones import tiny_clip_arch  # noqa: E402

from doubles import PassThrough, PassThroughAll, PassThroughPadded  # noqa: E402


@pytest.fixture(autouse=True)
def private_text_cache(tmp_path, monkeypatch):
    """Each test embeds text into its own cache folder."""
    monkeypatch.setenv('FSA_SEG_CACHE', str(tmp_path / 'fsa_seg_cache'))


@pytest.fixture(autouse=True)
def autograd_left_as_found():
    """A test that switches autograd off for the process (as benchmark workers do for theirs)
    fails itself, instead of the later tests that would then see no autograd."""
    before = torch.is_grad_enabled()
    yield
    assert torch.is_grad_enabled() == before, 'the test left autograd switched ' + (
        'off' if before else 'on')


@pytest.fixture
def fused_kernel_support(monkeypatch):
    """Whether FSA's fused kernel runs on a CUDA device, as the test sets it (``True`` to start
    with): tests that pick paths on fake CUDA tensors have no GPU to ask."""
    import fsa_seg.models.plugins.fsa_kernel as kernel_module

    def runs(supported: bool) -> None:
        monkeypatch.setattr(kernel_module, '_kernel_runs_on', lambda index: supported)

    runs(True)
    return runs


@pytest.fixture
def tiny_clip():
    """Config of a tiny random CLIP (fp64 so references can be compared tightly)."""
    return dict(arch=tiny_clip_arch(), random_init=True, precision='fp64')


@pytest.fixture
def pass_through_plugins():
    """The pass-through plug-ins of tests/doubles.py, registered for one test as
    'TestPassThrough' (patches), 'TestPassThroughAll' (all tokens) and 'TestPassThroughPadded'
    (patches, reads padding)."""
    names = {f'Test{cls.__name__}': cls
             for cls in (PassThrough, PassThroughAll, PassThroughPadded)}
    for name, cls in names.items():
        MODELS.register_module(name, module=cls)
    yield
    for name in names:
        MODELS.module_dict.pop(name)


def golden_attention(vfm_features: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """ProxyCLIP's attention as the fixture README describes it, written out independently."""
    feats = vfm_features.flatten(2).transpose(1, 2)
    feats = feats / feats.norm(dim=-1, keepdim=True)
    sim = feats @ feats.transpose(1, 2)
    logits = gamma * (sim - beta * sim.mean())
    logits[logits < 0] = float('-inf')
    return torch.softmax(logits, dim=-1).unsqueeze(1)


@pytest.fixture(scope='session')
def golden():
    """Golden outputs of the official FSA code (tests/fixtures/README.md); the attention, which
    the stored inputs determine, is recomputed rather than stored."""
    data = torch.load(TESTS / 'fixtures' / 'fsa_proxyclip_tiny.pt', weights_only=False)
    data['attn'] = golden_attention(data['vfm_features'], data['beta'], data['gamma'])
    return data


@pytest.fixture(scope='session')
def golden_vit(golden):
    import open_clip
    vit = open_clip.transformer.VisionTransformer(**golden['model_cfg']).double().eval()
    vit.load_state_dict(golden['state_dict'], strict=True)
    return vit


@pytest.fixture(scope='session')
def golden_logits_fn(golden, golden_vit):
    """logits_fn of the contract, built directly from the fixture's weights and text."""
    block = golden_vit.transformer.resblocks[-1]

    def logits_fn(heads):
        batch, num_heads, n, head_dim = heads.shape
        merged = heads.transpose(1, 2).reshape(batch, n, num_heads * head_dim)
        tokens = golden_vit.ln_post(block.attn.out_proj(merged)) @ golden_vit.proj
        return F.normalize(tokens, dim=-1) @ golden['text_features'].t()

    return logits_fn


@pytest.fixture
def processed_images(monkeypatch):
    """The images the metric scores, in order; Ctrl-C once ``stop_after`` of them are scored."""
    from fsa_seg.evaluation import PerClassIoUMetric
    record = dict(images=[], stop_after=None)
    process = PerClassIoUMetric.process

    def recording_process(self, data_batch, data_samples):
        process(self, data_batch, data_samples)
        record['images'] += [Path(sample['img_path']).name for sample in data_samples]
        if len(record['images']) == record['stop_after']:
            raise KeyboardInterrupt

    monkeypatch.setattr(PerClassIoUMetric, 'process', recording_process)
    return record


@pytest.fixture
def unresolvable_names(monkeypatch):
    """A machine whose host names resolve to nothing (no network), without a proxy, the Hub at
    its default address, online mode; returns the names looked up, in order."""
    from huggingface_hub import constants
    lookups = []

    def getaddrinfo(host, *args, **kwargs):
        lookups.append(host)
        raise socket.gaierror(socket.EAI_NONAME, 'Name or service not known')
    monkeypatch.setattr(socket, 'getaddrinfo', getaddrinfo)
    for name in ('https_proxy', 'http_proxy', 'all_proxy'):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.delenv('HF_ENDPOINT', raising=False)
    monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    return lookups


@pytest.fixture
def ctrl_c_as_in_a_shell():
    """SIGINT raising KeyboardInterrupt, as in an interactive shell, for a test that sends it:
    pytest started in the background of a script (``(pytest &)``) inherits SIGINT ignored,
    and Python then installs no handler of its own."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
