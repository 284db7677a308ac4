r"""Benchmarks that measure variants side by side in one run and print measurements and ratios.

    # our FSA (both of its paths) vs the official formulation on random inputs, FSA set as the
    # config says; several --n and --dtype run each combination and end with one table
    python -m fsa_seg.analysis plugin --n 1764 4096 --dtype fp16 fp32 [--q 171] [--heads 12] \
        [--head-dim 64] [--batch 1] [--config NAME] [--repeat 7] [--threads T] [--device cpu] \
        [--profile ROWS] [--json out.json]

    # one crop through a config's segmentor, with and without its plug-in
    python -m fsa_seg.analysis config CONFIG [--random-weights] [--crop 336] [--q Q] [--batch 1] \
        [--precision fp32] [--cfg-options KEY=VALUE ...] [--repeat 7] [--device cpu] \
        [--profile ROWS] ...

    # ProxyCLIP (CLIP ViT-B/16 + DINO ViT-B/8) +- FSA: real sizes, random weights, 336 crop, Q=171
    python -m fsa_seg.analysis proxyclip [--precision fp16] [--repeat 7] [--device cpu] ...

    # FSA's fused pruning kernel alone: FSA's launch and other launch settings (GPU tuning)
    python -m fsa_seg.analysis kernel [--n 1764 4096] [--q 171] [--launch 1x4 1x8x4 ...] \
        [--out-dtype fp16] [--repeat 20] [--device cuda] [--json out.json]

    # first use of a vocabulary: text embeddings at the full context (before) vs cut per batch
    python -m fsa_seg.analysis text [--vocab voc21] [--model ViT-B-16] [--precision fp32] ...

    # tools/test.py's path end to end on generated images: images/s, +- the plug-in, per
    # precision, where the model's time goes, and agreement with fp32
    python -m fsa_seg.analysis e2e [--config NAME] [--images 30] [--size 375 500] \
        [--precision fp32 fp16] [--random-weights] [--repeat 3] [--stage-repeat 10] \
        [--device cuda] [--cfg-options KEY=VALUE ...] [--json out.json]

``--profile ROWS``: after the timings, one run of each variant under torch's profiler, and the ROWS
operators (kernels on CUDA) with the most time of their own; for ``plugin``'s eager variants of
ours also the ROWS functions with the most host time of their own (cProfile, 20 runs).
On CUDA ``plugin`` also times ours and, up to N = 2048, the official formulation replayed from
CUDA graphs.
``tools/analysis/benchmark.py`` is the same command in a checkout. CONFIG is a config name
(``fsa-seg configs`` lists them) or a config file. The reports go to stdout, what is being
measured to stderr. A mistake (a device this machine lacks, a --json that cannot be written, a
bad config value …) ends in one line before anything is measured; Ctrl-C in one line with
status 130, ``plugin``'s --json then holding the runs finished (it is written after each).
"""
import argparse
import sys

from ..apis.inference import default_device
from ..cli.arguments import add_cfg_options, positive_int
from ..cli.errors import INTERRUPTED, one_line, say
from . import benchmark, e2e_benchmark, kernel_benchmark, text_benchmark

COUNT = positive_int('integer')  # sizes, counts and repeats: a bad one is a one-line usage error


