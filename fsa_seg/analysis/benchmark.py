"""Latency and peak-memory benchmarks, always two variants side by side in one run.

Library code behind ``tools/analysis/benchmark.py``:

* ``plugin``: our :class:`~fsa_seg.models.plugins.fsa.FSA` against the official formulation
  (:func:`~fsa_seg.models.plugins.fsa_reference.official_fsa`) on random inputs of given shapes;
* ``config``: one crop through a segmentor built from any of our configs, with and without the
  plug-in (the same model, the plug-in toggled);
* ``proxyclip``: ``config`` on ProxyCLIP (CLIP ViT-B/16 + DINO ViT-B/8) with FSA, real model
  sizes, random weights, one 336 crop, 171 queries.

How it measures, so that the numbers can be trusted on a noisy machine:

* memory — each variant alone in a fresh worker process: the workload is built, run once at a tiny
  size (lazy initialisation: kernels, thread pools), the full-size inputs are made, freed heap
  memory is handed back to the system (``malloc_trim``) and the resident-set high-water mark is
  reset (``/proc/self/clear_refs``); the *extra peak* is the high-water mark of the full-size run
  above the resident memory before it (model and inputs included in the latter, not the former).
  The worker has glibc map every allocation above 64 kB on its own and use one arena, so that
  resident memory follows the live tensors, not the allocator's thread-dependent caching (without
  this, the same run's peak varied by ±30 MB). On CUDA it is ``max_memory_allocated`` above
  ``memory_allocated`` before the run.
* latency — one more worker builds the workload once and runs the variants interleaved
  (A B, B A, ...) after one warm-up run each; the median and the minimum per variant are reported,
  and their ratios, all measured under the same machine load. For a segmentor the time spent
  inside the plug-in is timed too (forward hooks), which gives its share of a crop directly.
"""
import copy
import ctypes
import ctypes.util
import gc
import json
import math
import multiprocessing
import os
import re
import resource
import statistics
import time
import traceback
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

from ..apis.configs import use_random_weights
from ..models.plugins.fsa import FSA
from ..models.plugins.fsa_reference import official_fsa
from ..models.segmentors.proxyclip import proxy_attention
from ..models.text import load_vocabulary
from ..models.weights import WeightsError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROXYCLIP_CONFIG = os.path.join(REPO_ROOT, 'configs', 'proxyclip',
                                'proxyclip_fsa_vit-b16_dino-b8_voc21.py')
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16,
          'fp64': torch.float64}
MB = 2 ** 20

# The targets.
PLUGIN_TARGET = dict(n=1764, q=171, heads=12, head_dim=64, dtype='fp32', speedup=15.0,
                     memory_reduction=15.0)
PROXYCLIP_TARGET = dict(latency_overhead=0.10, memory_overhead=0.10)


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


