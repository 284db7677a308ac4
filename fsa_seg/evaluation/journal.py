"""The evaluation journal: each scored image's areas, written as it is scored, so that an
evaluation stopped by Ctrl-C, a crash or a bad file continues where it stopped (``--resume``).

Each process (rank) appends to its own file in the work dir,
``scored_images.<fingerprint>.rank<R>.jsonl``, named by the fingerprint of the settings a number
depends on (model, dataset, pipeline, seed, device, library versions), so that runs of other
settings sharing a work dir never touch it: a header line with the settings and their
fingerprint, then one JSON line per image (its path, the four per-class areas of mmseg's metric,
the annotation's problem and the undefined pixels). A line cut short by the interruption is
ignored. A new (not resumed) run of the same settings starts their files afresh.

A resumed run takes from the journal only what :class:`Resumption` keeps: the images of its
dataset now, whose annotation was good.
"""
import glob
import hashlib
import json
import logging
import os
import os.path as osp
import re
from typing import Dict, Iterable, List, Optional, Sequence

import torch
from mmengine.dist import get_rank, get_world_size
from mmengine.logging import print_log

FILE_NAME = re.compile(r'scored_images\.([0-9a-f]{16})\.rank(\d+)\.jsonl')


class JournalError(ValueError):
    """A journal that cannot be resumed: made with other settings, or unreadable."""


def journal_path(folder: str, header: dict, rank: int) -> str:
    return osp.join(folder, f'scored_images.{header["fingerprint"][:16]}.rank{rank}.jsonl')


def journal_files(folder: str, header: Optional[dict] = None) -> List[str]:
    """The journal files in ``folder``: of the settings of ``header``, or of any."""
    names = {path: FILE_NAME.fullmatch(osp.basename(path))
             for path in glob.glob(osp.join(glob.escape(folder), '*.jsonl'))}
    return sorted(path for path, name in names.items() if name and (
        header is None or name.group(1) == header['fingerprint'][:16]))


def differing_keys(old, new, depth: int = 2, prefix: str = '') -> List[str]:
    """Dotted keys whose values differ between two settings dicts, down to ``depth`` levels."""
    if depth == 0 or not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [prefix.rstrip('.') or 'settings']
    return [key for name in sorted(set(old) | set(new))
            for key in differing_keys(old.get(name), new.get(name), depth - 1,
                                      f'{prefix}{name}.')]


def journal_header(settings: dict) -> dict:
    """The first line of a journal file: the settings (as JSON keeps them) and their
    fingerprint."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return dict(fingerprint=hashlib.sha256(text.encode('utf-8')).hexdigest(),
                settings=json.loads(text))


def load_journal(folder: str, header: dict) -> Dict[str, dict]:
    """Every image scored in ``folder``'s journal files under the settings of ``header`` (see
    :func:`journal_header`): path → line; none if ``folder`` has no journal. Raises
    :class:`JournalError` if it only has journals of other settings."""
    files = journal_files(folder, header)
    if not files and journal_files(folder):
        raise JournalError(f'{osp.abspath(folder)} holds journals of other settings only '
                           f'(changed: {_changes_since_newest(folder, header)}); leave out '
                           '--resume to start again, or give another --work-dir')
    entries = {}
    for path in files:
        lines = _read_lines(path)
        if lines and lines[0].get('fingerprint') != header['fingerprint']:
            raise JournalError(f'{path}: not a journal of these settings; remove it')
        entries.update((line['image'], line) for line in lines[1:])
    return entries


class Resumption:
    """What a resumed run takes from a journal's entries (:func:`load_journal`) and what it
    scores, of ``images``: the dataset's images now, after its split and ``indices``, of every
    process (rank 0 adds the entries taken to the results of all processes, each of which
    scored its own shard).

    Only entries of these images are taken: the journal also keeps those of earlier runs on
    another split or subset, which must not count now. Nor entries of a bad annotation: under
    ``--allow-bad-annotations`` it was left out or had pixels ignored, which this run's policy
    may forbid (then it stops, as a new run would), and it may have been fixed since; it is
    scored again, first, so that under the 'error' policy a still bad one stops the run at its
    start.

    Attributes:
        earlier: the entries taken, image → line, in the order of ``images``.
        to_score: the positions in ``images`` to score, those of bad annotations first.
    """

    def __init__(self, entries: Dict[str, dict], images: Sequence[str]):
        self.total = len(images)
        journaled = {image: entries[image] for image in images if image in entries}
        self.earlier = {image: line for image, line in journaled.items()
                        if line.get('problem') is None}
        self.again = [i for i, image in enumerate(images)
                      if image in journaled and image not in self.earlier]
        self.new = [i for i, image in enumerate(images) if image not in journaled]
        self.elsewhere = len(set(entries) - set(images))

    @property
    def to_score(self) -> List[int]:
        return self.again + self.new

    def messages(self, folder: str) -> List[str]:
        """The log lines of the resumed run: the images taken, scored again and left out."""
        rest = (f'scoring the other {len(self.to_score)}' if self.to_score else
                'scoring the last one again to run the evaluation')
        lines = [f'resuming: {len(self.earlier)} of the {self.total} images are scored in '
                 f'{osp.abspath(folder)}; {rest}']
        if self.again:
            lines.append(f'resuming: {len(self.again)} of the journaled images had a bad '
                         "annotation: scored again first, under this run's policy for them")
        if self.elsewhere:
            lines.append(f'resuming: {self.elsewhere} journaled images are not in the dataset '
                         'now (its split or indices changed): left out of the metrics')
        return lines


def _changes_since_newest(folder: str, header: dict) -> str:
    """What differs between ``header``'s settings and those of the newest journal file."""
    newest = max(journal_files(folder), key=osp.getmtime)
    lines = _read_lines(newest)
    old = (lines[0].get('settings') or {}) if lines else {}
    return ', '.join(differing_keys(old, header['settings'])[:4]) or 'the settings'


