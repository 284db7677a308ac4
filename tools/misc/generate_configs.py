"""Write the leaf configs: every baseline × backbone (× proxy) × benchmark, with and without FSA.

Leaves only compose bases (mmengine inheritance); run this after adding a base file:

    python tools/misc/generate_configs.py [--check]
"""
import argparse
import sys
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[2] / 'configs'
BASELINES = ('vanilla_clip', 'maskclip', 'sclip', 'clearclip', 'naclip')
BACKBONES = ('vit-b16', 'vit-l14', 'vit-h14')
PROXIES = ('dino-b8', 'dino-b16', 'dinov2-b14', 'sam-b', 'mae-b16')
BENCHMARKS = ('voc21', 'context60', 'coco_object', 'voc20', 'context59', 'coco_stuff164k',
              'cityscapes', 'ade20k')
# Proxies whose model is built at the slide crop size.
CROP_SIZED_PROXIES = ('mae-b16',)
# Proxies that set FSA's λ themselves, for any backbone.
PROXIES_WITH_LAMDA = ('mae-b16',)
# The backbones ResCLIP's official code runs (OpenAI CLIP).
RESCLIP_BACKBONES = ('vit-b16', 'vit-l14')
# SC-CLIP's backbones (its official layer indices), and the benchmarks where a backbone has its
# own post-processing (configs/_base_/scclip/<benchmark>_<backbone>.py).
SCCLIP_BACKBONES = ('vit-b16', 'vit-l14')
SCCLIP_BACKBONE_PROTOCOLS = (('vit-l14', 'voc21'), ('vit-l14', 'coco_object'))


def base_list(items):
    return '_base_ = [\n' + ''.join(f"    '{item}',\n" for item in items) + ']\n'


def baseline_leaf(baseline, backbone, benchmark):
    return base_list([f'../_base_/models/{baseline}.py', f'../_base_/backbones/{backbone}.py',
                      f'../_base_/datasets/{benchmark}.py', '../_base_/default_runtime.py'
                      ]) + 'model = dict(clip=_base_.clip, **_base_.protocol)\n'


def proxyclip_leaf(backbone, proxy, benchmark):
    vfm = ("dict(_base_.vfm, input_size=_base_.protocol['test_cfg']['crop_size'])"
           if proxy in CROP_SIZED_PROXIES else '_base_.vfm')
    return base_list(['../_base_/models/proxyclip.py', f'../_base_/backbones/{backbone}.py',
                      f'../_base_/proxies/{proxy}.py', f'../_base_/datasets/{benchmark}.py',
                      '../_base_/default_runtime.py']) + \
        f'model = dict(clip=_base_.clip, vfm={vfm}, **_base_.protocol)\n'


def cass_leaf(benchmark):
    """CASS: CLIP ViT-B/16 (its only backbone) with CASS's own per-benchmark protocol."""
    return base_list(['../_base_/models/cass.py', '../_base_/backbones/vit-b16.py',
                      f'../_base_/cass/{benchmark}.py', '../_base_/default_runtime.py'
                      ]) + 'model = dict(clip=_base_.clip, **_base_.protocol)\n'


def resclip_leaf(backbone, benchmark):
    """ResCLIP over NACLIP with ResCLIP's own per-benchmark protocol."""
    return base_list(['../_base_/models/resclip.py', f'../_base_/backbones/{backbone}.py',
                      f'../_base_/resclip/{benchmark}.py', '../_base_/default_runtime.py'
                      ]) + 'model = dict(clip=_base_.clip, **_base_.protocol)\n'

def scclip_leaf(backbone, benchmark):
    """SC-CLIP: its layer indices for the backbone and its own per-benchmark protocol."""
    protocol = (f'{benchmark}_{backbone}' if (backbone, benchmark) in SCCLIP_BACKBONE_PROTOCOLS
                else benchmark)
    return base_list(['../_base_/models/scclip.py', f'../_base_/backbones/{backbone}.py',
                      f'../_base_/scclip/{backbone}.py', f'../_base_/scclip/{protocol}.py',
                      '../_base_/default_runtime.py']) + \
        'model = dict(clip=_base_.clip, **_base_.scclip_layers, **_base_.protocol)\n'


def fsa_leaf(parent, lamda='_base_.fsa_lamda'):
    return base_list([f'./{parent}', '../_base_/plugins/fsa.py']) + \
        f'model = dict(plugin=dict(_base_.fsa, lamda={lamda}))\n'


def leaves():
    for baseline in BASELINES:
        for backbone in BACKBONES:
            for benchmark in BENCHMARKS:
                name = f'{baseline}_{backbone}_{benchmark}.py'
                yield f'{baseline}/{name}', baseline_leaf(baseline, backbone, benchmark)
                yield (f'{baseline}/{baseline}_fsa_{backbone}_{benchmark}.py', fsa_leaf(name))
    for backbone in BACKBONES:
        for proxy in PROXIES:
            lamda = '_base_.proxy_fsa_lamda' if proxy in PROXIES_WITH_LAMDA else '_base_.fsa_lamda'
            for benchmark in BENCHMARKS:
                name = f'proxyclip_{backbone}_{proxy}_{benchmark}.py'
                yield f'proxyclip/{name}', proxyclip_leaf(backbone, proxy, benchmark)
                yield (f'proxyclip/proxyclip_fsa_{backbone}_{proxy}_{benchmark}.py',
                       fsa_leaf(name, lamda))
    for benchmark in BENCHMARKS:
        yield f'cass/cass_vit-b16_{benchmark}.py', cass_leaf(benchmark)
        yield f'cass/cass_fsa_vit-b16_{benchmark}.py', fsa_leaf(f'cass_vit-b16_{benchmark}.py')
    for backbone in RESCLIP_BACKBONES:
        for benchmark in BENCHMARKS:
            name = f'resclip_{backbone}_{benchmark}.py'
            yield f'resclip/{name}', resclip_leaf(backbone, benchmark)
            yield f'resclip/resclip_fsa_{backbone}_{benchmark}.py', fsa_leaf(name)
    for backbone in SCCLIP_BACKBONES:
        for benchmark in BENCHMARKS:
            name = f'scclip_{backbone}_{benchmark}.py'
            yield f'scclip/{name}', scclip_leaf(backbone, benchmark)
            yield f'scclip/scclip_fsa_{backbone}_{benchmark}.py', fsa_leaf(name)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--check', action='store_true',
                        help='only report leaves that are missing or out of date')
    args = parser.parse_args()
    stale = []
    for relative, text in leaves():
        path = CONFIGS / relative
        if path.is_file() and path.read_text() == text:
            continue
        stale.append(relative)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    verb = 'out of date' if args.check else 'written'
    print(f'{len(stale)} leaf configs {verb}')
    return 1 if args.check and stale else 0


if __name__ == '__main__':
    sys.exit(main())
