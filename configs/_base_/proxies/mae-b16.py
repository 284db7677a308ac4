# MAE ViT-B/16 through timm; built at the slide crop size (leaf configs set input_size).
vfm = dict(type='TimmVFM', name='mae_vitb16')
proxy_fsa_lamda = 4.5  # FSA's λ with the MAE proxy, for any backbone
