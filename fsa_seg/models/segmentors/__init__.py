from .base import CLIP_PREPROCESSOR, TrainingFreeSegmentor
from .cass import CASS
from .clip_baselines import NACLIP, SCLIP, ClearCLIP, CLIPSegmentor, MaskCLIP, VanillaCLIP
from .last_block import ATTENTIONS, LastBlock, register_attention, register_fused_attention
from .proxyclip import ProxyCLIP, proxy_attention
from .resclip import ResCLIP
from .scclip import SCCLIP

__all__ = [
    'CLIP_PREPROCESSOR', 'TrainingFreeSegmentor', 'CLIPSegmentor', 'ClearCLIP', 'MaskCLIP',
    'NACLIP', 'SCLIP', 'VanillaCLIP', 'ATTENTIONS', 'LastBlock', 'register_attention',
    'register_fused_attention', 'ProxyCLIP', 'proxy_attention', 'CASS', 'ResCLIP', 'SCCLIP'
]
