"""Latency and peak-memory benchmarks, always the variants side by side in one run.

Library code behind ``tools/analysis/benchmark.py``:

* ``plugin``: our :class:`~fsa_seg.models.plugins.fsa.FSA` against the official formulation
  (:func:`~fsa_seg.models.plugins.fsa_reference.official_fsa`) on random inputs of given shapes,
  with another path of FSA forced beside the one its device picks (on CPU the device path, on
  CUDA the torch.sort chain beside the fused kernel); on CUDA, whether our plug-in synchronises
  with the host;
* ``config``: one crop through a segmentor built from any config with a plug-in, with and
  without it (the same model, the plug-in toggled);
* ``proxyclip``: ``config`` on ProxyCLIP (CLIP ViT-B/16 + DINO ViT-B/8) with FSA, real model
  sizes, random weights, one 336 crop, 171 queries.

Configs are found by name or path (:func:`~fsa_seg.apis.resolve_config`: the configs shipped in
the package, or a checkout's), and the plug-in's settings (FSA's λ, top-p, logit scales) are
read from them, so a benchmark measures what the config would run. Reports give measurements
and ratios, never verdicts: targets belong to the issues that set them.

How it measures, so that the numbers can be trusted on a noisy machine:

* memory — each variant alone in a fresh worker process: the workload is built, run once at a tiny
  size (lazy initialisation: kernels, thread pools), the full-size inputs are made, freed heap
  memory is handed back to the system (``malloc_trim``) and the resident-set high-water mark is
  reset (``/proc/self/clear_refs``); the *extra peak* is the high-water mark of the full-size run
  above the resident memory before it (model and inputs included in the latter, not the former).
  The worker has glibc map every allocation above 64 kB on its own and use one arena, so that
  resident memory follows the live tensors, not the allocator's thread-dependent caching (without
  this, the same run's peak varied by ±30 MB). On CUDA it is ``max_memory_allocated`` above
  ``memory_allocated`` before the run, which counts live tensors only: there one worker measures
  every variant, each warmed up at full size, and then the latencies (on a GPU machine a process
  start costs more than the measurements: three per configuration made a 4-configuration grid
  overrun 150 s on an H100).
* latency — one more worker builds the workload once and runs the variants interleaved
  (A B, B A, ...) after one warm-up run each; the median and the minimum per variant are reported,
  and their ratios, all measured under the same machine load. For a segmentor the time spent
  inside the plug-in is timed too (forward hooks), which gives its share of a crop directly.
* profile (``profile_rows``, ``--profile``) — after the timed runs, in the same worker, one run
  of each variant under torch's profiler: the operators (kernels on CUDA) with the most time of
  their own; and for the plug-in's eager variants of ours, ``HOST_PROFILE_RUNS`` runs under
  cProfile: the Python functions and torch calls with the most host time of their own, which
  bounds an eager plug-in on a GPU (there its device time is a fraction of its latency).
"""
import contextlib
import copy
import cProfile
import ctypes
import ctypes.util
import gc
import json
import math
import multiprocessing
import os
import pstats
import re
import resource
import statistics
import time
import traceback
from functools import partial
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

from ..apis.configs import (
    explained_config_errors,
    plain_message,
    read_config,
    resolve_config,
    use_random_weights,
)
from ..apis.inference import device_available
from ..models.cuda_graphs import CropGraphs, graph_capture_failures
from ..models.layout import with_aligned_row_count, with_padding
from ..models.plugins.fsa import FSA
from ..models.plugins.fsa_reference import official_fsa
from ..models.segmentors.base import smallest_square
from ..models.segmentors.proxyclip import proxy_attention
from ..models.text import Vocabulary, VocabularyError, load_vocabulary
from ..models.weights import WeightsError

# ProxyCLIP (CLIP ViT-B/16 + DINO ViT-B/8) with FSA: the ``proxyclip`` benchmark, and where the
# ``plugin`` benchmark takes FSA's settings and the proxy attention's from.
PROXYCLIP_CONFIG = 'proxyclip_fsa_vit-b16_dino-b8_voc21'
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16,
          'fp64': torch.float64}
MB = 2 ** 20
HOST_PROFILE_RUNS = 20  # eager runs a host profile spans (one run's calls are too few to time)


class BenchmarkError(ValueError):
    """A benchmark asked of something it cannot measure (a config without a plug-in …)."""


def user_error_types() -> tuple:
    """What a user's input causes, said in one line: :class:`BenchmarkError` and fsa-seg's user
    errors (a config, weights, a vocabulary …), the same as the fsa-seg command's."""
    from ..cli.errors import user_errors
    return (BenchmarkError, *user_errors())


Log = Callable[[str], None]


def _quiet(message: str) -> None:
    """The default ``log``: progress goes nowhere."""


# ---------------------------------------------------------------------------- checks
def check_device(device: str) -> torch.device:
    """``device`` as torch's, if the benchmarks can run on it here: 'cpu', or a CUDA device
    this machine has. Every command checks its device once, before it measures anything."""
    try:
        parsed = torch.device(device)
    except RuntimeError:  # what torch says of a string that names no device type
        parsed = None
    if parsed is None or parsed.type not in ('cpu', 'cuda'):
        raise BenchmarkError(f"--device {device}: the benchmarks run on 'cpu' or 'cuda[:i]'")
    if not device_available(parsed):
        count = torch.cuda.device_count()
        found = (f'this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}' if count
                 else 'no CUDA device on this machine (use --device cpu)')
        raise BenchmarkError(f'--device {device}: {found}')
    return parsed


def check_json_path(path: str) -> None:
    """Refuse, before any measurement, a ``--json`` that cannot be written: a folder, or a
    path through a file; make its folder and prove it writable."""
    from ..apis.testing import check_writable, file_in_the_way
    target = Path(path).expanduser()
    if target.is_dir():
        raise BenchmarkError(f'--json {path}: a folder; give a file name')
    blocker = file_in_the_way(target)
    if blocker is not None:
        raise BenchmarkError(f'--json {path}: {blocker} is a file, not a folder')
    check_writable(str(target.absolute().parent), 'the folder of --json')


