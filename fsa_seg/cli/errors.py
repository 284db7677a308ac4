"""User errors end in one line on stderr and exit status 1; ``--debug`` shows the traceback.

A user error is an exception of the kinds a user's input causes (a config, dataset, weight file,
vocabulary or output folder that cannot be used), raised with a message that names the file
and what to do. Anything else is a bug and keeps its traceback.
"""
import sys
from typing import Callable

INTERRUPTED = 130  # the shell's status for a process ended by SIGINT
FP16_ON_CPU = ('fp16 on the CPU is slow (most CPU kernels have no half-precision version); fp32 '
               'or bf16 run faster there')


def say(line: str) -> None:
    """``line`` on stderr in one write. ``print`` writes a text and its newline apart, and to a
    pipe each goes out at once: the processes of one run (``dist-test``'s ranks) sharing the
    pipe could then put two messages on one line."""
    sys.stderr.write(f'{line}\n')
    sys.stderr.flush()


def fail(prog: str, message: str) -> int:
    say(f'{prog}: error: {message}')
    return 1


def warn(prog: str, message: str) -> None:
    say(f'{prog}: warning: {message}')


def user_errors() -> tuple:
    """The exception types that are user errors (imported late: they pull in torch)."""
    from ..analysis.published import ResultsFileError
    from ..apis.configs import ConfigError, ConfigNotFoundError
    from ..apis.predict import OutputDirError
    from ..datasets import DatasetError
    from ..evaluation import AnnotationError, JournalError
    from ..models.text import VocabularyError
    from ..models.weights import WeightsError
    return (ConfigNotFoundError, ConfigError, DatasetError, AnnotationError, JournalError,
            VocabularyError, WeightsError, OutputDirError, ResultsFileError)


def one_line(error: BaseException) -> str:
    """The error's message on one line. An error raised in a DataLoader worker reaches the main
    process with the worker's traceback as its message: only its last line is the message."""
    from ..apis.configs import plain_message
    message = plain_message(error)
    if 'Original Traceback' in message:
        message = message.strip().splitlines()[-1].split(': ', 1)[-1]
    return ' '.join(message.split())


def run_guarded(command: Callable, args, prog: str) -> int:
    """``command(args, prog)`` → exit status; user errors → one line (re-raised with
    ``args.debug``), Ctrl-C → one line and status 130."""
    try:
        return command(args, prog)
    except KeyboardInterrupt:
        say(f'{prog}: interrupted')
        return INTERRUPTED
    except Exception as error:
        if getattr(args, 'debug', False) or not isinstance(error, user_errors()):
            raise
        return fail(prog, one_line(error))
