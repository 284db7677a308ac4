"""Arguments shared by the commands."""
import argparse
from typing import Callable

from mmengine.config import DictAction


class CfgOptions(DictAction):
    """mmengine's ``--cfg-options KEY=VALUE ...``; a malformed item is an argument error (one
    line and the usage), not a traceback."""

    def __call__(self, parser, namespace, values, option_string=None):
        for item in values:
            if '=' not in item or not item.split('=', 1)[0]:
                parser.error(f'{option_string}: expected KEY=VALUE, got {item!r}')
        super().__call__(parser, namespace, values, option_string)


def positive_int(what: str) -> Callable[[str], int]:
    """An argparse ``type``: a whole number of at least 1; the error says it is a positive
    ``what``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f'expected a positive {what}, got {text!r}')
        return value
    return parse


def add_cfg_options(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptions, metavar='KEY=VALUE',
                        help=help)


def add_cuda_graphs(parser: argparse.ArgumentParser) -> None:
    """``--cuda-graphs`` / ``--no-cuda-graphs``, 'auto' without either (the config's choice,
    else graphs where they pay off: fsa_seg.apis.configs.graphs_pay_off)."""
    parser.add_argument('--cuda-graphs', action=argparse.BooleanOptionalAction, default='auto',
                        help='on CUDA, replay each crop batch from a CUDA graph (the same '
                             'outputs, far less time issuing kernels; one capture per batch '
                             'shape). Default: the config\'s model.cuda_graphs, else on where '
                             'the model runs on CUDA, the segmentor can and windows slide')


def add_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--debug', action='store_true',
                        help='show the traceback of an error instead of one line')