RANDOM_WEIGHTS_HINT = ('to measure latency and memory without the weights, pass --random-weights '
                       '(real-size models, random weights)')


@contextlib.contextmanager
def suggesting_random_weights(random_weights: bool):
    """A model built with its own weights that cannot have them (no network, no file): the
    error says that --random-weights measures without them."""
    try:
        yield
    except WeightsError as error:
        if random_weights:
            raise
        raise WeightsError(f'{plain_message(error)}; {RANDOM_WEIGHTS_HINT}') from error


def query_vocabulary(q: int) -> Vocabulary:
    """Q dummy queries, which the segmentor benchmarks stand in for a vocabulary of Q names."""
    try:
        return load_vocabulary([f'query {i}' for i in range(q)])
    except VocabularyError as error:  # too few: the vocabulary's own rule, said of --q
        raise BenchmarkError(f'--q {q}: {error}') from None


def config_plugin(cfg: Config) -> dict:
    """The plug-in config of a segmentor config; an error naming the config if it has none."""
    plugin = cfg.model.get('plugin')
    if not plugin:
        raise BenchmarkError(
            f'{Path(cfg.filename or "the config").stem} has no plug-in to compare with and '
            'without: benchmark a config with one (the *_fsa_* configs).')
    return dict(plugin)


def fsa_settings(config: str = PROXYCLIP_CONFIG, cfg_options: Optional[dict] = None) -> dict:
    """FSA's settings and the proxy attention's as a ProxyCLIP config sets them: ``plugin`` (its
    plug-in config), ``beta`` and ``gamma``."""
    cfg = read_config(config, cfg_options)
    plugin = config_plugin(cfg)
    if plugin.get('type', '').split('.')[-1] != 'FSA':
        raise BenchmarkError(f'{Path(cfg.filename).stem}: the plug-in benchmark compares FSA with '
                             f'the official formulation; this config has {plugin.get("type")}.')
    if 'beta' not in cfg.model or 'gamma' not in cfg.model:
        raise BenchmarkError(f'{Path(cfg.filename).stem} is not a ProxyCLIP config (no beta and '
                             'gamma): the plug-in benchmark takes its attention from one.')
    return dict(plugin=plugin, beta=float(cfg.model.beta), gamma=float(cfg.model.gamma))


# ---------------------------------------------------------------------------- memory
def _proc_status_kb(field: str) -> Optional[int]:
    try:
        with open('/proc/self/status', encoding='ascii') as handle:
            match = re.search(rf'^{field}:\s+(\d+) kB', handle.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_high_water_mark() -> bool:
    """Reset the resident-set high-water mark (VmHWM) to the current resident set (Linux ≥ 4.0)."""
    try:
        with open('/proc/self/clear_refs', 'w', encoding='ascii') as handle:
            handle.write('5')
    except OSError:
        return False
    return _proc_status_kb('VmHWM') is not None


def _release_free_heap() -> None:
    """Give freed heap memory back to the system, so that resident memory is live memory."""
    gc.collect()
    trim = getattr(_libc(), 'malloc_trim', None)
    if trim is not None:  # glibc
        trim(0)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc mallopt parameters


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library('c'))
    except (OSError, TypeError):
        return None


def _map_large_allocations(threshold: int = 64 * 1024) -> bool:
    """Make glibc serve every allocation above ``threshold`` with its own mapping, returned to the
    system when freed, and use one arena: resident memory then follows the live tensors instead
    of what the allocator keeps cached (which depends on thread scheduling). Only for memory
    measurements; False where this is not glibc."""
    libc = _libc()
    mallopt = getattr(libc, 'mallopt', None)
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, threshold) and mallopt(M_TRIM_THRESHOLD, threshold)
                and mallopt(M_ARENA_MAX, 1))


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