def _synchronize(device: torch.device) -> None:
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------- workloads
class PluginWorkload:
    """Our FSA and the official formulation on random inputs of ProxyCLIP's shapes: an attention
    shared by the heads (B, 1, N, N), made as ProxyCLIP makes it from random proxy features;
    values (B, H, N, d); a fixed random linear head to ``embed_dim``, L2-normalised, against Q
    L2-normalised random text embeddings as ``logits_fn``."""
    variants = ('ours', 'official')
    warmup_size = 32

    def __init__(self, n: int, q: int, heads: int = 12, head_dim: int = 64, batch: int = 1,
                 dtype: str = 'fp32', device: str = 'cpu', embed_dim: int = 512,
                 lamda: float = 3.0, top_p: float = 0.45,
                 logit_scales: Sequence[float] = (20.0, 35.0), seed: int = 0):
        self.n, self.q, self.heads, self.head_dim, self.batch = n, q, heads, head_dim, batch
        self.dtype, self.device = DTYPES[dtype], torch.device(device)
        self.full_size = n
        self.seed = seed
        generator = torch.Generator().manual_seed(seed)
        width = heads * head_dim
        self.weight = (torch.randn(width, embed_dim, generator=generator) / math.sqrt(width)).to(
            self.device, self.dtype)
        self.text = F.normalize(torch.randn(q, embed_dim, generator=generator), dim=-1).to(
            self.device, self.dtype)
        self.fsa = FSA(lamda, top_p, logit_scales)
        self.hyper = dict(lamda=lamda, top_p=top_p, logit_scales=tuple(logit_scales))

    def logits_fn(self, heads):
        merged = heads.transpose(1, 2).flatten(2)                       # (B, n, H·d)
        return F.normalize(merged @ self.weight, dim=-1) @ self.text.t()

    def make_inputs(self, n: int):
        generator = torch.Generator().manual_seed(self.seed + 1)
        proxy = torch.randn(self.batch, 64, n, 1, generator=generator)
        attn = proxy_attention(proxy, beta=1.2, gamma=3.0)
        values = torch.randn(self.batch, self.heads, n, self.head_dim, generator=generator)
        return attn.to(self.device, self.dtype), values.to(self.device, self.dtype)

    def run(self, variant: str, inputs):
        attn, values = inputs
        if variant == 'ours':
            return self.fsa(attn, values, self.logits_fn)
        return official_fsa(attn, values, self.logits_fn, **self.hyper)

    def resident_bytes(self, inputs) -> int:
        tensors = list(inputs) + [self.weight, self.text]
        return sum(t.numel() * t.element_size() for t in tensors)


def _default_lamda(cfg: Config) -> float:
    """FSA's λ as the configs set it: the proxy's (MAE), else the backbone's, else 3.0."""
    return float(cfg.get('proxy_fsa_lamda', cfg.get('fsa_lamda', 3.0)))


def _module_bytes(module) -> int:
    if module is None:
        return 0
    return sum(t.numel() * t.element_size() for t in
               list(module.parameters()) + list(module.buffers()))


class SegmentorWorkload:
    """One crop through ``crop_logits`` of a segmentor built from a config, with its FSA plug-in
    (the config's, or FSA with the config's λ if it has none) and without (plug-in set to None on
    the same model). The vocabulary is Q dummy queries with random unit embeddings: no text
    tower run beyond one template of one name at build time."""
    variants = ('without FSA', 'with FSA')

    def __init__(self, config: str, random_weights: bool = False, crop: int = 336,
                 q: Optional[int] = None, batch: int = 1, precision: Optional[str] = None,
                 device: str = 'cpu', seed: int = 0):
        init_default_scope('mmseg')
        cfg = Config.fromfile(config)
        model_cfg = copy.deepcopy(cfg.model.to_dict())
        self.plugin_from_config = bool(model_cfg.get('plugin'))
        plugin_cfg = model_cfg.get('plugin') or dict(type='FSA', lamda=_default_lamda(cfg))
        self.q = int(q or len(load_vocabulary(model_cfg['vocabulary']).queries))
        model_cfg.update(plugin=plugin_cfg, vocabulary=['object', 'stuff'], templates=['{}'],
                         text_cache_dir=False)
        if random_weights:
            use_random_weights(model_cfg)
        if precision:
            model_cfg['clip'] = dict(model_cfg.get('clip', {}), precision=precision)
        self.device = torch.device(device)
        torch.manual_seed(seed)
        try:
            segmentor = MODELS.build(model_cfg)
        except WeightsError as error:
            if random_weights:
                raise
            raise WeightsError(f'{error}\nTo measure latency and memory without the weights, pass '
                               '--random-weights (real-size models, random weights).') from error
        self.segmentor = segmentor.to(self.device).eval()
        self.plugin = segmentor.plugin
        generator = torch.Generator().manual_seed(seed + 1)
        segmentor.vocabulary = load_vocabulary([f'query {i}' for i in range(self.q)])
        embed_dim = segmentor.clip.visual.proj.shape[1]
        segmentor.set_query_embeddings(
            F.normalize(torch.randn(self.q, embed_dim, generator=generator), dim=-1))
        self.batch, self.crop, self.full_size = batch, crop, crop
        self.seed = seed
        patch = math.lcm(*segmentor.clip.patch_size,
                         *(getattr(getattr(segmentor, 'vfm', None), 'patch_size', None) or ()))
        self.warmup_size = 2 * patch
        self.plugin_repr = repr(self.plugin).replace('\n', ' ')
        self.plugin_s = 0.0  # time spent inside the plug-in during the last run
        self._plugin_start = 0.0
        self.plugin.register_forward_pre_hook(self._enter_plugin)
        self.plugin.register_forward_hook(self._leave_plugin)
        self.model_bytes = _module_bytes(segmentor)
        self.model_parts = dict(clip_image=_module_bytes(segmentor.clip.visual),
                                vfm=_module_bytes(getattr(segmentor, 'vfm', None)))

    def _enter_plugin(self, *_):
        _synchronize(self.device)
        self._plugin_start = time.perf_counter()

    def _leave_plugin(self, *_):
        _synchronize(self.device)
        self.plugin_s += time.perf_counter() - self._plugin_start

    def make_inputs(self, size: int):
        generator = torch.Generator().manual_seed(self.seed + 2)
        dtype = self.segmentor.clip.dtype
        return torch.randn(self.batch, 3, size, size, generator=generator).to(self.device, dtype)

    def run(self, variant: str, crops):
        self.segmentor.plugin = self.plugin if variant == 'with FSA' else None
        self.plugin_s = 0.0
        return self.segmentor.crop_logits(crops)

    def resident_bytes(self, inputs) -> int:
        return self.model_bytes + inputs.numel() * inputs.element_size()


