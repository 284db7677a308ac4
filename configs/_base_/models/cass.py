# CASS (CVPR 2025): CLIP key-key attention distilled from DINO ViT-B/8's key graphs, text adapted
# per crop (fsa_seg/models/segmentors/cass.py). The official code pairs DINO-B/8's 12 heads with
# CLIP ViT-B/16's, its only backbone. Per-benchmark settings: configs/_base_/cass/.
# clip and plugin are filled in by the leaves; they exist here so that a config inheriting this
# one can replace them with `_delete_=True`.
model = dict(type='CASS', clip=dict(type='OpenCLIP'), vfm=dict(type='TimmVFM', name='dino_vitb8'),
             plugin=dict(), templates='openai_imagenet', logit_scale=40.0, gaussian_std=5.0,
             svd_seed=0)