class PeakMemory:
    """Extra peak memory of a block of work above the memory in use before it.

    CUDA: ``max_memory_allocated`` above ``memory_allocated``. CPU: the resident-set high-water
    mark (reset before the work) above the resident set before the work; where the mark cannot be
    reset, ``ru_maxrss``, which is only exact if the work raises the process's lifetime peak
    (``reliable`` says whether it did).
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.before = 0
        self.method = ''
        self.reliable = True
        self._prior_peak = 0

    def __enter__(self) -> 'PeakMemory':
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
            self.method = 'torch.cuda.max_memory_allocated'
            return self
        _release_free_heap()
        self.before = (_proc_status_kb('VmRSS') or 0) * 1024
        if _reset_high_water_mark():
            self.method = 'resident-set high-water mark VmHWM, reset before the run'
        else:
            self.method = 'ru_maxrss'
            self._prior_peak = _max_rss_bytes()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method == 'ru_maxrss':
            self.peak = _max_rss_bytes()
            self.reliable = self.peak > self._prior_peak or self._prior_peak <= self.before
        else:
            self.peak = (_proc_status_kb('VmHWM') or 0) * 1024

    @property
    def extra(self) -> int:
        return max(self.peak - self.before, 0)


def synchronize(device: torch.device) -> None:
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------- workloads
class PluginWorkload:
    """Our FSA and the official formulation on random inputs of ProxyCLIP's shapes: an attention
    shared by the heads (B, 1, N, N), made as ProxyCLIP makes it (``beta``, ``gamma``) from random
    proxy features and given to FSA as ProxyCLIP gives it (on CUDA with its zero row padding);
    values (B, H, N, d); a fixed random linear head to ``embed_dim``, L2-normalised, against Q
    L2-normalised random text embeddings as ``logits_fn``. FSA is built
    from ``plugin`` (a config's), the official formulation gets the same settings. Variants:
    'ours' (the path FSA picks for the device), 'ours-device' (the torch.sort chain forced),
    on CUDA 'ours-graphed' ('ours' replayed from a CUDA graph, as ``model.cuda_graphs`` replays
    crops: what the plug-in costs the GPU once the host no longer issues each kernel),
    'official', and on CUDA 'official-graphed' (the official formulation replayed so too: what
    the graphed ours is measured against)."""
    warmup_size = 32
    eager_ours = ('ours', 'ours-device')  # whose host time a profile shows too

    # the largest N of 'official-graphed': its (B, N, N, Q) tensors, held by the graph's
    # private pool beside the eager official's cached ones, fill an 80 GB GPU at N = 4096
    GRAPHED_OFFICIAL_MAX_TOKENS = 2048

    @classmethod
    def variants_on(cls, device: str, n: int) -> tuple:
        """'ours', the device path of ours forced (on CUDA: beside the fused kernel), on CUDA
        'ours' replayed from a CUDA graph, 'official', on CUDA up to
        ``GRAPHED_OFFICIAL_MAX_TOKENS`` tokens replayed from one too."""
        if torch.device(device).type != 'cuda':
            return (*cls.eager_ours, 'official')
        graphed = ('official-graphed',) if n <= cls.GRAPHED_OFFICIAL_MAX_TOKENS else ()
        return (*cls.eager_ours, 'ours-graphed', 'official', *graphed)

    def __init__(self, n: int, q: int, plugin: dict, beta: float, gamma: float, heads: int = 12,
                 head_dim: int = 64, batch: int = 1, dtype: str = 'fp32', device: str = 'cpu',
                 embed_dim: int = 512, seed: int = 0):
        init_default_scope('mmseg')
        self.n, self.q, self.heads, self.head_dim, self.batch = n, q, heads, head_dim, batch
        self.dtype, self.device = DTYPES[dtype], torch.device(device)
        self.full_size = n
        self.seed = seed
        generator = torch.Generator().manual_seed(seed)
        width = heads * head_dim
        self.weight = (torch.randn(width, embed_dim, generator=generator) / math.sqrt(width)).to(
            self.device, self.dtype)
        text = F.normalize(torch.randn(q, embed_dim, generator=generator), dim=-1)
        # zero rows up to a multiple of 8, as the segmentors' logits_fn has (aligned rows)
        self.text = with_aligned_row_count(text).to(self.device, self.dtype)
        with explained_config_errors(f'plugin {plugin}'):
            self.fsa = MODELS.build(plugin)
        if not isinstance(self.fsa, FSA):
            raise BenchmarkError(f'plugin {plugin} is not FSA')
        self.hyper = dict(lamda=self.fsa.lamda, top_p=self.fsa.top_p,
                          logit_scales=self.fsa.logit_scales)
        self.beta, self.gamma = beta, gamma
        self.graphs, self.official_graphs = CropGraphs(), CropGraphs()

    def logits_fn(self, heads):
        merged = heads.transpose(1, 2).flatten(2)                       # (B, n, H·d)
        return (F.normalize(merged @ self.weight, dim=-1) @ self.text.t())[..., :self.q]

    def make_inputs(self, n: int):
        # new inputs, new graphs: a graph reads its inputs at their addresses, and the memory
        # measured for a run of 'ours-graphed' then includes its capture (the graph's pool)
        self.graphs.clear()
        self.official_graphs.clear()
        generator = torch.Generator().manual_seed(self.seed + 1)
        proxy = torch.randn(self.batch, 64, n, 1, generator=generator)
        values = torch.randn(self.batch, self.heads, n, self.head_dim, generator=generator)
        # made on the device, as a crop makes it (on CUDA with rows aligned to 16 bytes)
        attn = proxy_attention(proxy.to(self.device, self.dtype), beta=self.beta,
                               gamma=self.gamma)
        return attn, values.to(self.device, self.dtype)

    def run(self, variant: str, inputs):
        attn, values = inputs
        if variant == 'official':
            return official_fsa(attn, values, self.logits_fn, **self.hyper)
        if variant == 'official-graphed':
            return self.official_graphs(partial(official_fsa, attn, logits_fn=self.logits_fn,
                                                **self.hyper), values, attn.data_ptr())
        if self.fsa.reads_padding:  # as ProxyCLIP gives it: with its zero padding
            attn = with_padding(attn)
        if variant == 'ours':
            return self.fsa(attn, values, self.logits_fn)
        if variant == 'ours-graphed':  # the values copied in, the output copied out, as for crops
            return self.graphs(partial(self.fsa, attn, logits_fn=self.logits_fn), values,
                               attn.data_ptr())
        return self.fsa._forward(attn, values, self.logits_fn, path=variant[len('ours-'):])

    @property
    def graph_failures(self) -> List[str]:
        """Why 'ours-graphed' or 'official-graphed' ran eagerly on some inputs (its capture
        failed), if it did."""
        return self.graphs.failures + [f'the official formulation, {failure}'
                                       for failure in self.official_graphs.failures]

    def resident_bytes(self, inputs) -> int:
        tensors = list(inputs) + [self.weight, self.text]
        return sum(t.numel() * t.element_size() for t in tensors)

    def host_syncs(self, variant: str, inputs) -> Optional[str]:
        """CUDA, our variants: 'none', or the first synchronising call that
        ``torch.cuda.set_sync_debug_mode('error')`` stops in one more run."""
        if self.device.type != 'cuda' or not variant.startswith('ours'):
            return None
        torch.cuda.synchronize(self.device)
        torch.cuda.set_sync_debug_mode('error')
        try:
            self.run(variant, inputs)
        except RuntimeError as error:  # what sync debug mode raises
            return str(error).splitlines()[0]
        finally:
            torch.cuda.set_sync_debug_mode('default')
        return 'none'


def _module_bytes(module) -> int:
    if module is None:
        return 0
    return sum(t.numel() * t.element_size() for t in
               list(module.parameters()) + list(module.buffers()))


class SegmentorWorkload:
    """One crop through ``crop_logits`` of a segmentor built from a config, with the config's
    plug-in and without it (plug-in set to None on the same model). The vocabulary is Q dummy
    queries with random unit embeddings: no text tower run beyond one template of one name at
    build time."""
    variants = ('without plug-in', 'with plug-in')

    def __init__(self, config: str, random_weights: bool = False, crop: int = 336,
                 q: Optional[int] = None, batch: int = 1, precision: Optional[str] = None,
                 device: str = 'cpu', cfg_options: Optional[dict] = None, seed: int = 0):
        init_default_scope('mmseg')
        cfg = read_config(config, cfg_options)
        config_plugin(cfg)
        model_cfg = copy.deepcopy(cfg.model.to_dict())
        self.q = int(q or len(load_vocabulary(model_cfg['vocabulary']).queries))
        vocabulary = query_vocabulary(self.q)  # before the model: a bad --q fails at once
        model_cfg.update(vocabulary=['object', 'stuff'], templates=['{}'], text_cache_dir=False)
        if random_weights:
            use_random_weights(model_cfg)
        if precision:
            model_cfg['clip'] = dict(model_cfg.get('clip', {}), precision=precision)
        self.device = torch.device(device)
        torch.manual_seed(seed)
        with suggesting_random_weights(random_weights), explained_config_errors(cfg.filename):
            segmentor = MODELS.build(model_cfg)
        self.segmentor = segmentor.to(self.device).eval()
        self.plugin = segmentor.plugin
        generator = torch.Generator().manual_seed(seed + 1)
        segmentor.vocabulary = vocabulary
        embed_dim = segmentor.clip.visual.proj.shape[1]
        segmentor.set_query_embeddings(
            F.normalize(torch.randn(self.q, embed_dim, generator=generator), dim=-1))
        self.batch, self.crop, self.full_size = batch, crop, crop
        self.seed = seed
        try:
            segmentor.check_crop_size((crop, crop))
        except ValueError as error:
            raise BenchmarkError(f'--crop {crop}: {error}') from None
        patch = math.lcm(*segmentor.clip.patch_size,
                         *(getattr(getattr(segmentor, 'vfm', None), 'patch_size', None) or ()))
        # the smallest square crop of whole patches, at least 2 × 2, that the segmentor takes
        # (CASS: 10 patches, its rank-10 SVD)
        self.warmup_size = patch * max(2, smallest_square(segmentor.min_crop_patches))
        self.plugin_repr = repr(self.plugin).replace('\n', ' ')
        self.plugin_s = 0.0  # time spent inside the plug-in during the last run
        self._plugin_start = 0.0
        self.plugin.register_forward_pre_hook(self._enter_plugin)
        self.plugin.register_forward_hook(self._leave_plugin)
        self.model_bytes = _module_bytes(segmentor)
        self.model_parts = dict(clip_image=_module_bytes(segmentor.clip.visual),
                                vfm=_module_bytes(getattr(segmentor, 'vfm', None)))

    def _enter_plugin(self, *_):
        if not self._capturing():
            synchronize(self.device)
            self._plugin_start = time.perf_counter()

    def _leave_plugin(self, *_):
        if not self._capturing():
            synchronize(self.device)
            self.plugin_s += time.perf_counter() - self._plugin_start

    @property
    def graph_failures(self) -> List[str]:
        """Why crops ran eagerly although ``cuda_graphs`` is on (their capture failed)."""
        return graph_capture_failures(self.segmentor) or []

    def _capturing(self) -> bool:
        """Whether a CUDA graph of the crop is being captured, which a synchronisation would
        spoil (its replays run no hook)."""
        return self.device.type == 'cuda' and torch.cuda.is_current_stream_capturing()

    def make_inputs(self, size: int):
        generator = torch.Generator().manual_seed(self.seed + 2)
        dtype = self.segmentor.clip.dtype
        return torch.randn(self.batch, 3, size, size, generator=generator).to(self.device, dtype)

    def run(self, variant: str, crops):
        self.segmentor.plugin = self.plugin if variant == 'with plug-in' else None
        self.plugin_s = 0.0
        return self.segmentor.replayed_crop_logits(crops)  # from CUDA graphs where they are on

    def resident_bytes(self, inputs) -> int:
        return self.model_bytes + inputs.numel() * inputs.element_size()


WORKLOADS = dict(plugin=PluginWorkload, segmentor=SegmentorWorkload)


def build_workload(spec: dict):
    return WORKLOADS[spec['kind']](**spec['params'])


# ---------------------------------------------------------------------------- workers
def environment(device: torch.device) -> dict:
    """torch, its CPU threads and the device (with its name on CUDA)."""
    env = dict(torch=torch.__version__, threads=torch.get_num_threads(), device=str(device))
    if device.type == 'cuda':
        env['device_name'] = torch.cuda.get_device_name(device)
    return env


def _workload_info(workload) -> dict:
    info = {}
    for key in ('q', 'plugin_repr', 'model_bytes', 'model_parts', 'graph_failures'):
        if hasattr(workload, key):
            info[key] = getattr(workload, key)
    return info


def _set_up_worker(spec: dict) -> None:
    torch.set_grad_enabled(False)
    if spec.get('threads'):
        torch.set_num_threads(spec['threads'])


def memory_worker(spec: dict, variant: str) -> dict:
    """Run in a fresh process: extra peak memory of one full-size run of ``variant``."""
    uncached = _map_large_allocations()
    _set_up_worker(spec)
    workload = build_workload(spec)
    return _memory_info(workload, variant, workload.warmup_size, uncached)


def _memory_info(workload, variant: str, warmup_size: int, uncached: bool = False) -> dict:
    """Extra peak memory of one full-size run of ``variant`` after a warm-up run at
    ``warmup_size`` (lazy initialisation: kernels, workspaces, caches)."""
    synchronize(workload.device)
    workload.run(variant, workload.make_inputs(warmup_size))
    inputs = workload.make_inputs(workload.full_size)
    with PeakMemory(workload.device) as memory:
        start = time.perf_counter()
        output = workload.run(variant, inputs)
        synchronize(workload.device)
        elapsed = time.perf_counter() - start
    del output
    info = _workload_info(workload)
    if hasattr(workload, 'host_syncs'):
        info['host_syncs'] = workload.host_syncs(variant, inputs)
    info.update(extra_peak_bytes=memory.extra, resident_before_bytes=memory.before,
                inputs_bytes=workload.resident_bytes(inputs), first_run_s=elapsed,
                method=memory.method + ('; allocations > 64 kB mapped and unmapped, one '
                                        'malloc arena' if uncached and memory.device.type == 'cpu'
                                        else ''),
                reliable=memory.reliable,
                env=environment(workload.device))
    return info


def latency_worker(spec: dict, variants: Sequence[str], repeat: int,
                   profile_rows: int = 0) -> Dict[str, dict]:
    """Run in a fresh process: ``repeat`` timed runs per variant, interleaved, after a warm-up;
    for a segmentor also the time spent inside the plug-in during each run; with
    ``profile_rows``, then one profiled run per variant (:func:`_profile`)."""
    _set_up_worker(spec)
    return _latencies(build_workload(spec), variants, repeat, profile_rows)


def cuda_worker(spec: dict, variants: Sequence[str], repeat: int, profile_rows: int = 0) -> tuple:
    """Run in a fresh process, on CUDA: each variant's extra peak memory, then the latencies, all
    from one build of the workload. The CUDA allocator's peak counts live tensors only, so one
    process measures every variant exactly (each warmed up at full size first, so that caches
    made once, e.g. resampled position embeddings, count for none); on a GPU machine a process
    start (imports, CUDA context) costs more than the measurements themselves."""
    _set_up_worker(spec)
    workload = build_workload(spec)
    memory = {variant: _memory_info(workload, variant, workload.full_size)
              for variant in variants}
    return memory, _latencies(workload, variants, repeat, profile_rows)


def _latencies(workload, variants: Sequence[str], repeat: int,
               profile_rows: int = 0) -> Dict[str, dict]:
    inputs = workload.make_inputs(workload.full_size)
    for variant in variants:
        workload.run(variant, inputs)
    times = {variant: dict(latencies_s=[], plugin_s=[]) for variant in variants}
    for index in range(repeat):
        for variant in (variants if index % 2 == 0 else tuple(reversed(variants))):
            synchronize(workload.device)
            start = time.perf_counter()
            output = workload.run(variant, inputs)
            synchronize(workload.device)
            times[variant]['latencies_s'].append(time.perf_counter() - start)
            if hasattr(workload, 'plugin_s'):
                times[variant]['plugin_s'].append(workload.plugin_s)
            del output
    if profile_rows:  # after the timed runs, which the profilers would slow down
        for variant in variants:
            times[variant]['profile'] = _profile(workload, variant, inputs, profile_rows)
            if variant in getattr(workload, 'eager_ours', ()):
                times[variant]['host_profile'] = _host_profile(workload, variant, inputs,
                                                               profile_rows)
    return times


def _profile(workload, variant: str, inputs, rows: int) -> List[dict]:
    """The ``rows`` operators of one run of ``variant`` with the most time of their own (device
    time on CUDA, kernels included, else CPU time), from torch's profiler: where the time goes."""
    from torch.profiler import ProfilerActivity, profile
    cuda = workload.device.type == 'cuda'
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        workload.run(variant, inputs)
        synchronize(workload.device)
    own = 'self_device_time_total' if cuda else 'self_cpu_time_total'
    events = sorted(prof.key_averages(), key=lambda event: getattr(event, own), reverse=True)
    return [dict(name=event.key, self_ms=getattr(event, own) / 1e3, calls=event.count)
            for event in events[:rows]]


def _host_profile(workload, variant: str, inputs, rows: int,
                  runs: int = HOST_PROFILE_RUNS) -> dict:
    """The ``rows`` functions with the most host time of their own (Python functions and the
    torch calls they make, cProfile) in ``runs`` runs of ``variant``, per run, with their time
    including what they call, and the host time of a run in all: where an eager run's host time
    goes."""
    profiler = cProfile.Profile()
    synchronize(workload.device)
    profiler.enable()
    for _ in range(runs):
        workload.run(variant, inputs)
    profiler.disable()
    synchronize(workload.device)
    stats = pstats.Stats(profiler).stats  # (file, line, name) → (calls, calls, own s, total s, …)
    own = sorted(((entry[2], entry[3], entry[1], function)
                  for function, entry in stats.items()), reverse=True)
    per_run = 1e6 / runs
    return dict(runs=runs, total_us=sum(entry[0] for entry in own) * per_run,
                rows=[dict(name=_function_name(function), self_us=seconds * per_run,
                           cumulative_us=cumulative * per_run, calls=calls / runs)
                      for seconds, cumulative, calls, function in own[:rows]])


def _function_name(function: tuple) -> str:
    """cProfile's (file, line, name) as ``file.py:line(name)``, a built-in by its name."""
    path, line, name = function
    return name if path == '~' else f'{os.path.basename(path)}:{line}({name})'


class WorkerError(RuntimeError):
    """A benchmark worker failed; the message holds its traceback."""


def _child(sender, function, args) -> None:
    from ..cli.errors import one_line
    try:
        sender.send(('ok', function(*args)))
    except KeyboardInterrupt:
        # the parent says it; a terminal's Ctrl-C reaches the parent too, which may have
        # stopped listening already
        with contextlib.suppress(OSError):
            sender.send(('interrupted', None))
    except user_error_types() as error:  # a user's: the parent says it in one line
        sender.send(('user', (type(error), one_line(error))))
    except BaseException:  # noqa: B902  (everything goes back to the parent, then it exits)
        sender.send(('error', traceback.format_exc()))
    finally:
        sender.close()


def _in_fresh_process(context, function, *args):
    """``function(*args)`` in a new process of ``context``; its result or its error. A worker
    still running when this ends early (Ctrl-C) is stopped with it."""
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, function, args), daemon=True)
    process.start()
    sender.close()
    status = payload = None
    try:
        status, payload = receiver.recv()
    except EOFError:  # the worker died without a word: said below, from its exit code
        pass
    finally:
        receiver.close()
        if status is None:
            process.terminate()
        process.join()
    if status is None:
        hint = ' (killed: out of memory?)' if process.exitcode == -9 else ''
        raise WorkerError(f'benchmark worker exited with code {process.exitcode}{hint}')
    if status == 'interrupted':
        raise KeyboardInterrupt
    if status == 'user':
        kind, message = payload
        raise kind(message)
    if status == 'error':
        raise WorkerError(f'benchmark worker failed:\n{payload}')
    return payload