WORKLOADS = dict(plugin=PluginWorkload, segmentor=SegmentorWorkload)


def build_workload(spec: dict):
    return WORKLOADS[spec['kind']](**spec['params'])


# ---------------------------------------------------------------------------- workers
def _environment(device: torch.device) -> dict:
    env = dict(torch=torch.__version__, threads=torch.get_num_threads(), device=str(device))
    if device.type == 'cuda':
        env['device_name'] = torch.cuda.get_device_name(device)
    return env


def _workload_info(workload) -> dict:
    info = {}
    for key in ('q', 'plugin_from_config', 'plugin_repr', 'model_bytes', 'model_parts'):
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
    _synchronize(workload.device)
    workload.run(variant, workload.make_inputs(workload.warmup_size))
    inputs = workload.make_inputs(workload.full_size)
    with PeakMemory(workload.device) as memory:
        start = time.perf_counter()
        output = workload.run(variant, inputs)
        _synchronize(workload.device)
        elapsed = time.perf_counter() - start
    del output
    info = _workload_info(workload)
    info.update(extra_peak_bytes=memory.extra, resident_before_bytes=memory.before,
                inputs_bytes=workload.resident_bytes(inputs), first_run_s=elapsed,
                method=memory.method + ('; allocations > 64 kB mapped and unmapped, one '
                                        'malloc arena' if uncached and memory.device.type == 'cpu'
                                        else ''),
                reliable=memory.reliable,
                env=_environment(workload.device))
    return info


def latency_worker(spec: dict, variants: Sequence[str], repeat: int) -> Dict[str, dict]:
    """Run in a fresh process: ``repeat`` timed runs per variant, interleaved, after a warm-up;
    for a segmentor also the time spent inside the plug-in during each run."""
    _set_up_worker(spec)
    workload = build_workload(spec)
    inputs = workload.make_inputs(workload.full_size)
    for variant in variants:
        workload.run(variant, inputs)
    times = {variant: dict(latencies_s=[], plugin_s=[]) for variant in variants}
    for index in range(repeat):
        for variant in (variants if index % 2 == 0 else tuple(reversed(variants))):
            _synchronize(workload.device)
            start = time.perf_counter()
            output = workload.run(variant, inputs)
            _synchronize(workload.device)
            times[variant]['latencies_s'].append(time.perf_counter() - start)
            if hasattr(workload, 'plugin_s'):
                times[variant]['plugin_s'].append(workload.plugin_s)
            del output
    return times


