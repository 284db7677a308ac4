"""``fsa-seg test`` and ``fsa-seg dist-test``: evaluate a config on its benchmark (mIoU).

    fsa-seg test CONFIG [--work-dir DIR] [--out results.json] [--show-dir DIR] ...
    fsa-seg dist-test CONFIG NUM_PROCS [fsa-seg test arguments ...]

``tools/test.py`` and ``tools/dist_test.sh`` are the same commands for a checkout.
"""
import argparse
import os
import traceback
from pathlib import Path

from .arguments import add_cfg_options, add_cuda_graphs, add_debug, positive_int
from .errors import FP16_ON_CPU, fail, one_line, say, warn

TEST_DESCRIPTION = """\
Evaluate a training-free segmentor on a benchmark with sliding-window inference: the per-class
table and mIoU / aAcc / mAcc in the log, and with --out the metrics and the settings that
produced them as JSON. CONFIG is a config file or a config name (fsa-seg configs lists them)."""

DIST_DESCRIPTION = """\
fsa-seg test in NUM_PROCS processes (one per GPU; without GPUs, CPU processes with the gloo
backend) through torchrun and mmengine's launcher. Every argument after NUM_PROCS is passed on
to fsa-seg test. Several nodes: set NNODES, NODE_RANK, MASTER_ADDR and PORT."""


def add_test_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('config', help='config file or config name (fsa-seg configs)')
    parser.add_argument('--work-dir', help='folder for logs (default: ./work_dirs/<config>)')
    parser.add_argument('--out', help='write the metrics and settings as JSON to this file')
    parser.add_argument('--show-dir', help='save prediction / ground-truth overlays here')
    parser.add_argument('--allow-partial-split', action='store_true',
                        help='evaluate a dataset whose image count differs from its split '
                             '(the JSON then says "complete": false)')
    parser.add_argument('--allow-bad-annotations', action='store_true',
                        help='annotations of another size than their image, or with values '
                             'outside the classes: a warning per file and a count in the JSON '
                             '(pixels ignored, wrong-size annotations left out) instead of an '
                             'error')
    parser.add_argument('--resume', action='store_true',
                        help='go on with an evaluation that stopped (Ctrl-C, a crash, a bad '
                             'file): the images already scored in the work dir, under the same '
                             'settings, are not run again')
    parser.add_argument('--random-weights', action='store_true',
                        help='TESTING ONLY: build every component with random weights (seeded: '
                             'two runs agree) to check the pipeline; the numbers mean nothing')
    parser.add_argument('--precision', choices=('fp32', 'fp16', 'bf16'),
                        help="the model's precision (default: the config's, fp32); fp16/bf16 "
                             'are for GPUs')
    add_cuda_graphs(parser)
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='unpickle local checkpoint files fully: only for files you trust '
                             '(a pickle can run code). Without it they are read weights-only')
    add_cfg_options(parser, 'override config keys, e.g. model.prob_thd=0.3')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help=argparse.SUPPRESS)
    add_debug(parser)
    parser.set_defaults(run=run_test)


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The ``fsa-seg test`` arguments as a command of their own (``tools/test.py``)."""
    parser = argparse.ArgumentParser(prog=prog, description=TEST_DESCRIPTION)
    add_test_arguments(parser)
    return parser


def add_parsers(commands) -> None:
    """``fsa-seg test`` and ``fsa-seg dist-test``."""
    add_test_arguments(commands.add_parser('test', help='evaluate a config on its benchmark',
                                           description=TEST_DESCRIPTION))
    dist = commands.add_parser('dist-test', help='evaluate in several processes (GPUs)',
                               description=DIST_DESCRIPTION)
    dist.add_argument('config', help='config file or config name')
    dist.add_argument('num_procs', type=positive_int('number of processes'), metavar='NUM_PROCS',
                      help='processes per node (GPUs)')
    dist.add_argument('test_args', nargs=argparse.REMAINDER, metavar='...',
                      help='fsa-seg test arguments')
    dist.set_defaults(run=run_dist_test, debug=False)


def run_test(args: argparse.Namespace, prog: str = 'fsa-seg test') -> int:
    import torch

    from ..apis import evaluate, load_test_config
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg = load_test_config(args.config, args.cfg_options, args.work_dir, args.launcher,
                           args.show_dir,
                           on_bad_annotation='warn' if args.allow_bad_annotations else 'error',
                           random_weights=args.random_weights,
                           trust_checkpoint=args.trust_checkpoint, precision=args.precision,
                           cuda_graphs=args.cuda_graphs)
    if args.precision == 'fp16' and not torch.cuda.is_available():  # mmengine's device
        warn(prog, FP16_ON_CPU)
    try:
        evaluate(cfg, out=args.out, allow_partial=args.allow_partial_split, resume=args.resume)
    except Exception as error:
        if args.launcher == 'none' or args.debug or not _failed_in_torch_distributed(error):
            raise
        cause = one_line(error).split('. ')[0]
        return fail(prog, f'lost the other processes ({cause}); most often one of them '
                          'stopped: its message is above (--debug shows the traceback)')
    return 0


def _failed_in_torch_distributed(error: Exception) -> bool:
    """Whether a collective with the other processes failed, as when one of them stopped:
    NCCL and the store raise torch's DistError, gloo a RuntimeError from its ``wait``."""
    import torch.distributed as dist
    frames = traceback.extract_tb(error.__traceback__)
    return isinstance(error, dist.DistError) or (
        isinstance(error, RuntimeError) and bool(frames)
        and Path(frames[-1].filename).parent == Path(dist.__file__).parent)


def run_dist_test(args: argparse.Namespace, prog: str = 'fsa-seg dist-test') -> int:
    """Check the arguments and the config here, once; then start the processes with torchrun.
    A failed process has printed its own error: no launcher traceback on top of it."""
    test_args = build_parser(f'{prog} {args.config} {args.num_procs}').parse_args(
        [args.config, *args.test_args])
    if test_args.launcher != 'none':
        return fail(prog, '--launcher is set by dist-test (pytorch); leave it out')
    from ..apis import load_test_config
    load_test_config(test_args.config, test_args.cfg_options,  # config errors: once, here
                     random_weights=test_args.random_weights, cuda_graphs=test_args.cuda_graphs)
    from torch.distributed import DistNetworkError
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run
    address = f'{os.environ.get("MASTER_ADDR", "127.0.0.1")}:{os.environ.get("PORT", "29500")}'
    torchrun = get_args_parser().parse_args([
        f'--nnodes={os.environ.get("NNODES", "1")}',
        f'--node_rank={os.environ.get("NODE_RANK", "0")}',
        f'--master_addr={address.rsplit(":", 1)[0]}', f'--master_port={address.rsplit(":", 1)[1]}',
        f'--nproc_per_node={args.num_procs}',
        '-m', 'fsa_seg.cli', 'test', args.config, '--launcher', 'pytorch', *args.test_args])
    try:
        run(torchrun)
    except ChildFailedError as error:  # failures are keyed by global rank
        return fail(prog, f'process(es) of rank {", ".join(map(str, sorted(error.failures)))} '
                          'failed (their messages are above)')
    except SignalException as error:  # Ctrl-C (or a kill): torchrun stopped the processes
        say(f'{prog}: interrupted ({error.sigval.name}); the same command with --resume '
            'goes on')
        return 128 + int(error.sigval)
    except DistNetworkError as error:  # the rendezvous: most often a port in use
        return fail(prog, f'the processes cannot meet at {address} ({one_line(error)}); if '
                          'another run uses that port, choose another: PORT=29501 ...')
    return 0
