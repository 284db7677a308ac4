from .wrapper import InferenceWrapper

__all__ = ['InferenceWrapper']
