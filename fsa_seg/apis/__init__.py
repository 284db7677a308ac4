from .testing import evaluate, load_test_config

__all__ = ['evaluate', 'load_test_config']
