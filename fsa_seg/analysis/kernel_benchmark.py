"""FSA's fused pruning kernel alone, launched as FSA launches it and with other launch settings
(rows per program, warps per program, parts the top-p cut's interval is cut into a step):
time per call of each, side by side in one run, and how
far each one's rows of A_new are from FSA's launch. Beside it, the product q·log qᵀ that makes
those rows, as an fp32 model makes it (fp32) and as a half-precision one does (one fp16 product
of q's and log q's fp16 halves with fp32 sums), n × n' products against log q's aligned rows
(n' a multiple of 8, zeros beyond n) as FSA makes them, each timed and compared with the
float64 product of the same fp32 q and log q; the latter also n × n, as FSA made it before (on
an H100 at n = 1764 a cutlass kernel for operands aligned to 2 entries). And FSA's ensemble
operand [V, A·V + V] with the branch tokens A·V, from one kernel and from torch's copies and
sum, each timed, and whether they are equal; and the KL terms' kernel as FSA launches it and
with 2 to 16 tokens a program. For tuning on a GPU; measurements, no verdicts.

The rows are those FSA's fused path gives the kernel at ProxyCLIP's sizes: the dot products
q_i·log(q_j + ε) and the self terms Σ q_i·log(q_i + ε) (FSA's own KL terms of random cosine
similarities, Q queries), λ and top-p from the ProxyCLIP config, A_new written in fp16
(the model's dtype in an fp16 run). On CPU the kernel runs in Triton's interpreter: a check of
this code, not a measurement.
"""
import argparse
import importlib.util
import json
import statistics
import time
from typing import Optional, Sequence, Tuple

import torch

from ..models.layout import aligned_row_length, padded_rows, zero_padded
from ..models.plugins.base import merge_heads, split_heads
from ..models.plugins.fsa import FSA, kl_terms_in_halves
from ..models.plugins.fsa_kernel import (
    MAX_FUSED_TOKENS,
    PruningLaunch,
    _kernel,
    fused_kl_terms,
    fused_operand_and_tokens,
    fused_prune_and_sharpen,
    fused_pruning_available,
    kl_dot_products,
    run_kernel,
)
from .benchmark import (
    DTYPES,
    BenchmarkError,
    Log,
    _quiet,
    environment,
    fsa_from_config,
    fsa_settings,
    ratio,
    short_ratio,
)

GRAPH_CALLS = 10  # calls of a kernel in the CUDA graph that times it
KL_TERMS_TOKENS = (2, 4, 8, 16)  # tokens a program of the KL terms' kernel, timed beside FSA's
# (rows per program, warps per program, parts the top-p cut's interval is cut into a step,
# halvings before the interval first shrinks to its keys: 0 never) tried beside FSA's launch
# (a row a program, _num_warps: 4 warps for N ≤ 2048, 8 for N ≤ 4096, halving, snap after 13).
# Session 12's H100 sweep found more warps, more rows and more parts all slower at N = 1764.
LAUNCHES = tuple(PruningLaunch(*launch) for launch in (
    (1, 4, 2, 0), (1, 4, 2, 11), (1, 4, 2, 12), (1, 4, 2, 14), (1, 4, 2, 16), (1, 8, 2, 0),
    (1, 8, 2, 13), (1, 8, 4, 0)))


def branch_similarities(n: int, q: int, seed: int = 0) -> torch.Tensor:
    """(1, n + 1, q) fp32 cosine similarities U(-1, 1) of n attention-branch tokens and, last,
    of the uniform branch's token, as FSA's fused path hands them to its KL terms."""
    generator = torch.Generator().manual_seed(seed)
    return 2 * torch.rand(1, n + 1, q, generator=generator) - 1


def kernel_rows(branches: torch.Tensor, fsa: FSA) -> Tuple[torch.Tensor, torch.Tensor]:
    """What the pruning kernel reads for the n patches of ``branches`` (1, n + 1, q): the dot
    products q_i·log(q_j + ε) (n, n) and the self terms (n,), the KL divergences being
    self_i − dots_ij (FSA's KL terms and one matrix product)."""
    q_dist, log_q, self_term = fsa._kl_terms(fsa._isolation(branches))
    return (q_dist @ log_q.transpose(-1, -2))[0], self_term[0, :, 0]


