"""A command's own lines on stderr: each in one write, so that processes sharing a pipe
(dist-test's ranks) never put two messages on one line."""
import sys
from types import SimpleNamespace

from fsa_seg.cli.errors import INTERRUPTED, fail, run_guarded, warn


class Writes:
    """A stream that records each write."""

    def __init__(self):
        self.writes = []

    def write(self, text):
        self.writes.append(text)
        return len(text)

    def flush(self):
        pass


def test_every_line_is_one_write(monkeypatch):
    stderr = Writes()
    monkeypatch.setattr(sys, 'stderr', stderr)
    assert fail('fsa-seg test', 'no such config') == 1
    warn('fsa-seg test', 'fp16 on the CPU')

    def interrupted(args, prog):
        raise KeyboardInterrupt
    assert run_guarded(interrupted, SimpleNamespace(debug=False), 'fsa-seg test') == INTERRUPTED
    assert stderr.writes == ['fsa-seg test: error: no such config\n',
                             'fsa-seg test: warning: fp16 on the CPU\n',
                             'fsa-seg test: interrupted\n']