class WorkerError(RuntimeError):
    """A benchmark worker failed; the message holds its traceback."""


def _child(sender, function, args) -> None:
    try:
        sender.send(('ok', function(*args)))
    except WeightsError as error:
        sender.send(('weights', str(error)))
    except BaseException:  # noqa: B902  (everything goes back to the parent, then it exits)
        sender.send(('error', traceback.format_exc()))
    finally:
        sender.close()


def _in_fresh_process(context, function, *args):
    """``function(*args)`` in a new process of ``context``; its result or its error."""
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, function, args), daemon=True)
    process.start()
    sender.close()
    try:
        status, payload = receiver.recv()
    except EOFError:
        process.join()
        hint = ' (killed: out of memory?)' if process.exitcode == -9 else ''
        raise WorkerError(f'benchmark worker exited with code {process.exitcode}{hint}') from None
    finally:
        receiver.close()
    process.join()
    if status == 'weights':
        raise WeightsError(payload)
    if status == 'error':
        raise WorkerError(f'benchmark worker failed:\n{payload}')
    return payload


def compare(spec: dict, variants: Sequence[str], repeat: int = 3,
            start_method: Optional[str] = None) -> dict:
    """Memory of each variant in its own fresh process, then latency of all, interleaved, in one
    more. Workers start with ``start_method``; by default 'forkserver' on CPU and 'spawn' on CUDA.
    'fork' starts faster and is safe only from a process that has imported torch but run
    nothing with it, on CPU (the CLI)."""
    if start_method is None:
        cuda = torch.device(spec['params'].get('device', 'cpu')).type == 'cuda'
        start_method = 'spawn' if cuda else 'forkserver'
    context = multiprocessing.get_context(start_method)
    if start_method == 'forkserver':
        context.set_forkserver_preload([__name__])
    memory = {variant: _in_fresh_process(context, memory_worker, spec, variant)
              for variant in variants}
    times = _in_fresh_process(context, latency_worker, spec, tuple(variants), repeat)
    results = {}
    for variant in variants:
        latencies = times[variant]['latencies_s']
        results[variant] = dict(memory[variant], latencies_s=latencies,
                                median_s=statistics.median(latencies), min_s=min(latencies))
        if times[variant]['plugin_s']:
            results[variant]['plugin_s'] = times[variant]['plugin_s']
            results[variant]['plugin_median_s'] = statistics.median(times[variant]['plugin_s'])
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


def plugin_summary(comparison: dict) -> dict:
    ours, official = (comparison['results'][v] for v in ('ours', 'official'))
    return dict(speedup=ratio(official['median_s'], ours['median_s']),
                speedup_min=ratio(official['min_s'], ours['min_s']),
                memory_reduction=ratio(official['extra_peak_bytes'], ours['extra_peak_bytes']))


def plugin_report(comparison: dict) -> str:
    params = comparison['spec']['params']
    summary = plugin_summary(comparison)
    lines = ['FSA plug-in: ours vs the official formulation',
             f"attn ({params['batch']}, 1, {params['n']}, {params['n']}) shared by the heads, "
             f"values ({params['batch']}, {params['heads']}, {params['n']}, {params['head_dim']}), "
             f"Q={params['q']}, {params['dtype']}",
             *_header(comparison), '', *_table(comparison), '',
             f"official / ours: latency {_fmt_ratio(summary['speedup'])} (medians; "
             f"{_fmt_ratio(summary['speedup_min'])} on the minima), "
             f"extra peak memory {_fmt_ratio(summary['memory_reduction'])}"]
    target = PLUGIN_TARGET
    if all(params[k] == target[k] for k in ('n', 'q', 'heads', 'head_dim', 'dtype')):
        met = ((summary['speedup'] or 0) >= target['speedup']
               and (summary['memory_reduction'] or math.inf) >= target['memory_reduction'])
        lines.append(f"target: >= {target['speedup']:.0f}x faster and >= "
                     f"{target['memory_reduction']:.0f}x less extra peak memory (medians): "
                     f"{'MET' if met else 'MISSED'}")
    return '\n'.join(lines)