def kl_products(branches: torch.Tensor, fsa: FSA, repeat: int) -> dict:
    """q·log(q + ε)ᵀ of ``branches`` (1, n + 1, q) as FSA's fused path makes it: q's n rows
    against log q's n' (the aligned n, zeros beyond n), so that the product's rows are aligned;
    in fp32 (an fp32 model's) and from the fp16 halves (a half-precision model's); and the
    halves' product once more against log q's first n rows only (``fp16_halves_unpadded``,
    n × n, as FSA made it before: on an H100 at n = 1764 an ``align2`` GEMM kernel). Median
    seconds of each and its largest difference (over the n × n entries) from the float64
    product of the same fp32 q and log q."""
    size = branches.shape[1] - 1
    halves = fused_kl_terms(branches, fsa.logit_scales, fsa.eps, True)[:2]
    operands = {'fp32': fused_kl_terms(branches, fsa.logit_scales, fsa.eps, False)[:2],
                'fp16_halves': halves,
                'fp16_halves_unpadded': (halves[0], halves[1][:, :size])}
    q_dist, log_q = (x[:, :size].double() for x in operands['fp32'])
    exact = q_dist @ log_q.transpose(-1, -2)
    products = {}
    for name, (q_dist, log_q) in operands.items():
        q_dist, log_q_t = q_dist[:, :size], log_q.transpose(-1, -2)
        seconds = _median_seconds(lambda: kl_dot_products(q_dist, log_q_t), repeat,
                                  branches.device)
        dots = kl_dot_products(q_dist, log_q_t)[..., :size]
        products[name] = dict(median_s=seconds, contracted=q_dist.shape[-1], rows=size,
                              columns=log_q.shape[1],
                              max_abs_diff_fp64=(dots.double() - exact).abs().max().item())
    return products


def kl_terms_launches(branches: torch.Tensor, fsa: FSA, split: bool, repeat: int,
                      tokens: Sequence[int] = KL_TERMS_TOKENS) -> dict:
    """FSA's KL terms of ``branches`` (a batch of 2 crops: the image twice), fp32 or as fp16
    halves (``split``), from the kernel as FSA launches it and with each of ``tokens`` tokens a
    program: median seconds of each, and the largest difference of its terms from FSA's
    launch's."""
    branches = branches.repeat(2, 1, 1)

    def terms(count: int = 0):
        return fused_kl_terms(branches, fsa.logit_scales, fsa.eps, split, count)
    reference = terms()
    launches = []
    for count in tokens:
        launches.append(dict(tokens=count, median_s=_median_seconds(lambda: terms(count), repeat,
                                                                    branches.device),
                             max_abs_diff=max((ours.double() - theirs.double()).abs().max().item()
                                              for ours, theirs in zip(terms(count), reference))))
    return dict(split=split, fsa_s=_median_seconds(terms, repeat, branches.device),
                launches=launches)


def torch_operand_and_tokens(values: torch.Tensor, attended: torch.Tensor):
    """:func:`fused_operand_and_tokens` as torch's ops make it (FSA's fused path until session
    15): the operand's padding rows zeroed, V copied into it, A·V + V added into it, A·V copied
    into the branch tokens: four kernels, three of them strided."""
    batch, heads, size, head_dim = values.shape
    operand = zero_padded(values, (batch, aligned_row_length(size, values.dtype), 2, heads,
                                   head_dim), size)
    operand[:, :size, 0] = values.transpose(1, 2)
    torch.add(attended.transpose(1, 2), values.transpose(1, 2), out=operand[:, :size, 1])
    tokens = values.new_empty((batch, size + 1, heads * head_dim))
    tokens[:, :size] = merge_heads(attended)
    return operand.flatten(2), tokens


