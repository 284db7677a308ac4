"""Test doubles shared by tests, imported by name (tests/conftest.py puts tests/ on sys.path and
registers the plug-ins for a test through its ``pass_through_plugins`` fixture), the timm
keyword arguments of the tiny random VFMs the tests build, a CUDA-graph capture for CPU, a
recorder of the messages a module logs, one of the matrix products called, one of the
operators dispatched and one of FSA's Triton launches."""
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from fsa_seg.models.plugins import AttentionPlugin

TINY_VFM = dict(embed_dim=32, depth=2, num_heads=2)
TINY_SAM = dict(TINY_VFM, img_size=64, window_size=2, global_attn_indexes=(1,))


class PassThrough(AttentionPlugin):
    """An attention plug-in that returns the host's attention output unchanged, on the patches.
    It keeps what the host gave it: ``seen`` (grid, number of prefix tokens, number of tokens),
    ``values_strides``, ``attn_width`` (the attention's last dimension) and ``row_sums``, the
    attention's row sums (both None without an attention)."""
    tokens = 'patches'

    def forward(self, attn, values, logits_fn, attended=None, grid=None, num_prefix=0):
        self.seen = dict(grid=grid, num_prefix=num_prefix, tokens=values.shape[2])
        self.values_strides = values.stride()
        self.attn_width = None if attn is None else attn.shape[-1]
        self.row_sums = None if attn is None else attn.sum(-1)
        return attended


class PassThroughAll(PassThrough):
    """The same on all tokens (class token kept)."""
    tokens = 'all'


class PassThroughPadded(PassThrough):
    """The same, declaring that it reads a padded attention's zero padding."""
    reads_padding = True


class RecordingCapture:
    """CUDA capture's contract on any device: a static input, a static output, a replay that
    recomputes the output from the static input in place."""

    def __init__(self, fails_with=None):
        self.shapes = []  # the examples'
        self.output_shapes = []  # the static outputs' (what a graph keeps)
        self.fails_with = fails_with

    def __call__(self, forward, example, pool):
        self.shapes.append(tuple(example.shape))
        if self.fails_with is not None:
            raise self.fails_with
        static_input = example.clone()
        static_output = forward(static_input)
        self.output_shapes.append(tuple(static_output.shape))
        return static_input, static_output, lambda: static_output.copy_(forward(static_input))


def record_logs(monkeypatch, module) -> list:
    """The messages ``module`` logs with mmengine's ``print_log`` from now on, in order."""
    messages = []
    monkeypatch.setattr(module, 'print_log', lambda message, **kwargs: messages.append(message))
    return messages


class RecordedProducts(TorchFunctionMode):
    """The operand shapes of every matrix product (``matmul``, ``@``, ``bmm``, ``baddbmm``)
    called meanwhile, in order."""
    PRODUCTS = (torch.matmul, torch.bmm, torch.baddbmm, torch.Tensor.matmul,
                torch.Tensor.__matmul__)

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.PRODUCTS:
            operands = args[1:3] if func is torch.baddbmm else args[:2]
            self.shapes.append(tuple(tuple(operand.shape) for operand in operands))
        return func(*args, **(kwargs or {}))


class Kernels(TorchDispatchMode):
    """The operators that launch kernels (views, allocations and queries left out)."""
    NOT_KERNELS = ('view', 'transpose', 'expand', 'alias', 'slice', 'select', 'unflatten',
                   '_unsafe_view', 't', 'new_empty', 'empty', 'empty_strided', 'detach',
                   'promote_types', 'device', 'as_strided')

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split('.')[0]
        if name not in self.NOT_KERNELS:
            self.names.append(f'{func.namespace}.{name}' if func.namespace != 'aten' else name)
        return func(*args, **(kwargs or {}))


def record_launches(monkeypatch, kernel_name):
    """The launches of FSA's Triton kernel ``kernel_name`` from now on, each as (grid, its
    keyword arguments: the constexprs and ``num_warps``), made as they would be."""
    import fsa_seg.models.plugins.fsa_kernel as fsa_kernel
    launches = []
    kernel_for = fsa_kernel._kernel

    class Recording:
        def __init__(self, launcher):
            self.launcher = launcher

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches.append((grid, kwargs))
                return self.launcher[grid](*args, **kwargs)
            return launch

    def recording(kernel, device):
        launcher = kernel_for(kernel, device)
        return Recording(launcher) if kernel.__name__ == kernel_name else launcher
    monkeypatch.setattr(fsa_kernel, '_kernel', recording)
    return launches
