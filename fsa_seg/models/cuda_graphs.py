"""Replay of a segmentor's crop forward as CUDA graphs (opt-in: ``cuda_graphs=True``).

Eager PyTorch issues each of a crop batch's several hundred kernels from Python; on an H100 the
host needs longer to issue a ProxyCLIP crop batch (about 8.5 ms) than the GPU to run it. A CUDA
graph records the batch's kernels once and replays them in one call (measured: 0.06 ms to issue,
outputs bit-identical to eager). One graph is captured per input signature (shape, dtype,
device) and model state, after a warm-up run that does the lazy work outside the graph (kernel
compilation, cuBLAS workspaces, the position-embedding cache); the graphs share one memory pool.

The model state a graph depends on is the storage and version of every parameter and buffer
(a new vocabulary, ``.to()``, ``load_state_dict``, an in-place edit all change it), the
segmentor's components and the plug-in (its object and settings); a change of any captures anew.
Settings changed in place elsewhere (say a segmentor's attention temperature) and components
replaced below the segmentor's own are not seen: call :meth:`CropGraphs.clear` after them.

A graph reads every tensor at the address it had during the capture. Tensors a cache made outside
the graph (the resampled position embeddings) must therefore outlive the cache's own eviction:
such caches pass what they serve through :func:`hold_during_capture`, and a graph keeps what was
served while it was captured for as long as it is kept itself.
"""
import contextlib
import threading
import warnings
from collections import OrderedDict
from typing import Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

Replay = Callable[[], None]
Capture = Callable[[Callable[[Tensor], Tensor], Tensor, object], Tuple[Tensor, Tensor, Replay]]
WARMUP_RUNS = 2  # the first run compiles and caches; the second runs as the graph will
_capturing = threading.local()  # .held: what this thread's capture under way keeps alive


def hold_during_capture(tensor: Tensor) -> Tensor:
    """``tensor``, kept alive by the crop graph this thread is capturing, if any (as long as
    that graph is kept). For caches whose tensors a graph may read after the cache dropped them."""
    held = getattr(_capturing, 'held', None)
    if held is not None:
        held.append(tensor)
    return tensor


@contextlib.contextmanager
def _holding():
    """The list of what :func:`hold_during_capture` is given on this thread meanwhile."""
    outer = getattr(_capturing, 'held', None)
    _capturing.held = held = []
    try:
        yield held
    finally:
        _capturing.held = outer


def graph_capture_failures(model) -> Optional[List[str]]:
    """Why crops of ``model`` (or of the model a wrapper holds as ``module``) ran eagerly although
    they are replayed from CUDA graphs (``crop_graphs``): one line per failed capture; None when
    the model replays no graphs."""
    graphs = getattr(getattr(model, 'module', model), 'crop_graphs', None)
    return None if graphs is None else graphs.failures