def operand_copies(n: int, device: torch.device, dtype: torch.dtype, repeat: int,
                   batch: int = 2, heads: int = 12, head_dim: int = 64) -> dict:
    """FSA's ensemble operand [V, A·V + V] and branch tokens A·V from values and A·V laid out
    as ProxyCLIP gives them (a batch of 2 crops, ViT-B/16's heads): the fused kernel's and
    torch's (:func:`torch_operand_and_tokens`) median seconds, and whether they are equal."""
    generator = torch.Generator().manual_seed(n)
    width = heads * head_dim
    merged = torch.randn(batch, aligned_row_length(n, dtype), width, generator=generator)
    attended = split_heads(torch.randn(batch, n, width, generator=generator).to(device, dtype),
                           heads)
    values = split_heads(merged.to(device, dtype)[:, :n], heads)
    outputs = {}
    for name, make in (('kernel', fused_operand_and_tokens),
                       ('torch', torch_operand_and_tokens)):
        operand, tokens = make(values, attended)
        outputs[name] = dict(median_s=_median_seconds(lambda: make(values, attended), repeat,
                                                      device),
                             operand=operand, tokens=tokens[:, :n])
    equal = all(torch.equal(outputs['kernel'][part], outputs['torch'][part])
                for part in ('operand', 'tokens'))
    return dict(batch=batch, heads=heads, head_dim=head_dim, equal=equal,
                kernel_s=outputs['kernel']['median_s'], torch_s=outputs['torch']['median_s'])


def _median_seconds(function, repeat: int, device: torch.device) -> float:
    """Median of ``repeat`` timed calls after one warm-up. On a GPU the device time of a call:
    ``GRAPH_CALLS`` calls replayed from a CUDA graph between two events, ``repeat`` times (a
    call issued from Python costs more host time than this kernel takes, which would time the
    launch instead)."""
    function()
    if device.type != 'cuda':
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            function()
            times.append(time.perf_counter() - start)
        return statistics.median(times)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(GRAPH_CALLS):
            function()
    graph.replay()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(repeat)]
    for start, end in events:
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize(device)
    return statistics.median(start.elapsed_time(end) / 1e3 / GRAPH_CALLS
                             for start, end in events)


def check_kernel_device(device: torch.device, n_values: Sequence[int]) -> None:
    """Refuse, before any measurement, what the fused kernel cannot run here: rows longer than
    it takes, a GPU Triton does not compile it for, the CPU outside Triton's interpreter."""
    if importlib.util.find_spec('triton') is None:
        raise BenchmarkError('the kernel benchmark needs Triton, which is not installed')
    if max(n_values) > MAX_FUSED_TOKENS:
        raise BenchmarkError(f'--n {max(n_values)}: the fused kernel takes rows of at most '
                             f'{MAX_FUSED_TOKENS} tokens')
    if device.type == 'cuda' and not fused_pruning_available(device, max(n_values)):
        raise BenchmarkError(f"--device {device}: FSA's fused kernel does not run on this GPU "
                             '(Triton compiles it for compute capability 8.0 or more)')
    if device.type == 'cpu':
        from ..models.plugins._fsa_triton import prune_and_sharpen_rows
        try:
            _kernel(prune_and_sharpen_rows, device)
        except RuntimeError as error:  # the kernel module's word: not in the interpreter
            raise BenchmarkError(f'--device cpu: {error}') from None


