r"""Latency and peak memory, two variants side by side in one run (fsa_seg/analysis/benchmark.py).

    # our FSA (both of its paths) vs the official formulation on random inputs; several --n and
    # --dtype run each combination and end with one table (GPU: --n 1764 4096 --dtype fp16 fp32)
    python tools/analysis/benchmark.py plugin --n 1764 --q 171 --heads 12 --head-dim 64 \
        [--batch 1] [--dtype fp32] [--repeat 7] [--threads T] [--device cpu] [--json out.json]

    # one crop through any config's segmentor, with and without the FSA plug-in
    python tools/analysis/benchmark.py config CONFIG [--random-weights] [--crop 336] [--q Q] \
        [--batch 1] [--precision fp32] [--repeat 7] [--threads T] [--device cpu] [--json out.json]

    # ProxyCLIP (CLIP ViT-B/16 + DINO ViT-B/8) +- FSA: real sizes, random weights, 336 crop, Q=171
    python tools/analysis/benchmark.py proxyclip [--repeat 7] [--threads T] [--device cpu] \
        [--json out.json]

    # first use of a vocabulary: text embeddings at the full context (before) vs cut per batch
    python tools/analysis/benchmark.py text [--vocab voc21] [--model ViT-B-16] \
        [--precision fp32] [--repeat 1] [--threads T] [--device cpu] [--json out.json]
"""
import argparse
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from fsa_seg.analysis import benchmark, text_benchmark  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)

    def common(command):
        command.add_argument('--repeat', type=int, default=7,
                             help='timed runs per variant (noisy machines need several)')
        command.add_argument('--device', default='cpu', help="'cpu' (default) or 'cuda[:i]'")
        command.add_argument('--threads', type=int,
                             help="torch CPU threads in the workers (default: torch's)")
        command.add_argument('--json', help='also write the measurements to this JSON file')

    plugin = sub.add_parser('plugin', help='our FSA vs the official formulation')
    plugin.add_argument('--n', type=int, nargs='+', default=[1764], help='patch tokens N')
    plugin.add_argument('--q', type=int, default=171, help='queries Q')
    plugin.add_argument('--heads', type=int, default=12)
    plugin.add_argument('--head-dim', type=int, default=64)
    plugin.add_argument('--batch', type=int, default=1)
    plugin.add_argument('--dtype', choices=sorted(benchmark.DTYPES), nargs='+', default=['fp32'])
    common(plugin)

    config = sub.add_parser('config', help="one crop of a config's segmentor, with / without FSA")
    config.add_argument('config', help='config file (configs/**)')
    config.add_argument('--random-weights', action='store_true',
                        help='replace CLIP and the VFM by real-size models with random weights')
    config.add_argument('--crop', type=int, default=336, help='square crop size')
    config.add_argument('--q', type=int, help="queries Q (default: the config's vocabulary)")
    config.add_argument('--batch', type=int, default=1, help='crops per forward')
    config.add_argument('--precision', choices=sorted(benchmark.DTYPES),
                        help="CLIP precision (default: the config's)")
    common(config)

    proxyclip = sub.add_parser('proxyclip', help='ProxyCLIP +- FSA, one 336 crop, Q=171, '
                                                 'real sizes with random weights')
    common(proxyclip)

    text = sub.add_parser('text', help='first use of a vocabulary: text embeddings at the full '
                                       'context vs cut per batch, real size, random weights')
    text.add_argument('--vocab', default='voc21', help='bundled vocabulary or class-name file')
    text.add_argument('--templates', default='openai_imagenet', help='template set')
    text.add_argument('--model', default='ViT-B-16', help='open_clip architecture')
    text.add_argument('--precision', choices=sorted(benchmark.DTYPES), default='fp32')
    common(text)
    text.set_defaults(repeat=1)
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error('--repeat must be at least 1')
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        return run(args)
    except (benchmark.WeightsError, benchmark.WorkerError) as error:
        sys.exit(f'error: {error}')


def run(args):
    # This process has imported torch but run nothing with it: on CPU, forked workers are safe
    # and start at once. CUDA workers are spawned (the library's default).
    start_method = 'fork' if sys.platform.startswith('linux') and args.device == 'cpu' else None
    if args.command == 'plugin':
        return run_plugin_grid(args, start_method)
    elif args.command == 'config':
        comparison = benchmark.run_segmentor(args.config, args.random_weights, args.crop, args.q,
                                             args.batch, args.precision, args.device,
                                             args.repeat, args.threads, start_method)
        report = benchmark.segmentor_report(comparison, 'Segmentor with and without FSA, '
                                                        'per crop')
    elif args.command == 'text':
        comparison = text_benchmark.run_text(args.vocab, args.templates, args.model,
                                             args.precision, args.device, args.repeat,
                                             args.threads)
        report = text_benchmark.text_report(comparison)
    else:
        comparison = benchmark.run_segmentor(benchmark.PROXYCLIP_CONFIG, random_weights=True,
                                             crop=336, q=171, device=args.device,
                                             repeat=args.repeat, threads=args.threads,
                                             start_method=start_method)
        report = benchmark.segmentor_report(
            comparison, 'ProxyCLIP (CLIP ViT-B/16, DINO ViT-B/8) with and without FSA, one crop',
            target=benchmark.PROXYCLIP_TARGET)
    print(report)
    if args.json:
        benchmark.write_json(args.json, comparison)
    return comparison


def run_plugin_grid(args, start_method):
    """``plugin`` for every N and dtype given, each reported as it ends, then one table."""
    comparisons = []
    for n in args.n:
        for dtype in args.dtype:
            comparison = benchmark.run_plugin(n, args.q, args.heads, args.head_dim, args.batch,
                                              dtype, args.device, args.repeat, args.threads,
                                              start_method)
            print(benchmark.plugin_report(comparison), flush=True)
            comparisons.append(comparison)
    if len(comparisons) > 1:
        print('\n' + benchmark.plugin_grid_report(comparisons))
    if args.json:
        benchmark.write_json(args.json, comparisons[0] if len(comparisons) == 1
                             else dict(runs=comparisons))
    return comparisons[0] if len(comparisons) == 1 else comparisons


if __name__ == '__main__':
    main()
