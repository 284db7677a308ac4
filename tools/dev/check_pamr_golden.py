"""Self-check of tests/fixtures/pamr_tiny.pt against docs/specs/pamr.md (not run in CI).

An independent re-implementation of PAMR (replicate-clamped shifts instead of the official shift
kernels and conv2d), written from the spec, is compared with the official outputs.
Usage: PYTHONPATH=$PWD python tools/dev/check_pamr_golden.py
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _check_common import load, max_abs, normalised_image, pamr, report  # noqa: E402


def main():
    fx = load(os.path.join('tests', 'fixtures', 'pamr_tiny.pt'))
    image = normalised_image(fx)
    steps, dil = fx['steps'], fx['dilations']
    errors = {
        'refined': max_abs(pamr(image, fx['masks'].double(), steps, dil), fx['refined']),
        'refined_lowres': max_abs(pamr(image[:1], fx['lowres_masks'].double(), steps, dil),
                                  fx['refined_lowres']),
    }
    print('PAMR self-check: independent re-implementation vs the official golden outputs')
    ok = report(errors, tol=1e-12)
    ref = fx['refined']
    print(f'  refined range {ref.max() - ref.min():.2e}; deviations:')
    for name, (s, d) in {'9 steps instead of 10': (steps - 1, dil),
                         'dilations (16, 8)': (steps, tuple(reversed(dil))),
                         'dilations (8,)': (steps, dil[:1])}.items():
        print(f'    {name:<24} {max_abs(pamr(image, fx["masks"].double(), s, d), ref):.1e}')
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