class CropGraphs:
    """``graphs(forward, crops, state)`` is ``forward(crops)``, replayed from a CUDA graph
    captured once per (crops' shape, dtype, device, ``state``); ``forward`` (crops → logits) must
    make no host synchronisation, which capture refuses. Inputs on other devices (with one
    warning), or with autograd on, run eagerly.

    Args:
        capacity: graphs kept (least recently used dropped): a dataset of several image sizes
            meets several crop-batch shapes.
        device_types: where graphs are used (CUDA; the tests use CPU with a recording capture).
        capture: ``(forward, example, pool) → (static_input, static_output, replay)``.
    """

    DEFAULT_CAPACITY = 8

    def __init__(self, capacity: int = DEFAULT_CAPACITY, device_types: Sequence[str] = ('cuda',),
                 capture: Optional[Capture] = None):
        self.capacity = capacity
        self.device_types = tuple(device_types)
        self._capture = capture or capture_cuda_graph
        self._graphs: 'OrderedDict[Hashable, tuple]' = OrderedDict()
        self._uncapturable: Dict[Hashable, str] = {}  # signature → why its capture failed
        self._pool = None
        self._told_eager = False

    def __call__(self, forward: Callable[[Tensor], Tensor], crops: Tensor,
                 state: Hashable) -> Tensor:
        if crops.device.type not in self.device_types:
            if not self._told_eager:  # asked for graphs, and nothing would say none are used
                self._told_eager = True
                warnings.warn(f'cuda_graphs: crops on {crops.device.type} run eagerly (graphs '
                              f'replay crops on {" or ".join(self.device_types)} only)')
            return forward(crops)
        if torch.is_grad_enabled():
            return forward(crops)
        key = (tuple(crops.shape), crops.dtype, crops.device, state)
        if key in self._uncapturable:
            return forward(crops)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._captured(forward, crops, key)
            if entry is None:
                return forward(crops)
        self._graphs.move_to_end(key)
        static_input, static_output, replay, _ = entry
        static_input.copy_(crops)
        replay()
        return static_output.clone()  # the next replay overwrites the static output

    def _captured(self, forward: Callable[[Tensor], Tensor], crops: Tensor,
                  key: Hashable) -> Optional[tuple]:
        if self._pool is None and crops.is_cuda:
            self._pool = torch.cuda.graph_pool_handle()
        try:
            with _holding() as held:
                entry = (*self._capture(forward, crops, self._pool), held)
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as error:  # an operation capture does not allow: run eagerly
            self._uncapturable[key] = reason = (f'crops of shape {tuple(crops.shape)}: '
                                                f'{str(error).splitlines()[0]}')
            warnings.warn(f'CUDA graph capture failed for {reason} (they run eagerly)')
            return None
        self._graphs[key] = entry
        while len(self._graphs) > self.capacity:
            self._graphs.popitem(last=False)
        return entry

    @property
    def failures(self) -> List[str]:
        """Why each input signature whose capture failed runs eagerly, one line each: what a
        measurement of replayed crops must report (those crops were not replayed)."""
        return list(self._uncapturable.values())

    def clear(self) -> None:
        """Drop every graph (they are captured anew when next needed)."""
        self._graphs.clear()
        self._uncapturable.clear()

    def __len__(self) -> int:
        return len(self._graphs)

    def __deepcopy__(self, memo) -> 'CropGraphs':  # graphs belong to the model they recorded
        return CropGraphs(self.capacity, self.device_types, self._capture)

    def __getstate__(self) -> dict:  # pickling keeps no graphs
        return dict(capacity=self.capacity, device_types=self.device_types,
                    capture=self._capture)

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)


def capture_cuda_graph(forward: Callable[[Tensor], Tensor], example: Tensor,
                       pool) -> Tuple[Tensor, Tensor, Replay]:
    """Warm ``forward`` up on a side stream, then capture it on ``example``'s copy; returns the
    static input, the static output and the graph's replay. All on ``example``'s device, whichever
    is current (a capture takes its memory pool on the current device)."""
    with torch.cuda.device(example.device):
        static_input = example.clone()
        stream = torch.cuda.Stream(example.device)
        stream.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_RUNS):
                forward(static_input)
        torch.cuda.current_stream(example.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # 'thread_local': what other threads do meanwhile (a dataloader pinning host memory) is
        # not an error of this capture. The side stream captures too: torch's default capture
        # stream is made once, on whichever device was current then.
        with torch.cuda.graph(graph, pool=pool, stream=stream,
                              capture_error_mode='thread_local'):
            static_output = forward(static_input)
    return static_input, static_output, graph.replay


def model_state(tensors: Sequence[Tensor], *extra: Hashable) -> tuple:
    """What a captured graph of a model depends on: the storage and version of each of its
    parameters and buffers ``tensors`` (a graph reads them at fixed addresses, and caches made
    from them outside the graph follow their versions), and ``extra``."""
    return (tuple((t.data_ptr(), t._version) for t in tensors), *extra)
