"""Check a loaded evaluation split against its official image count.

Published mIoU numbers are averages over the exact official splits (the count sits in each
dataset config as ``split_size``); a partial download or a wrong split file changes the result
silently, hence this check.
"""
from typing import Optional


def check_split_size(num_images: int, expected: int, dataset_name: str) -> Optional[str]:
    """Return a message explaining the mismatch when ``num_images != expected``, else None.

    The caller decides whether to warn or fail (a deliberate subset is legitimate for smoke
    runs).
    """
    if num_images == expected:
        return None
    what = 'fewer' if num_images < expected else 'more'
    return (f'{dataset_name}: found {num_images} images, {what} than the {expected} of the '
            'official evaluation split, so the mIoU is not comparable with published numbers. '
            'Check data_root, the split file and the preparation steps in data/README.md.')
