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
    """Each file's comparison printed as soon as it is made: a bad file later in the list
    stops the command after the comparisons before it."""
    from ..analysis.published import compare
    for index, path in enumerate(args.results):
        print(('\n' if index else '') + compare(path), flush=True)
    return 0
