# CLIP ViT-L/14, OpenAI weights (trained with QuickGELU).
clip = dict(model_name='ViT-L-14', pretrained='openai', quick_gelu=True)