def run_kernel_benchmark(n_values: Sequence[int] = (1764, 4096), q: int = 171,
                         launches: Sequence[PruningLaunch] = LAUNCHES, device: str = 'cuda',
                         out_dtype: str = 'fp16', repeat: int = 20,
                         settings: Optional[dict] = None, threads: Optional[int] = None,
                         log: Log = _quiet) -> dict:
    """FSA's launch and each of ``launches`` on the rows of each N: median seconds per call, and
    the largest difference of their rows from FSA's launch and how many rows differ; and the KL
    product of those rows two ways (:func:`kl_products`). ``threads``: torch's CPU threads (the
    host's work on a GPU; on CPU the interpreter's tensors). ``log(message)`` hears of each N as
    it starts."""
    device = torch.device(device)
    check_kernel_device(device, n_values)
    if threads:
        torch.set_num_threads(threads)
    fsa = fsa_from_config((settings or fsa_settings())['plugin'])
    dtype = DTYPES[out_dtype]
    runs = []
    for index, n in enumerate(n_values):
        log(f"N={n} ({index + 1}/{len(n_values)}): FSA's launch and {len(launches)} others, "
            'the KL products, the operand, the KL terms ...')
        branches = branch_similarities(n, q).to(device)
        rows, self_terms = kernel_rows(branches, fsa)

        def fsa_launch():
            return fused_prune_and_sharpen(rows, fsa.lamda, fsa.top_p, 'dots', dtype,
                                           self_terms=self_terms)
        reference = fsa_launch()
        fsa_s = _median_seconds(fsa_launch, repeat, device)
        results = []
        for launch in launches:
            out = padded_rows(reference.shape, dtype, device)
            seconds = _median_seconds(
                lambda: run_kernel(rows, out, fsa.lamda, fsa.top_p, 'dots', self_terms,
                                   launch), repeat, device)
            difference = (out.double() - reference.double()).abs()
            results.append(dict(**launch._asdict(),
                                median_s=seconds, max_abs_diff=difference.max().item(),
                                rows_differing=int((difference.amax(dim=-1) > 0).sum()),
                                rows_selecting_differently=int(
                                    ((out == 0) != (reference == 0)).any(dim=-1).sum())))
        runs.append(dict(n=n, fsa_launch_s=fsa_s, launches=results,
                         kl_products=kl_products(branches, fsa, repeat),
                         operand=operand_copies(n, device, dtype, repeat),
                         kl_terms=kl_terms_launches(branches, fsa, kl_terms_in_halves(dtype),
                                                    repeat)))
    return dict(q=q, out_dtype=out_dtype, repeat=repeat, lamda=fsa.lamda, top_p=fsa.top_p,
                env=environment(device), runs=runs)


def kernel_report(result: dict) -> str:
    env = result['env']
    lines = ["FSA's fused pruning kernel: FSA's launch (on a GPU a row a program) and other "
             'launch settings',
             f"N x N dot products and self terms (Q={result['q']}), A_new in "
             f"{result['out_dtype']}, "
             f"lamda={result['lamda']}, top_p={result['top_p']}; " + (
                 f"device time a call: median of {result['repeat']} replays of {GRAPH_CALLS} "
                 'calls from a CUDA graph' if env['device'].startswith('cuda') else
                 f"median of {result['repeat']} calls") + ' after a warm-up',
             f"device: {env['device']} ({env.get('device_name', 'cpu')}), torch {env['torch']}, "
             f"{env['threads']} threads"]
    for run in result['runs']:
        lines += ['', f"N={run['n']}: FSA's launch {run['fsa_launch_s'] * 1e3:.4f} ms",
                  f"{'rows/program':>13}{'warps':>7}{'parts':>7}{'snap':>6}{'ms':>10}"
                  f"{'FSA / this':>12}"
                  f"{'max|diff|':>11}{'rows differing':>16}{'rows keeping others':>21}"]
        lines += [_launch_row(run['fsa_launch_s'], launch) for launch in run['launches']]
        if 'kl_products' in run:
            lines.append(_kl_products_line(run['kl_products']))
        if 'operand' in run:  # absent from results written before session 15, as kl_terms
            lines.append(_operand_line(run['operand'], run['n'], result['out_dtype']))
        if 'kl_terms' in run:
            lines.append(_kl_terms_line(run['kl_terms']))
    return '\n'.join(lines)


def _operand_line(operand: dict, n: int, dtype: str) -> str:
    return (f"[V, A·V + V] and the branch tokens ({operand['batch']} x {n} tokens, "
            f"{operand['heads']} heads of {operand['head_dim']}, {dtype}): kernel "
            f"{operand['kernel_s'] * 1e3:.4f} ms, torch's copies and sum "
            f"{operand['torch_s'] * 1e3:.4f} ms; torch / kernel "
            f"{short_ratio(ratio(operand['torch_s'], operand['kernel_s']))}; equal: "
            f"{'yes' if operand['equal'] else 'NO'}")


def _kl_terms_line(kl_terms: dict) -> str:
    launches = ', '.join(
        f"{launch['tokens']}: {launch['median_s'] * 1e3:.4f} ms "
        f"({short_ratio(ratio(kl_terms['fsa_s'], launch['median_s']))}, max|diff| "
        f"{launch['max_abs_diff']:.1e})" for launch in kl_terms['launches'])
    return (f"KL terms ({'fp16 halves' if kl_terms['split'] else 'fp32'}, a batch of 2): FSA's "
            f"launch {kl_terms['fsa_s'] * 1e3:.4f} ms; tokens a program (FSA / this): "
            f"{launches}")


