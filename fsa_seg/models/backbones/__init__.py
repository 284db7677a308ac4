from .clip import OpenCLIP, interpolate_pos_embed, tiny_clip_arch

__all__ = ['OpenCLIP', 'interpolate_pos_embed', 'tiny_clip_arch']
