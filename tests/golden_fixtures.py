"""The SCLIP-family golden fixtures (tests/fixtures/resclip_tiny.pt, scclip_tiny.pt; keys in the
README there) as the segmentor tests use them: the tiny CLIP they were made with, in open_clip's
terms; a segmentor carrying their weights and text; their normalised image."""
import torch
from mmseg.registry import MODELS


def tiny_clip_cfg(fx):
    """The fixture's CLIP in open_clip's terms (QuickGELU, as OpenAI's), float64."""
    c = fx['clip_cfg']
    return dict(arch=dict(embed_dim=c['output_dim'], vision_cfg=dict(
        image_size=c['input_resolution'], patch_size=c['patch_size'], width=c['width'],
        layers=c['layers'], head_width=c['width'] // c['heads'], mlp_ratio=4.0),
        text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)),
        quick_gelu=True, random_init=True, precision='fp64')


def build_with_fixture_weights(cfg, fx):
    """The segmentor of cfg with the fixture's image weights (float64) and text embeddings."""
    model = MODELS.build(cfg)
    model.clip.visual.load_state_dict({k: v.double() for k, v in fx['clip_state_dict'].items()})
    model.set_query_embeddings(fx['text_features'])
    return model


def model_input(fx):
    """The fixture's image as the data preprocessor gives it: (1, 3, H, W), float64."""
    mean = torch.tensor(fx['norm_mean'], dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(fx['norm_std'], dtype=torch.float64).view(3, 1, 1)
    return ((fx['image_uint8'].double() - mean) / std)[None]