def parse_args(argv=None, prog=None):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)

    def common(command, device='cpu'):
        command.add_argument('--repeat', type=COUNT, default=7,
                             help='timed runs per variant (noisy machines need several)')
        command.add_argument('--device', default=device, help="'cpu' or 'cuda[:i]'")
        command.add_argument('--threads', type=COUNT,
                             help="torch CPU threads of the measurements (default: torch's)")
        command.add_argument('--json', help='also write the measurements to this JSON file')

    def profile(command):
        command.add_argument('--profile', type=COUNT, metavar='ROWS', default=0,
                             help='after the timings, profile one run per variant and list the '
                                  'ROWS operators (kernels on CUDA) with the most time of their '
                                  'own')

    def cfg_options(command):
        add_cfg_options(command, 'override config keys, e.g. model.crop_batch_size=8')

    plugin = sub.add_parser('plugin', help='our FSA vs the official formulation')
    plugin.add_argument('--n', type=COUNT, nargs='+', default=[1764], help='patch tokens N')
    plugin.add_argument('--q', type=COUNT, default=171, help='queries Q')
    plugin.add_argument('--heads', type=COUNT, default=12)
    plugin.add_argument('--head-dim', type=COUNT, default=64)
    plugin.add_argument('--batch', type=COUNT, default=1)
    plugin.add_argument('--dtype', choices=sorted(benchmark.DTYPES), nargs='+', default=['fp32'])
    plugin.add_argument('--config', default=benchmark.PROXYCLIP_CONFIG,
                        help='ProxyCLIP config whose FSA and proxy attention settings to use')
    profile(plugin)
    common(plugin)

    config = sub.add_parser('config', help="one crop of a config's segmentor, with / without "
                                           'its plug-in')
    config.add_argument('config', help='config name or file')
    config.add_argument('--random-weights', action='store_true',
                        help='replace CLIP and the VFM by real-size models with random weights')
    config.add_argument('--crop', type=COUNT, default=336, help='square crop size')
    config.add_argument('--q', type=COUNT, help="queries Q (default: the config's vocabulary)")
    config.add_argument('--batch', type=COUNT, default=1, help='crops per forward')
    config.add_argument('--precision', choices=sorted(benchmark.DTYPES),
                        help="CLIP precision (default: the config's)")
    cfg_options(config)
    profile(config)
    common(config)

    proxyclip = sub.add_parser('proxyclip', help='ProxyCLIP +- FSA, one 336 crop, Q=171, '
                                                 'real sizes with random weights')
    proxyclip.add_argument('--precision', choices=sorted(benchmark.DTYPES),
                           help="CLIP precision (default: the config's)")
    proxyclip.add_argument('--batch', type=COUNT, default=1, help='crops per forward')
    cfg_options(proxyclip)
    profile(proxyclip)
    common(proxyclip)

    text = sub.add_parser('text', help='first use of a vocabulary: text embeddings at the full '
                                       'context vs cut per batch, real size, random weights')
    text.add_argument('--vocab', default='voc21', help='bundled vocabulary or class-name file')
    text.add_argument('--templates', default='openai_imagenet', help='template set')
    text.add_argument('--model', default='ViT-B-16', help='open_clip architecture')
    text.add_argument('--precision', choices=sorted(benchmark.DTYPES), default='fp32')
    common(text)
    text.set_defaults(repeat=1)

    kernel = sub.add_parser('kernel', help="FSA's fused pruning kernel under other launch "
                                           'settings (rows and warps per program, parts a '
                                           'step of the top-p search)')
    kernel.add_argument('--n', type=COUNT, nargs='+', default=[1764, 4096],
                        help='tokens per row (N)')
    kernel.add_argument('--q', type=COUNT, default=171, help='queries (Q) of the KL terms')
    kernel.add_argument('--launch', type=kernel_benchmark.parse_launch, nargs='+',
                        default=list(kernel_benchmark.LAUNCHES),
                        metavar='ROWSxWARPS[xPARTS[xSNAP]]',
                        help='launch settings tried beside FSA\'s: rows and warps per program, '
                             'parts the top-p cut\'s interval is cut into a step, halvings '
                             'before it shrinks to its keys (0: never) (default: '
                             + ' '.join('x'.join(map(str, launch))
                                        for launch in kernel_benchmark.LAUNCHES) + ')')
    kernel.add_argument('--out-dtype', choices=sorted(benchmark.DTYPES), default='fp16',
                        help="A_new's dtype (the model's)")
    common(kernel, device='cuda')
    kernel.set_defaults(repeat=20)

    e2e = sub.add_parser('e2e', help="tools/test.py's path end to end on generated images")
    e2e.add_argument('--config', default=benchmark.PROXYCLIP_CONFIG, help='config name or file')
    e2e.add_argument('--images', type=COUNT, default=30, help='generated images')
    e2e.add_argument('--size', type=COUNT, nargs=2, default=[375, 500], metavar=('H', 'W'),
                     help='generated image size (default: VOC-like 375 x 500)')
    e2e.add_argument('--precision', choices=sorted(benchmark.DTYPES), nargs='+',
                     help='CLIP (and VFM) precisions (default: fp32 fp16 on CUDA, fp32 on CPU)')
    e2e.add_argument('--random-weights', action='store_true',
                     help='real-size models with random weights (no downloads)')
    e2e.add_argument('--stage-repeat', type=COUNT, default=10,
                     help="probed runs of the first image for the model's stages")
    cfg_options(e2e)
    common(e2e, device=None)
    e2e.set_defaults(repeat=3)
    return parser.parse_args(argv)


def main(argv=None, prog=None):
    args = parse_args(argv, prog)
    try:
        return run(args)
    except KeyboardInterrupt as interrupt:  # its args: what --json holds, where a run said it
        say('; '.join(['interrupted', *map(str, interrupt.args)]))
        sys.exit(INTERRUPTED)
    except benchmark.WorkerError as error:  # not the user's: the worker's traceback says where
        sys.exit(f'error: {error}')
    except benchmark.user_error_types() as error:
        sys.exit(f'error: {one_line(error)}')