def compare(spec: dict, variants: Sequence[str], repeat: int = 3,
            start_method: Optional[str] = None, profile_rows: int = 0,
            log: Log = _quiet) -> dict:
    """On CPU, memory of each variant in its own fresh process (resident memory is a process's),
    then latency of all, interleaved, in one more; on CUDA all in one fresh process
    (:func:`cuda_worker`). Workers start with ``start_method``; by default 'forkserver' on CPU
    and 'spawn' on CUDA. 'fork' starts faster and is safe only from a process that has imported
    torch but run nothing with it, on CPU (the CLI). ``log(message)`` hears of each worker as
    it starts."""
    cuda = torch.device(spec['params'].get('device', 'cpu')).type == 'cuda'
    if start_method is None:
        start_method = 'spawn' if cuda else 'forkserver'
    context = multiprocessing.get_context(start_method)
    if start_method == 'forkserver':
        context.set_forkserver_preload([__name__])
    latency = (f'latency: {", ".join(variants)}, interleaved, {repeat} '
               f'run{"s" if repeat > 1 else ""} each')
    if cuda:
        log(f'memory, then {latency}, in one process ...')
        memory, times = _in_fresh_process(context, cuda_worker, spec, tuple(variants), repeat,
                                          profile_rows)
    else:
        memory = {}
        for index, variant in enumerate(variants):
            log(f'memory {index + 1}/{len(variants)}: {variant}, alone in a fresh process ...')
            memory[variant] = _in_fresh_process(context, memory_worker, spec, variant)
        log(f'{latency} ...')
        times = _in_fresh_process(context, latency_worker, spec, tuple(variants), repeat,
                                  profile_rows)
    results = {}
    for variant in variants:
        latencies = times[variant]['latencies_s']
        results[variant] = dict(memory[variant], latencies_s=latencies,
                                median_s=statistics.median(latencies), min_s=min(latencies))
        if times[variant]['plugin_s']:
            results[variant]['plugin_s'] = times[variant]['plugin_s']
            results[variant]['plugin_median_s'] = statistics.median(times[variant]['plugin_s'])
        for profile in ('profile', 'host_profile'):
            if profile in times[variant]:
                results[variant][profile] = times[variant][profile]
    return dict(spec=spec, repeat=repeat, variants=list(variants), results=results)


