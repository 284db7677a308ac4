"""Check a loaded evaluation split against its official image count.

Published mIoU numbers are averages over the exact official splits (the count sits in each
dataset config as ``split_size``); a partial download, a wrong split file or a subset chosen
with ``test_dataloader.dataset.indices`` changes the result silently, hence this check.
"""
from typing import Optional

NOT_COMPARABLE = 'so the mIoU is not comparable with published numbers.'


def check_split_size(num_images: int, expected: int, dataset_name: str,
                     evaluated: Optional[int] = None) -> Optional[str]:
    """Return a message explaining the mismatch unless the dataset lists the ``expected``
    images and all of them are evaluated, else None.

    Args:
        evaluated: how many of the ``num_images`` the run evaluates (the dataset's ``indices``
            select them, each once); None: all.

    The caller decides whether to warn or fail (a deliberate subset is legitimate for smoke
    runs).
    """
    evaluated = num_images if evaluated is None else evaluated
    indices = 'test_dataloader.dataset.indices selects'
    if num_images == expected:
        # all the official images are there: the subset is the one difference
        return None if evaluated == num_images else (
            f'{dataset_name}: {indices} {evaluated} of the {expected} images of the official '
            f'evaluation split, {NOT_COMPARABLE}')
    what = 'fewer' if num_images < expected else 'more'
    subset = f' ({indices} {evaluated} of them)' if evaluated != num_images else ''
    return (f'{dataset_name}: found {num_images} images{subset}, {what} than the {expected} of '
            f'the official evaluation split, {NOT_COMPARABLE} Check data_root, the split file '
            'and the preparation steps in data/README.md.')
