"""First use of a vocabulary: its text embeddings, before and now, side by side in one run.

* ``full context`` (before): open_clip's ``encode_text`` on every prompt at the full 77-token
  context, 256 prompts at a time in vocabulary order;
* ``cut per batch`` (now): :func:`~fsa_seg.models.text.embed_queries` through
  :meth:`OpenCLIP.encode_text <fsa_seg.models.backbones.clip.OpenCLIP.encode_text>`, prompts
  longest first in batches, each only up to its longest prompt.

Both start from the same model with random weights of the real size; after a small warm-up of
each, the variants run interleaved (A B, B A, ...) and every run is timed. The report gives the
times, their ratio, the tokens each variant pushed through the text transformer and the largest
difference between the two results; no verdicts.
"""
import statistics
import time
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..cli.errors import say
from ..models.backbones import OpenCLIP
from ..models.backbones.clip import is_causal_clip_text, pooled_token_index
from ..models.text import embed_queries, load_vocabulary, resolve_templates
from .benchmark import BenchmarkError, environment, synchronize

VARIANTS = ('full context', 'cut per batch')
BATCH_SIZE = 256


def full_context_embeddings(clip: OpenCLIP, queries: Sequence[str], templates: Sequence[str],
                            batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """The zero-shot classifier as it was computed before: full context, vocabulary order."""
    prompts = [template.format(query) for query in queries for template in templates]
    device = clip.model.logit_scale.device
    chunks = [clip.model.encode_text(clip.tokenizer(prompts[i:i + batch_size]).to(device)).float()
              for i in range(0, len(prompts), batch_size)]
    per_prompt = F.normalize(torch.cat(chunks), dim=-1)
    return F.normalize(per_prompt.view(len(queries), len(templates), -1).mean(dim=1), dim=-1)


def tokens_through_the_transformer(clip: OpenCLIP, prompts: Sequence[str],
                                   batch_size: int = BATCH_SIZE) -> dict:
    """Token positions each variant runs: all of the context, or each batch's longest prompt."""
    tokens = clip.tokenizer(list(prompts))
    full = tokens.numel()
    if not is_causal_clip_text(clip.model):
        return {VARIANTS[0]: full, VARIANTS[1]: full}
    lengths = (pooled_token_index(clip.model, tokens) + 1).sort(descending=True).values
    cut = sum(int(batch[0]) * len(batch) for batch in lengths.split(batch_size))
    return {VARIANTS[0]: full, VARIANTS[1]: cut}


def _timed(function, device: torch.device):
    synchronize(device)
    start = time.perf_counter()
    result = function()
    synchronize(device)
    return time.perf_counter() - start, result


def _templates(name: str) -> Sequence[str]:
    try:
        return resolve_templates(name)
    except ValueError as error:  # not a template set's name: said of the argument
        raise BenchmarkError(f'--templates {name}: {error}') from None


def _random_clip(model_name: str, precision: str) -> OpenCLIP:
    torch.manual_seed(0)
    try:
        return OpenCLIP(model_name, random_init=True, precision=precision)
    except ValueError as error:  # not an open_clip model's name: said of the argument
        raise BenchmarkError(f'--model {model_name}: {error}') from None


def run_text(vocabulary: str = 'voc21', templates: str = 'openai_imagenet',
             model_name: str = 'ViT-B-16', precision: str = 'fp32', device: str = 'cpu',
             repeat: int = 1, threads: Optional[int] = None, log=None) -> dict:
    """Time the text embeddings of ``vocabulary`` both ways on a random ``model_name``;
    ``log(message)`` reports each run as it starts and ends (default: to stderr)."""
    log = log or say
    queries = load_vocabulary(vocabulary).queries  # the arguments first: the model takes a while
    templates = _templates(templates)
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device)
    clip = _random_clip(model_name, precision).to(device)
    runs = {
        VARIANTS[0]: lambda q, t: full_context_embeddings(clip, q, t),
        VARIANTS[1]: lambda q, t: embed_queries(clip, q, t, progress=False),
    }
    with torch.no_grad():
        for run in runs.values():  # warm-up: thread pools, kernels, allocator
            run(queries[:1], templates[:4])
        times = {variant: [] for variant in VARIANTS}
        outputs = {}
        for index in range(repeat):
            order = VARIANTS if index % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                log(f'run {index + 1}/{repeat}: {variant} ...')
                seconds, outputs[variant] = _timed(
                    lambda: runs[variant](queries, templates), device)
                times[variant].append(seconds)
                log(f'run {index + 1}/{repeat}: {variant} {seconds:.1f} s')
    prompts = [template.format(query) for query in queries for template in templates]
    difference = (outputs[VARIANTS[0]] - outputs[VARIANTS[1]]).abs().max().item()
    return dict(
        vocabulary=vocabulary, num_queries=len(queries), num_templates=len(templates),
        model=model_name, precision=precision, repeat=repeat,
        env=environment(device),
        tokens=tokens_through_the_transformer(clip, prompts),
        results={variant: dict(times_s=times[variant], median_s=statistics.median(times[variant]),
                               min_s=min(times[variant])) for variant in VARIANTS},
        max_abs_difference=difference)


def text_report(result: dict) -> str:
    env, results, tokens = result['env'], result['results'], result['tokens']
    full, cut = (results[variant] for variant in VARIANTS)
    lines = [f"First use of a vocabulary: {result['vocabulary']} ({result['num_queries']} names "
             f"x {result['num_templates']} templates), {result['model']} text tower, random "
             f"weights, {result['precision']}",
             f"device: {env['device']}, torch {env['torch']}, {env['threads']} threads; "
             f"{result['repeat']} run(s) per variant, interleaved, after a warm-up",
             f"{'variant':<16}{'median (s)':>12}{'min (s)':>12}{'tokens run':>14}"]
    for variant in VARIANTS:
        lines.append(f"{variant:<16}{results[variant]['median_s']:>12.2f}"
                     f"{results[variant]['min_s']:>12.2f}{tokens[variant]:>14}")
    speedup = full['median_s'] / cut['median_s']
    lines += [f"speed-up (full context / cut per batch): median {speedup:.2f}x, "
              f"min {full['min_s'] / cut['min_s']:.2f}x; "
              f"tokens run {tokens[VARIANTS[0]] / tokens[VARIANTS[1]]:.2f}x fewer",
              f"max |difference| of the embeddings: {result['max_abs_difference']:.2e}"]
    return '\n'.join(lines)