# ---------------------------------------------------------------------------- reports
def ratio(numerator: float, denominator: float) -> Optional[float]:
    return numerator / denominator if denominator > 0 else None


def _fmt_ratio(value: Optional[float]) -> str:
    return 'n/a (below the measurement resolution)' if value is None else f'{value:.2f}x'


def _fmt_overhead(value: Optional[float]) -> str:
    return _fmt_ratio(value) + ('' if value is None else f' ({(value - 1) * 100:+.1f}%)')


def _header(comparison: dict) -> List[str]:
    first = comparison['results'][comparison['variants'][0]]
    env = first['env']
    device = env['device'] + (f" ({env['device_name']})" if 'device_name' in env else '')
    lines = [f"device: {device}, torch {env['torch']}, {env['threads']} threads",
             'memory: extra peak above model + inputs, each variant alone in a fresh process '
             f"({first['method']})",
             f"latency: {comparison['repeat']} runs per variant, interleaved in one process "
             'after a warm-up run each']
    if not all(r['reliable'] for r in comparison['results'].values()):
        lines.append('WARNING: the high-water mark could not be reset; a variant whose run did '
                     'not raise the process peak is reported as an upper bound')
    return lines


def _table(comparison: dict, total: bool = False) -> List[str]:
    """Latency and memory per variant; ``total`` adds the peak including model and inputs."""
    rows = [f"{'variant':<14}{'median (s)':>12}{'min (s)':>12}{'extra peak (MB)':>18}"
            + (f"{'peak incl. model + inputs (MB)':>33}" if total else '')]
    for variant in comparison['variants']:
        result = comparison['results'][variant]
        peak = (result['inputs_bytes'] + result['extra_peak_bytes']) / MB
        rows.append(f"{variant:<14}{result['median_s']:>12.4f}{result['min_s']:>12.4f}"
                    f"{result['extra_peak_bytes'] / MB:>18.1f}"
                    + (f'{peak:>33.1f}' if total else ''))
    return rows


