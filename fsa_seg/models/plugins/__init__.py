from .fsa import FSA

__all__ = ['FSA']
