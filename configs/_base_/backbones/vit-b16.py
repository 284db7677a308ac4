# CLIP ViT-B/16, OpenAI weights (trained with QuickGELU).
clip = dict(model_name='ViT-B-16', pretrained='openai', quick_gelu=True)
