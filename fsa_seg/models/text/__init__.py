from .classifier import (
                         TextEncoder,
                         cache_key,
                         cached_query_embeddings,
                         default_cache_dir,
                         embed_queries,
)
from .templates import OPENAI_IMAGENET_TEMPLATES, TEMPLATE_SETS, resolve_templates
from .vocabulary import (
                         Vocabulary,
                         VocabularyError,
                         bundled_vocabularies,
                         load_vocabulary,
                         read_class_names,
)

__all__ = [
    'TextEncoder', 'cache_key', 'cached_query_embeddings', 'default_cache_dir', 'embed_queries',
    'OPENAI_IMAGENET_TEMPLATES', 'TEMPLATE_SETS', 'resolve_templates', 'Vocabulary',
    'VocabularyError', 'bundled_vocabularies', 'load_vocabulary', 'read_class_names'
]
