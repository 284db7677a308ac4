"""What the tests that need a GPU share: their skip marker and CUDA's own host-sync check."""
from contextlib import contextmanager

import pytest
import torch

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
