# DINO ViT-B/16 through timm.
vfm = dict(type='TimmVFM', name='dino_vitb16')