def _kl_products_line(products: dict) -> str:
    fp32, halves = products['fp32'], products['fp16_halves']
    line = (f"q·log qᵀ ({halves.get('rows', '')} x {halves.get('columns', '')}): fp32 "
            f"(contracted over {fp32['contracted']}) {fp32['median_s'] * 1e3:.4f} ms, max|diff| "
            f"from fp64 {fp32['max_abs_diff_fp64']:.1e}; fp16 halves (over "
            f"{halves['contracted']}, a half-precision model's) {halves['median_s'] * 1e3:.4f} "
            f"ms, {halves['max_abs_diff_fp64']:.1e}; fp32 / halves "
            f"{short_ratio(ratio(fp32['median_s'], halves['median_s']))}")
    unpadded = products.get('fp16_halves_unpadded')  # absent from results written before it
    if unpadded:
        line += (f"\n  the halves' product against {unpadded['columns']} rows of log q (not "
                 f"padded, as before) {unpadded['median_s'] * 1e3:.4f} ms, "
                 f"{unpadded['max_abs_diff_fp64']:.1e}; unpadded / padded "
                 f"{short_ratio(ratio(unpadded['median_s'], halves['median_s']))}")
    return line


def _launch_row(fsa_s: float, launch: dict) -> str:
    return (f"{launch['rows']:>13}{launch['warps']:>7}{launch['parts']:>7}"
            f"{launch.get('snap', ''):>6}"
            f"{launch['median_s'] * 1e3:>10.4f}{short_ratio(ratio(fsa_s, launch['median_s'])):>12}"
            f"{launch['max_abs_diff']:>11.1e}{launch['rows_differing']:>16}"
            f"{launch['rows_selecting_differently']:>21}")


def parse_launch(text: str) -> PruningLaunch:
    """``ROWSxWARPS[xPARTS[xSNAP]]`` (e.g. ``1x4``, ``1x8x4``, ``1x4x2x0``): rows and warps per
    program and the parts the top-p cut's interval is cut into a step (halving by default), all
    powers of two (a Triton block's sizes are), and the halvings before the interval first
    shrinks to its keys (FSA's by default; 0: never)."""
    try:
        rows, warps, *rest = (int(part) for part in text.lower().split('x'))
        if len(rest) > 2 or 0 in (rows, warps):
            raise ValueError(text)
        return PruningLaunch.checked(**dict(zip(PruningLaunch._fields, (rows, warps, *rest))))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected ROWSxWARPS[xPARTS[xSNAP]] like 1x4, 1x8x4 or '
                                         f'1x4x2x0, all but SNAP powers of two (PARTS ≥ 2), got '
                                         f'{text!r}') from None


def fastest_launch(result: dict, n: int) -> Optional[PruningLaunch]:
    """Of ``result``'s launches at N = ``n`` that keep the same entries of every row as FSA's
    launch (the same zeros of A_new), the fastest, if it is faster than FSA's launch; else
    None."""
    run = next((run for run in result['runs'] if run['n'] == n), None)
    if run is None:
        return None
    same = [launch for launch in run['launches'] if launch['rows_selecting_differently'] == 0]
    best = min(same, key=lambda launch: launch['median_s'], default=None)
    if best is None or best['median_s'] >= run['fsa_launch_s']:
        return None
    return PruningLaunch(*(best.get(field, default)
                           for field, default in PruningLaunch._field_defaults.items()))


def fastest_launch_options(path: str, n: int) -> str:
    """The ``--cfg-options`` that launch FSA's pruning kernel as :func:`fastest_launch` of the
    results in the JSON file ``path`` at N = ``n``; '' if there is none."""
    with open(path, encoding='utf-8') as handle:
        launch = fastest_launch(json.load(handle), n)
    if launch is None:
        return ''
    return ' '.join(f'model.plugin.pruning_launch.{key}={value}'
                    for key, value in launch._asdict().items())