def profile_lines(comparison: dict) -> List[str]:
    """Each variant's profiled run, where ``--profile`` asked for one."""
    lines = []
    for variant in comparison['variants']:
        rows = comparison['results'][variant].get('profile')
        if rows:
            clock = 'device' if comparison['results'][variant]['env']['device'] != 'cpu' \
                else 'CPU'
            lines += ['', f'profile of one run, {variant}: the {len(rows)} operators with the '
                          f'most {clock} time of their own',
                      *(f"{row['self_ms']:>11.3f} ms {row['calls']:>6}x  {row['name']}"
                        for row in rows)]
        lines += host_profile_lines(comparison, variant)
    return lines


def host_profile_lines(comparison: dict, variant: str) -> List[str]:
    """``variant``'s host profile (:func:`_host_profile`), if it has one: an empty line, the
    host time of a run, then a line a function."""
    host = comparison['results'][variant].get('host_profile')
    if not host:
        return []
    return ['', f"host time of {variant}, eager: {host['total_us']:.1f} µs a run (cProfile, "
                f"{host['runs']} runs); the {len(host['rows'])} functions with the most time "
                'of their own, a run (own, and with what they call)',
            *(f"{row['self_us']:>11.1f} µs {row['cumulative_us']:>11.1f} µs "
              f"{row['calls']:>6.1f}x  {row['name']}" for row in host['rows'])]


def plugin_summary(comparison: dict, variant: str = 'ours', against: str = 'official') -> dict:
    """``against`` / ``variant``: latency (medians, minima) and extra peak memory."""
    ours, official = (comparison['results'][v] for v in (variant, against))
    return dict(speedup=ratio(official['median_s'], ours['median_s']),
                speedup_min=ratio(official['min_s'], ours['min_s']),
                memory_reduction=ratio(official['extra_peak_bytes'], ours['extra_peak_bytes']))


