# OpenCLIP ViT-H/14 trained on LAION-2B.
clip = dict(model_name='ViT-H-14', pretrained='laion2b_s32b_b79k')
