"""Golden outputs of NACLIP's PAMR (pixel-adaptive mask refinement), in float64 on CPU.

Not run in CI. Writes tests/fixtures/pamr_tiny.pt (keys: tests/fixtures/README.md; algorithm:
docs/specs/pamr.md). Usage, from the repository root:

    git --git-dir=<mirror of sinahmr/NACLIP> archive 0cac3a6 | tar -x -C /tmp/naclip
    PYTHONPATH=$PWD python tools/dev/make_pamr_golden.py /tmp/naclip --commit 0cac3a6

The official `pamr.py` (sinahmr/NACLIP @ 0cac3a6; ResCLIP's copy is identical) is imported from
that checkout and run as is, with the settings NACLIP's segmentor uses (`PAMR(10, dilations=(8,
16))`, on the CLIP-normalised image and the raw cosine logits). The one in-memory change: the
module is built and run with float64 as torch's default dtype, so that its shift kernels and the
`torch.empty` buffer it writes the affinities into are float64 (they follow the default dtype,
float32, in the original; NACLIP itself runs PAMR in float32).
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _golden_common import (  # noqa: E402
    default_dtype,
    import_official,
    normalisation_keys,
    normalise,
    parse_generator_args,
    save_fixture,
    voronoi_scene,
)

OFFICIAL, COMMIT = 'sinahmr/NACLIP', '0cac3a651f753b11315ea799cfbfabf79da1bd76'
STEPS, DILATIONS = 10, (8, 16)
HW, N_CLASSES, LOWRES_HW = (32, 48), 4, (8, 12)
SEEDS = dict(scenes=(11, 12), masks=13)


def synthetic_logits(regions: torch.Tensor, n_classes: int, g: torch.Generator) -> torch.Tensor:
    """Cosine-like logits (C, H, W): a region-aligned part (each region favours one class) plus
    smooth and pixel noise, rounded to float32 so that they are stored in float32 exactly."""
    h, w = regions.shape
    favour = torch.randint(0, n_classes, (int(regions.max()) + 1,), generator=g)
    aligned = torch.nn.functional.one_hot(favour[regions], n_classes).permute(2, 0, 1).double()
    coarse = torch.randn(1, n_classes, 4, 6, generator=g, dtype=torch.float64)
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode='bilinear',
                                             align_corners=False)[0]
    pixel = torch.randn(n_classes, h, w, generator=g, dtype=torch.float64)
    return (0.2 + 0.04 * aligned + 0.02 * smooth + 0.01 * pixel).float()


def main():
    args = parse_generator_args(__doc__, OFFICIAL, COMMIT, 'tests/fixtures/pamr_tiny.pt')
    (pamr_mod,) = import_official(args.repo, 'pamr')

    scenes = [voronoi_scene(*HW, n_regions=5, seed=s) for s in SEEDS['scenes']]
    images = torch.stack([s[0] for s in scenes])
    g = torch.Generator().manual_seed(SEEDS['masks'])
    masks = torch.stack([synthetic_logits(s[1], N_CLASSES, g) for s in scenes])
    lowres = torch.nn.functional.interpolate(masks[:1].double(), size=LOWRES_HW, mode='area')
    lowres = lowres.float()
    x = torch.cat([normalise(im) for im in images])

    with default_dtype(torch.float64):
        pamr = pamr_mod.PAMR(STEPS, dilations=DILATIONS).eval()
        refined = pamr(x, masks.double())
        refined_lowres = pamr(x[:1], lowres.double())
    # The official float32 run (what NACLIP does on GPU) and the official module fed float64
    # without the default-dtype change (float32 kernels: conv2d raises).
    pamr32 = pamr_mod.PAMR(STEPS, dilations=DILATIONS).eval()
    refined32 = pamr32(x.float(), masks)
    try:
        pamr32(x, masks.double())
        float64_as_is = 'ran'
    except RuntimeError as e:
        float64_as_is = f'RuntimeError: {str(e).splitlines()[0]}'

    fixture = {
        'source': f'{OFFICIAL}@{COMMIT} pamr.py',
        'steps': STEPS, 'dilations': DILATIONS,
        'image_uint8': images,
        **normalisation_keys(),
        'masks': masks,
        'refined': refined,
        'lowres_masks': lowres,
        'refined_lowres': refined_lowres,
        'noise': dict(float32_vs_float64=(refined32.double() - refined).abs().max().item(),
                      masks_range=(masks.min().item(), masks.max().item()),
                      refined_change=(refined - masks.double()).abs().max().item(),
                      official_module_on_float64_input=float64_as_is),
    }
    save_fixture(fixture, args.out)
    print(fixture['noise'])


if __name__ == '__main__':
    main()
