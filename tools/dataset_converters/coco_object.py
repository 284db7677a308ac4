"""Convert COCO-Stuff164k's raw label maps into COCO-Object label maps (81 classes).

Writes ``annotations/<split>/<id>_instanceTrainIds.png`` next to the raw ``<id>.png`` maps, so
the COCO-Object config reads images and labels from the COCO-Stuff164k folder. Re-running skips
maps that are up to date. See data/README.md and ``fsa_seg.datasets.converters``.

    python tools/dataset_converters/coco_object.py data/coco_stuff164k
"""
import argparse

from fsa_seg.datasets.converters import convert_coco_object


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('coco_stuff_root', help='COCO-Stuff164k root (holds annotations/val2017)')
    parser.add_argument('--splits', nargs='+', default=['val2017'],
                        help='annotation folders to convert (default: val2017)')
    parser.add_argument('--unlabeled-to-background', action='store_true',
                        help='make unlabeled pixels background (0) instead of ignored (255), '
                        'as GroupViT\'s converter used by the published numbers does')
    parser.add_argument('--force', action='store_true', help='rewrite up-to-date outputs too')
    return parser.parse_args()


def main():
    args = parse_args()
    counts = convert_coco_object(
        args.coco_stuff_root,
        splits=args.splits,
        ignore_to_background=args.unlabeled_to_background,
        force=args.force)
    print(f"COCO-Object: {counts['written']} label maps written, "
          f"{counts['skipped']} already up to date.")


if __name__ == '__main__':
    main()