def run(args):
    args.device = args.device or default_device()  # (e2e's default: the GPU, if there is one)
    benchmark.check_device(args.device)  # before anything is built or measured
    if args.json:
        benchmark.check_json_path(args.json)
    start_method = worker_start_method(args.device)
    if args.command == 'plugin':
        return run_plugin_grid(args, start_method)
    if args.command == 'e2e':
        comparison = run_e2e(args)
        report = e2e_benchmark.e2e_report(comparison)
    elif args.command == 'config':
        comparison = benchmark.run_segmentor(
            args.config, random_weights=args.random_weights, crop=args.crop, q=args.q,
            batch=args.batch, precision=args.precision, device=args.device, repeat=args.repeat,
            threads=args.threads, start_method=start_method, cfg_options=args.cfg_options,
            profile_rows=args.profile, log=say)
        report = benchmark.segmentor_report(comparison, 'Segmentor with and without its '
                                                        'plug-in, per crop')
    elif args.command == 'kernel':
        comparison = kernel_benchmark.run_kernel_benchmark(
            args.n, args.q, args.launch, args.device, args.out_dtype, args.repeat,
            threads=args.threads, log=say)
        report = kernel_benchmark.kernel_report(comparison)
    elif args.command == 'text':
        comparison = text_benchmark.run_text(args.vocab, args.templates, args.model,
                                             args.precision, args.device, args.repeat,
                                             args.threads, log=say)
        report = text_benchmark.text_report(comparison)
    else:
        comparison = benchmark.run_segmentor(benchmark.PROXYCLIP_CONFIG, random_weights=True,
                                             crop=336, q=171, batch=args.batch,
                                             precision=args.precision, device=args.device,
                                             repeat=args.repeat, threads=args.threads,
                                             start_method=start_method,
                                             cfg_options=args.cfg_options,
                                             profile_rows=args.profile, log=say)
        report = benchmark.segmentor_report(
            comparison, 'ProxyCLIP (CLIP ViT-B/16, DINO ViT-B/8) with and without FSA, one crop')
    print(report)
    if args.json:
        benchmark.write_json(args.json, comparison)
    return comparison


def worker_start_method(device: str):
    """This process has imported torch but run nothing with it: on CPU, forked workers are safe
    and start at once. CUDA workers are spawned (the library's default)."""
    return 'fork' if sys.platform.startswith('linux') and device == 'cpu' else None


def run_e2e(args) -> dict:
    precisions = args.precision or (['fp32', 'fp16'] if args.device.startswith('cuda')
                                    else ['fp32'])
    return e2e_benchmark.run_e2e(
        args.config, args.images, args.size, precisions, args.device, args.random_weights,
        args.repeat, args.stage_repeat, args.threads, args.cfg_options, log=say)


def run_plugin_grid(args, start_method):
    """``plugin`` for every N and dtype given, each reported as it ends (and --json written
    again), then one table."""
    settings = benchmark.fsa_settings(args.config)
    grid = [(n, dtype) for n in args.n for dtype in args.dtype]
    comparisons = []
    try:
        for index, (n, dtype) in enumerate(grid):
            say(f'run {index + 1}/{len(grid)}: N={n}, {dtype}')
            comparisons.append(benchmark.run_plugin(
                n, args.q, args.heads, args.head_dim, args.batch, dtype, args.device,
                args.repeat, args.threads, start_method, settings, args.profile, log=say))
            print(benchmark.plugin_report(comparisons[-1]), flush=True)
            if args.json:  # after each run: a Ctrl-C or a failure later keeps what was measured
                benchmark.write_json(args.json, plugin_grid_json(comparisons, len(grid)))
    except KeyboardInterrupt:
        if args.json and comparisons:
            raise KeyboardInterrupt(f'{args.json} holds the {len(comparisons)} of {len(grid)} '
                                    'runs finished') from None
        raise
    if len(comparisons) > 1:
        print('\n' + benchmark.plugin_grid_report(comparisons))
    return comparisons[0] if len(comparisons) == 1 else comparisons


def plugin_grid_json(comparisons: list, runs: int) -> dict:
    """What ``plugin --json`` writes: one run's comparison, or a grid's ``runs`` so far (the
    same shape, finished or not, for a grid)."""
    return comparisons[0] if runs == 1 else dict(runs=comparisons)
