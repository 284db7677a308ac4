# ResCLIP (CVPR 2025) over NACLIP: residual cross-correlation attention from trunk blocks 5-8 and
# semantic feedback refinement (fsa_seg/models/segmentors/resclip.py). The official code's
# backbones: OpenAI ViT-B/16 and ViT-L/14, with the same block indices. Per-benchmark settings
# (τ, λ of both mixes, the first segmentation's threshold): configs/_base_/resclip/.
model = dict(type='ResCLIP', templates='openai_imagenet', logit_scale=40.0, gaussian_std=5.0,
             rcs_layers=(5, 6, 7, 8), delete_same_entity=True,
             sfr_refine=dict(type='PAMR', steps=10, dilations=(8, 16)))
