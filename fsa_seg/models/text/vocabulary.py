"""Vocabularies: classes, each with one or more synonyms (queries).

Class-name files hold one class per line, synonyms on the same line separated by ``;``.
Blank lines and surrounding whitespace are ignored. Bundled files are addressed by their stem
(``'voc21'``), any other file by its path.
"""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple, Union

CLASS_NAMES_DIR = Path(__file__).resolve().parents[2] / 'class_names'
VocabularySpec = Union[str, os.PathLike, Sequence[Union[str, Sequence[str]]], 'Vocabulary']


class VocabularyError(ValueError):
    """A vocabulary or class-name file that cannot be used."""


@dataclass(frozen=True)
class Vocabulary:
    """Classes (tuples of synonyms); the first synonym names the class."""
    classes: Tuple[Tuple[str, ...], ...]

    def __post_init__(self):
        if not self.classes:
            raise VocabularyError('the vocabulary is empty')
        for index, synonyms in enumerate(self.classes):
            if not synonyms or any(not name.strip() for name in synonyms):
                raise VocabularyError(f'class {index} has an empty name: {synonyms!r}')

    @property
    def class_names(self) -> List[str]:
        return [synonyms[0] for synonyms in self.classes]

    @property
    def queries(self) -> List[str]:
        """Every synonym, class by class: the rows of the text embedding matrix."""
        return [name for synonyms in self.classes for name in synonyms]

    @property
    def query_to_class(self) -> List[int]:
        return [index for index, synonyms in enumerate(self.classes) for _ in synonyms]

    def __len__(self) -> int:
        return len(self.classes)


def parse_class_line(line: str, where: str) -> Tuple[str, ...]:
    synonyms = tuple(name.strip() for name in line.split(';'))
    if any(not name for name in synonyms):
        raise VocabularyError(f'{where}: empty class name in {line.strip()!r}')
    return synonyms


def read_class_names(path: Union[str, os.PathLike]) -> Vocabulary:
    path = Path(path)
    if not path.is_file():
        raise VocabularyError(f'class-name file not found: {path}')
    try:
        lines = path.read_text(encoding='utf-8').splitlines()
    except UnicodeDecodeError as error:
        raise VocabularyError(f'{path}: not UTF-8 text ({error})') from error
    classes = tuple(parse_class_line(line, f'{path}:{number}')
                    for number, line in enumerate(lines, start=1) if line.strip())
    if not classes:
        raise VocabularyError(f'{path}: no class names (the file is empty)')
    return Vocabulary(classes)


def bundled_vocabularies() -> List[str]:
    return sorted(p.stem for p in CLASS_NAMES_DIR.glob('*.txt'))


def load_vocabulary(spec: VocabularySpec) -> Vocabulary:
    """A bundled name (``'voc21'``), a class-name file, or a list of classes (each a string with
    ``;``-separated synonyms or a list of synonyms)."""
    if isinstance(spec, Vocabulary):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        bundled = CLASS_NAMES_DIR / f'{spec}.txt'
        if isinstance(spec, str) and os.sep not in spec and bundled.is_file():
            return read_class_names(bundled)
        if Path(spec).is_file():
            return read_class_names(spec)
        raise VocabularyError(f'vocabulary {str(spec)!r} is neither a bundled vocabulary '
                              f'{bundled_vocabularies()} nor an existing class-name file')
    classes = []
    for index, entry in enumerate(spec):
        where = f'vocabulary entry {index}'
        if isinstance(entry, str):
            classes.append(parse_class_line(entry, where))
        else:
            classes.append(parse_class_line(';'.join(entry), where))
    if not classes:
        raise VocabularyError('the vocabulary is empty')
    return Vocabulary(tuple(classes))