def segmentor_summary(comparison: dict) -> dict:
    without, with_ = (comparison['results'][v] for v in ('without FSA', 'with FSA'))
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


def segmentor_report(comparison: dict, title: str, target: Optional[dict] = None) -> str:
    params = comparison['spec']['params']
    with_ = comparison['results']['with FSA']
    summary = segmentor_summary(comparison)
    weights = ('RANDOM (real-size models, --random-weights: latency and memory are '
               'representative, predictions are not)' if params['random_weights']
               else 'from the config')
    plugin = with_['plugin_repr'] + ('' if with_['plugin_from_config']
                                     else ' (not in the config: added for the comparison)')
    lines = [title,
             f"config: {os.path.relpath(params['config'])}",
             f'weights: {weights}',
             f"crop: {params['batch']} x 3 x {params['crop']} x {params['crop']}, "
             f"Q={with_['q']}, plug-in: {plugin}",
             _model_line(with_),
             *_header(comparison), '', *_table(comparison, total=True), '',
             f"time inside the plug-in: {with_.get('plugin_median_s', 0.0):.4f} s per crop "
             f"(median), {(summary['plugin_share'] or 0) * 100:.1f}% of the crop with FSA",
             f"with / without FSA: latency {_fmt_overhead(summary['latency'])} (medians; "
             f"{_fmt_overhead(summary['latency_min'])} on the minima), "
             f"peak memory incl. model and crop {_fmt_overhead(summary['total_peak'])}, "
             f"extra peak alone {_fmt_overhead(summary['extra_peak'])} "
             f"({summary['extra_peak_added_mb']:+.1f} MB)"]
    if target:
        latency_met = (summary['latency'] is not None
                       and summary['latency'] - 1 <= target['latency_overhead'])
        memory_met = (summary['total_peak'] is not None
                      and summary['total_peak'] - 1 <= target['memory_overhead'])
        lines.append(f"target: FSA adds <= {target['latency_overhead']:.0%} latency (medians): "
                     f"{'MET' if latency_met else 'MISSED'}; <= "
                     f"{target['memory_overhead']:.0%} peak memory (incl. model and crop): "
                     f"{'MET' if memory_met else 'MISSED'}")
    return '\n'.join(lines)


def write_json(path: str, comparison: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as handle:
        json.dump(comparison, handle, indent=2, default=str)


# ---------------------------------------------------------------------------- entry points
def run_plugin(n: int, q: int, heads: int = 12, head_dim: int = 64, batch: int = 1,
               dtype: str = 'fp32', device: str = 'cpu', repeat: int = 3,
               threads: Optional[int] = None, start_method: Optional[str] = None) -> dict:
    """Our FSA against the official formulation; see :func:`compare`."""
    spec = dict(kind='plugin', threads=threads,
                params=dict(n=n, q=q, heads=heads, head_dim=head_dim, batch=batch, dtype=dtype,
                            device=device))
    return compare(spec, PluginWorkload.variants, repeat, start_method)


def run_segmentor(config: str, random_weights: bool = False, crop: int = 336,
                  q: Optional[int] = None, batch: int = 1, precision: Optional[str] = None,
                  device: str = 'cpu', repeat: int = 3, threads: Optional[int] = None,
                  start_method: Optional[str] = None) -> dict:
    """One crop of a config's segmentor with and without FSA; see :func:`compare`."""
    spec = dict(kind='segmentor', threads=threads,
                params=dict(config=os.path.abspath(config), random_weights=random_weights,
                            crop=crop, q=q, batch=batch, precision=precision, device=device))
    return compare(spec, SegmentorWorkload.variants, repeat, start_method)
