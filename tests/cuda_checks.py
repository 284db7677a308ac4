"""What the tests of CUDA paths share: the skip marker and CUDA's own host-sync check (on a GPU),
and a record of the copies between host and device (anywhere, on fake CUDA tensors)."""
from contextlib import contextmanager

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')


@contextmanager
def host_syncs_raise():
    """Inside, any operation that synchronises the host with the GPU raises (sync debug mode
    'error'): .item(), bool() of a tensor, .nonzero(), .cpu(), a pageable host→device copy."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode('default')


class HostDeviceCopies(TorchDispatchMode):
    """Records every operation that turns CUDA inputs into a CPU output (.cpu(), .to('cpu')), and
    every copy of a CPU tensor into a CUDA one (``cuda_tensor[0] = 3.0`` copies a CPU scalar): both
    synchronise the host. Under FakeTensorMode it sees them on a machine without a GPU."""
    COPIES = (torch.ops.aten.copy_.default, torch.ops.aten._to_copy.default)

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        devices_in = {t.device.type for t in tree_leaves((args, kwargs))
                      if isinstance(t, torch.Tensor)}
        devices_out = {t.device.type for t in tree_leaves(out) if isinstance(t, torch.Tensor)}
        to_host = 'cuda' in devices_in and 'cpu' in devices_out
        to_device = func in self.COPIES and 'cpu' in devices_in and 'cuda' in devices_out
        if to_host or to_device:
            self.found.append(str(func))
        return out
