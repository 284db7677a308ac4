"""``fsa-seg convert-coco-object``: COCO-Object label maps from COCO-Stuff164k's raw maps (the
same as ``tools/dataset_converters/coco_object.py``)."""
import argparse

from .arguments import add_debug
from .errors import fail

DESCRIPTION = """\
Write annotations/<split>/<id>_instanceTrainIds.png (COCO-Object: background + the 80 things)
next to COCO-Stuff164k's raw <id>.png maps, so that the COCO-Object configs read images and
labels from the COCO-Stuff164k folder. Re-running skips maps that are up to date (data/README.md
in the repository describes the layout)."""


def add_converter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('coco_stuff_root', help='COCO-Stuff164k root (holds annotations/val2017)')
    parser.add_argument('--splits', nargs='+', default=['val2017'],
                        help='annotation folders to convert (default: val2017)')
    parser.add_argument('--unlabeled-to-background', action='store_true',
                        help='make unlabeled pixels background (0) instead of ignored (255), '
                             "as GroupViT's converter used by the published numbers does")
    parser.add_argument('--force', action='store_true', help='rewrite up-to-date outputs too')
    add_debug(parser)
    parser.set_defaults(run=run_convert)


def add_parsers(commands) -> None:
    add_converter_arguments(commands.add_parser(
        'convert-coco-object', help='prepare COCO-Object from COCO-Stuff164k',
        description=DESCRIPTION))


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The arguments as a command of their own (``tools/dataset_converters/coco_object.py``)."""
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    add_converter_arguments(parser)
    return parser


def run_convert(args: argparse.Namespace, prog: str) -> int:
    from ..datasets.converters import convert_coco_object
    try:
        counts = convert_coco_object(args.coco_stuff_root, splits=args.splits,
                                     ignore_to_background=args.unlabeled_to_background,
                                     force=args.force)
    except (OSError, ValueError) as error:  # a missing folder, an unreadable or wrong map
        if args.debug:
            raise
        return fail(prog, str(error))
    print(f"COCO-Object: {counts['written']} label maps written, "
          f"{counts['skipped']} already up to date.")
    return 0
