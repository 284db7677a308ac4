"""Arguments shared by the commands."""
import argparse

from mmengine.config import DictAction


class CfgOptions(DictAction):
    """mmengine's ``--cfg-options KEY=VALUE ...``; a malformed item is an argument error (one
    line and the usage), not a traceback."""

    def __call__(self, parser, namespace, values, option_string=None):
        for item in values:
            if '=' not in item or not item.split('=', 1)[0]:
                parser.error(f'{option_string}: expected KEY=VALUE, got {item!r}')
        super().__call__(parser, namespace, values, option_string)


def add_cfg_options(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptions, metavar='KEY=VALUE',
                        help=help)


def add_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--debug', action='store_true',
                        help='show the traceback of an error instead of one line')