def _read_text(path: str) -> str:
    try:
        with open(path, encoding='utf-8') as handle:
            return handle.read()
    except OSError as error:
        raise JournalError(f'cannot read {path}: {error.strerror or error}') from error


def _read_lines(path: str) -> List[dict]:
    """The file's JSON lines; the last one may be cut short by the interruption (dropped)."""
    raw = [line for line in _read_text(path).split('\n') if line]
    lines = []
    for number, line in enumerate(raw):
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number < len(raw) - 1:
                raise JournalError(f'{path}, line {number + 1}: not a journal line; remove '
                                   'the file to score its images again') from error
    return lines


def to_line(result: tuple) -> dict:
    """A journal line of one of :class:`PerClassIoUMetric`'s results (four areas, problem,
    undefined pixels, image)."""
    areas = [area.tolist() for area in result[:4]]
    return dict(image=result[6], areas=areas, problem=result[4], undefined=result[5])


def from_line(line: dict) -> tuple:
    """The metric's result back from a journal line; float32 areas, as mmseg's (exact: they are
    pixel counts, written as decimal floats that read back to the same float32)."""
    areas = tuple(torch.tensor(area, dtype=torch.float32) for area in line['areas'])
    return (*areas, line['problem'], line['undefined'], line['image'])


class Journal:
    """One process's journal file (opened on the first write) and the earlier entries.

    Args:
        folder: where the files are (the run's work dir).
        header: :func:`journal_header` of the settings the numbers depend on (see
            ``fsa_seg.apis.testing``); it heads each file.
        earlier: the entries a resumed run takes as scored (:class:`Resumption` of
            :func:`load_journal`, read before the run, which appends to the journal); their
            results are added to those of the images scored now. None for a new run (this
            process's file starts afresh, and rank 0 removes the files of ranks this run does
            not have).
    """

    def __init__(self, folder: str, header: dict, earlier: Optional[Dict[str, dict]] = None):
        self.folder, self.header, self.earlier = folder, dict(header), earlier
        self._handle = None
        self.failed = False

    def write(self, lines: Iterable[dict]) -> None:
        """Append the lines, flushed. A journal that cannot be written (a full disk) is left
        with one warning: the evaluation goes on, it cannot be resumed past that point."""
        if self.failed:
            return
        try:
            if self._handle is None:
                self._handle = self._open()
            for line in lines:
                self._handle.write(json.dumps(line) + '\n')
            self._handle.flush()
        except OSError as error:
            self.failed = True
            print_log(f'WARNING: cannot write the evaluation journal in {self.folder} '
                      f'({error.strerror or error}): the evaluation goes on, but a stop from '
                      'here on cannot be resumed', logger='current', level=logging.WARNING)

    def _open(self):
        rank = get_rank()
        path = journal_path(self.folder, self.header, rank)
        if not self.resume and rank == 0:
            world_size = get_world_size()
            for stale in journal_files(self.folder, self.header):
                if _rank_of(stale) >= world_size:
                    os.remove(stale)
        if self.resume and osp.isfile(path):
            _drop_cut_line(path)
        fresh = not self.resume or not osp.isfile(path) or osp.getsize(path) == 0
        handle = open(path, 'w' if fresh else 'a', encoding='utf-8')
        if fresh:
            handle.write(json.dumps(self.header) + '\n')
        return handle

    @property
    def resume(self) -> bool:
        return self.earlier is not None

    def earlier_results(self, scored_now: Iterable[str]) -> List[tuple]:
        """The results of the images taken from the journal (``earlier``), less those scored
        again now (a resumed run with nothing left scores its last image again)."""
        scored_now = set(scored_now)
        return [from_line(line) for image, line in (self.earlier or {}).items()
                if image not in scored_now]

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _rank_of(path: str) -> int:
    return int(FILE_NAME.fullmatch(osp.basename(path)).group(2))


def _drop_cut_line(path: str) -> None:
    """Truncate a line cut short by the interruption, so that appended lines start afresh."""
    with open(path, 'rb+') as handle:
        data = handle.read()
        if data and not data.endswith(b'\n'):
            handle.truncate(data.rfind(b'\n') + 1)
