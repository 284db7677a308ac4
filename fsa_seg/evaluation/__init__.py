from .metrics import AnnotationError, PerClassIoUMetric

__all__ = ['AnnotationError', 'PerClassIoUMetric']
