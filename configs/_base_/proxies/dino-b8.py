# DINO ViT-B/8 (default proxy) through timm.
vfm = dict(type='TimmVFM', name='dino_vitb8')
