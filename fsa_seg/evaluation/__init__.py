from .journal import JournalError
from .metrics import AnnotationError, PerClassIoUMetric

__all__ = ['AnnotationError', 'JournalError', 'PerClassIoUMetric']