def plugin_report(comparison: dict) -> str:
    params = comparison['spec']['params']
    ours_variants = [v for v in comparison['variants'] if v.startswith('ours')]
    picked = _picked_path(params)
    lines = ['FSA plug-in: ours vs the official formulation',
             f"attn ({params['batch']}, 1, {params['n']}, {params['n']}) shared by the heads, "
             f"values ({params['batch']}, {params['heads']}, {params['n']}, {params['head_dim']}), "
             f"Q={params['q']}, {params['dtype']}; FSA({_fsa_repr(params['plugin'])}), "
             f"proxy attention beta={params['beta']}, gamma={params['gamma']}",
             f"ours: the {picked} path, which FSA picks on this device; ours-device: the "
             'torch.sort path forced'
             + ''.join(f'; {variant}: replayed from a CUDA graph' for variant in
                       ('ours-graphed', 'official-graphed') if variant in comparison['variants']),
             *_header(comparison), '', *_table(comparison), '']
    for against, variant in _ratios(comparison['variants']):
        summary = plugin_summary(comparison, variant, against)
        lines.append(f"{against} / {variant}: latency {_fmt_ratio(summary['speedup'])} (medians; "
                     f"{_fmt_ratio(summary['speedup_min'])} on the minima), "
                     f"extra peak memory {_fmt_ratio(summary['memory_reduction'])}")
    syncs = {v: comparison['results'][v].get('host_syncs') for v in ours_variants}
    if any(syncs.values()):
        lines.append('host synchronisations (torch.cuda.set_sync_debug_mode): '
                     + '; '.join(f'{v}: {found}' for v, found in syncs.items()))
    lines += capture_failures(comparison['results'].values())
    return '\n'.join(lines + profile_lines(comparison))


def _ratios(variants: Sequence[str]) -> List[tuple]:
    """(against, variant) pairs a plug-in report gives: the official formulation against each
    of ours, and where both are graphed, graphed against graphed."""
    pairs = [('official', variant) for variant in variants if variant.startswith('ours')]
    if {'ours-graphed', 'official-graphed'} <= set(variants):
        pairs.append(('official-graphed', 'ours-graphed'))
    return pairs


def _picked_path(params: dict) -> str:
    """The path FSA, set as the benchmark's plug-in config, takes for its device and N."""
    return fsa_from_config(params['plugin']).path_on(torch.device(params['device']),
                                                     params['n'])


def fsa_from_config(plugin: dict) -> FSA:
    """FSA as a plug-in config (``dict(type='FSA', ...)``) sets it."""
    return FSA(**{key: value for key, value in plugin.items() if key != 'type'})


def _fsa_repr(plugin: dict) -> str:
    return ', '.join(f'{key}={value}' for key, value in plugin.items() if key != 'type') \
        or "FSA's defaults"


def plugin_grid_report(comparisons: Sequence[dict]) -> str:
    """One line per run of a grid of sizes and dtypes and ratio of :func:`_ratios`: official /
    each of ours, and graphed official / graphed ours."""
    rows = [f"{'N':>6} {'dtype':>6} {'variant':<17}{'median (s)':>12}{'against':>18}"
            f"{'latency ratio':>15}{'memory ratio':>14}"]
    for comparison in comparisons:
        params = comparison['spec']['params']
        for against, variant in _ratios(comparison['variants']):
            summary = plugin_summary(comparison, variant, against)
            median = comparison['results'][variant]['median_s']
            rows.append(f"{params['n']:>6} {params['dtype']:>6} {variant:<17}{median:>12.5f}"
                        f"{against:>18}{short_ratio(summary['speedup']):>15}"
                        f"{short_ratio(summary['memory_reduction']):>14}")
    failures = capture_failures(result for comparison in comparisons
                                for result in comparison['results'].values())
    return '\n'.join(['FSA plug-in, all runs: against / variant (latency medians, extra peak '
                      'memory)', *rows, *failures])


def short_ratio(value: Optional[float]) -> str:
    return 'n/a' if value is None else f'{value:.2f}x'


def segmentor_summary(comparison: dict) -> dict:
    without, with_ = (comparison['results'][v] for v in SegmentorWorkload.variants)
    return dict(
        extra_peak_added_mb=(with_['extra_peak_bytes'] - without['extra_peak_bytes']) / MB,
        latency=ratio(with_['median_s'], without['median_s']),
        latency_min=ratio(with_['min_s'], without['min_s']),
        plugin_share=ratio(with_.get('plugin_median_s', 0.0), with_['median_s']),
        extra_peak=ratio(with_['extra_peak_bytes'], without['extra_peak_bytes']),
        total_peak=ratio(with_['inputs_bytes'] + with_['extra_peak_bytes'],
                         without['inputs_bytes'] + without['extra_peak_bytes']))


def _model_line(result: dict) -> str:
    parts = result['model_parts']
    rest = result['model_bytes'] - parts['clip_image'] - parts['vfm']
    vfm = f", VFM {parts['vfm'] / MB:.1f} MB" if parts['vfm'] else ''
    return (f"model parameters and buffers: {result['model_bytes'] / MB:.1f} MB (CLIP image tower "
            f"{parts['clip_image'] / MB:.1f} MB{vfm}, text tower and the rest {rest / MB:.1f} MB)")


def replays_graphs(cfg_options: Optional[dict]) -> bool:
    """Whether ``--cfg-options`` turned the segmentor's CUDA-graph replay on."""
    return str((cfg_options or {}).get('model.cuda_graphs')) == 'True'


def capture_failures(results: Iterable[dict]) -> List[str]:
    """One line per failed CUDA-graph capture in ``results`` (each variant's, or each pass's):
    what they concern ran eagerly, so the numbers are not those of replays."""
    failures = dict.fromkeys(failure for result in results
                             for failure in result.get('graph_failures') or ())
    return [f'CUDA GRAPH CAPTURE FAILED, so these ran eagerly: {failure}' for failure in failures]


