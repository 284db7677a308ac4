"""``fsa-seg compare results.json ...``: our mIoU next to the published ones."""
import argparse

from .arguments import add_debug


def add_parsers(commands) -> None:
    parser = commands.add_parser(
        'compare', help='our mIoU next to the published numbers',
        description='Print the mIoU of results JSONs written by fsa-seg test --out next to the '
                    'published mIoU of the same method, backbone, proxy and benchmark (the '
                    'table ships with fsa-seg; each number with its source).')
    parser.add_argument('results', nargs='+', metavar='RESULTS_JSON')
    add_debug(parser)
    parser.set_defaults(run=run_compare)


def run_compare(args: argparse.Namespace, prog: str) -> int:
    from ..analysis.published import compare
    print('\n\n'.join(compare(path) for path in args.results))
    return 0
