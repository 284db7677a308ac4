from .base import AttentionPlugin, LogitsFn
from .fsa import FSA

__all__ = ['AttentionPlugin', 'LogitsFn', 'FSA']
