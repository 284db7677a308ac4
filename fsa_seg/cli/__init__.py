"""The ``fsa-seg`` command.

    fsa-seg predict [INPUT ...] [--vocab sky tree "house; building"] ...  segment your images
    fsa-seg test CONFIG [--out results.json] ...                          evaluate (tools/test.py)
    fsa-seg dist-test CONFIG NUM_PROCS [test arguments]                   the same on several GPUs
    fsa-seg configs [PATTERN]                                             list the config names
    fsa-seg config NAME [--dump FILE]                                     export a config
    fsa-seg compare results.json                                          ours vs published mIoU
    fsa-seg convert-coco-object data/coco_stuff164k                       prepare COCO-Object

Run ``fsa-seg COMMAND --help`` for every option. ``tools/test.py``, ``tools/dist_test.sh`` and
``tools/predict.py`` and ``tools/dataset_converters/coco_object.py`` are the same commands for a
checkout.
"""
import argparse
import os
import sys
from typing import Optional, Sequence

from . import compare, configs, convert, predict, testing
from .errors import run_guarded
from .predict import VocabularyArgumentError, parse_vocabulary

__all__ = ['main', 'predict_main', 'test_main', 'convert_coco_object_main', 'parse_vocabulary',
           'VocabularyArgumentError']


def build_parser(prog: str = 'fsa-seg') -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description='Training-free open-vocabulary semantic segmentation with CLIP '
                               'and the FSA plug-in.')
    commands = parser.add_subparsers(dest='command', metavar='COMMAND')
    for module in (predict, testing, configs, compare, convert):
        module.add_parsers(commands)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 1
    return run_guarded(args.run, args, f'fsa-seg {args.command}')


def _standalone(parser: argparse.ArgumentParser, argv, prog: str) -> int:
    args = parser.parse_args(argv)
    return run_guarded(args.run, args, prog)


def predict_main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """Entry of ``tools/predict.py``: the ``fsa-seg predict`` arguments."""
    prog = prog or os.path.basename(sys.argv[0]) or 'predict.py'
    return _standalone(predict.build_parser(prog), argv, prog)


def test_main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """Entry of ``tools/test.py``: the ``fsa-seg test`` arguments."""
    prog = prog or os.path.basename(sys.argv[0]) or 'test.py'
    return _standalone(testing.build_parser(prog), argv, prog)


def convert_coco_object_main(argv: Optional[Sequence[str]] = None,
                             prog: Optional[str] = None) -> int:
    """Entry of ``tools/dataset_converters/coco_object.py``."""
    prog = prog or os.path.basename(sys.argv[0]) or 'coco_object.py'
    return _standalone(convert.build_parser(prog), argv, prog)