def replayed_from_graphs(cfg_options: Optional[dict], device: str) -> bool:
    """Whether crop batches were replayed from CUDA graphs: asked for (:func:`replays_graphs`)
    and on CUDA, the one device the segmentor replays on (elsewhere they ran eagerly)."""
    return replays_graphs(cfg_options) and device.startswith('cuda')


def _graphs_note(comparison: dict) -> List[str]:
    params = comparison['spec']['params']
    if not replayed_from_graphs(params.get('cfg_options'), params['device']):
        return []
    return ['cuda_graphs: each crop batch replayed from a CUDA graph, inside which no hook sees '
            "the plug-in (its time reads 0: FSA's share is the latency ratio); the extra peak "
            "includes the graphs' memory pool"]


def segmentor_report(comparison: dict, title: str) -> str:
    params = comparison['spec']['params']
    with_ = comparison['results'][SegmentorWorkload.variants[1]]
    summary = segmentor_summary(comparison)
    weights = ('RANDOM (real-size models, --random-weights: latency and memory are '
               'representative, predictions are not)' if params['random_weights']
               else 'from the config')
    options = f" with {params['cfg_options']}" if params.get('cfg_options') else ''
    lines = [title,
             f"config: {params['config']}{options}",
             f'weights: {weights}',
             f"crop: {params['batch']} x 3 x {params['crop']} x {params['crop']}, "
             f"Q={with_['q']}, plug-in: {with_['plugin_repr']}",
             _model_line(with_),
             *_header(comparison), '', *_table(comparison, total=True), '',
             f"time inside the plug-in: {with_.get('plugin_median_s', 0.0):.4f} s per crop "
             f"(median), {(summary['plugin_share'] or 0) * 100:.1f}% of the crop with it",
             f"with / without the plug-in: latency {_fmt_overhead(summary['latency'])} (medians; "
             f"{_fmt_overhead(summary['latency_min'])} on the minima), "
             f"peak memory incl. model and crop {_fmt_overhead(summary['total_peak'])}, "
             f"extra peak alone {_fmt_overhead(summary['extra_peak'])} "
             f"({summary['extra_peak_added_mb']:+.1f} MB)", *_graphs_note(comparison),
             *capture_failures(comparison['results'].values()), *profile_lines(comparison)]
    return '\n'.join(lines)


def segmentor_line(comparison: dict) -> str:
    """One line of a ``config`` / ``proxyclip`` comparison: the crop without and with the
    plug-in (medians), the time inside the plug-in and the peak memory added."""
    params = comparison['spec']['params']
    without, with_ = (comparison['results'][v] for v in SegmentorWorkload.variants)
    summary = segmentor_summary(comparison)
    device = with_['env']['device']
    graphs = ', CUDA graphs' if _graphs_note(comparison) else ''
    if capture_failures(comparison['results'].values()):
        graphs = ', CUDA graphs NOT CAPTURED (eager)'
    return (f"{Path(params['config']).stem}, {params['precision'] or 'its precision'}, "
            f"{params['batch']} x {params['crop']}^2 crop{graphs}, Q={with_['q']}, {device}: "
            f"{without['median_s'] * 1e3:.1f} ms without the plug-in, "
            f"{with_['median_s'] * 1e3:.1f} ms with ({_fmt_overhead(summary['latency'])}); "
            f"inside the plug-in {with_.get('plugin_median_s', 0.0) * 1e3:.1f} ms "
            f"({(summary['plugin_share'] or 0) * 100:.1f}% of the crop); peak memory "
            f"{_fmt_overhead(summary['total_peak'])}")


def write_json(path: str, comparison: dict) -> None:
    """``comparison`` as JSON at ``path``, whole or not at all (:func:`write_atomically`: a
    reader, or a Ctrl-C, never meets half a file)."""
    from ..apis.predict import write_atomically
    text = json.dumps(comparison, indent=2, default=str)
    target = Path(path).absolute()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, lambda temporary: temporary.write_text(text, encoding='utf-8'))
    except OSError as error:  # checked before measuring (check_json_path): a full disk …
        raise BenchmarkError(f'cannot write --json {path}: {error.strerror or error}') from error


# ---------------------------------------------------------------------------- entry points
def run_plugin(n: int, q: int, heads: int = 12, head_dim: int = 64, batch: int = 1,
               dtype: str = 'fp32', device: str = 'cpu', repeat: int = 3,
               threads: Optional[int] = None, start_method: Optional[str] = None,
               settings: Optional[dict] = None, profile_rows: int = 0, log: Log = _quiet) -> dict:
    """Our FSA against the official formulation, FSA and the proxy attention set as
    ``settings`` says (default: :func:`fsa_settings` of the ProxyCLIP config); see
    :func:`compare`."""
    settings = settings or fsa_settings()
    spec = dict(kind='plugin', threads=threads,
                params=dict(n=n, q=q, heads=heads, head_dim=head_dim, batch=batch, dtype=dtype,
                            device=device, **settings))
    return compare(spec, PluginWorkload.variants_on(device, n), repeat, start_method, profile_rows,
                   log)


def run_segmentor(config: str, random_weights: bool = False, crop: int = 336,
                  q: Optional[int] = None, batch: int = 1, precision: Optional[str] = None,
                  device: str = 'cpu', repeat: int = 3, threads: Optional[int] = None,
                  start_method: Optional[str] = None, cfg_options: Optional[dict] = None,
                  profile_rows: int = 0, log: Log = _quiet) -> dict:
    """One crop of a config's segmentor (a name or a path) with and without its plug-in; see
    :func:`compare`. The config and ``q`` are checked here, before any worker starts."""
    config_plugin(read_config(config, cfg_options))
    if q is not None:
        query_vocabulary(q)
    spec = dict(kind='segmentor', threads=threads,
                params=dict(config=str(resolve_config(config)), random_weights=random_weights,
                            crop=crop, q=q, batch=batch, precision=precision, device=device,
                            cfg_options=cfg_options))
    return compare(spec, SegmentorWorkload.variants, repeat, start_method, profile_rows, log)
