"""Vocabularies: classes, each with one or more synonyms (queries).

One syntax everywhere: a class is a string whose synonyms are separated by ``;`` — one class
per line in a class-name file, one per list item in the API, one per argument on the command
line (``--vocab sky tree "house; building"``). The first synonym names the class. Class-name
files in SCLIP's style (``, `` between synonyms, no ``;`` anywhere in the file) are read too.
Blank lines and surrounding whitespace are ignored. Bundled files are addressed by their stem
(``'voc21'``), any other file by its path.

A user's vocabulary must have at least two classes (one class labels every pixel with it) and
no name twice (the second could never win). The bundled vocabularies are the official lists of
the published results and are kept as they are, repeats included (see the README).
"""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from open_clip.tokenizer import basic_clean, whitespace_clean

CLASS_NAMES_DIR = Path(__file__).resolve().parents[2] / 'class_names'
VocabularySpec = Union[str, os.PathLike, Sequence[Union[str, Sequence[str]]], 'Vocabulary']
# Class 0 of these official lists is the background, queried with stuff words ("sky; wall;
# tree; ..."): displayed as "background" (legends, class names), queried as it is.
BUNDLED_DISPLAY_NAMES: Dict[str, Dict[int, str]] = {'voc21': {0: 'background'},
                                                     'coco_object': {0: 'background'}}


class VocabularyError(ValueError):
    """A vocabulary or class-name file that cannot be used."""


@dataclass(frozen=True)
class Vocabulary:
    """Classes (tuples of synonyms); a class is named by ``names`` where given, else by its
    first synonym."""
    classes: Tuple[Tuple[str, ...], ...]
    names: Optional[Tuple[str, ...]] = None

    def __post_init__(self):
        if not self.classes:
            raise VocabularyError('the vocabulary is empty')
        for index, synonyms in enumerate(self.classes):
            if not synonyms or any(not name.strip() for name in synonyms):
                raise VocabularyError(f'class {index} has an empty name: {synonyms!r}')
        if self.names is not None and len(self.names) != len(self.classes):
            raise VocabularyError(f'{len(self.names)} names for {len(self.classes)} classes')

    @property
    def class_names(self) -> List[str]:
        return list(self.names) if self.names else [synonyms[0] for synonyms in self.classes]

    @property
    def queries(self) -> List[str]:
        """Every synonym, class by class: the rows of the text embedding matrix."""
        return [name for synonyms in self.classes for name in synonyms]

    @property
    def query_to_class(self) -> List[int]:
        return [index for index, synonyms in enumerate(self.classes) for _ in synonyms]

    def __len__(self) -> int:
        return len(self.classes)


def parse_class(text: str, where: str, separator: str = ';') -> Tuple[str, ...]:
    """``'house; building'`` → ``('house', 'building')``."""
    synonyms = tuple(name.strip() for name in text.split(separator))
    if any(not name for name in synonyms):
        raise VocabularyError(f'{where}: empty class name in {text.strip()!r}')
    return synonyms


def read_class_names(path: Union[str, os.PathLike]) -> Vocabulary:
    """A class-name file: one class per line, synonyms separated by ``;`` (or, in a file
    without any ``;``, by ``,`` as SCLIP's files have them)."""
    path = Path(path)
    if not path.is_file():
        raise VocabularyError(f'class-name file not found: {path}')
    try:
        lines = path.read_text(encoding='utf-8-sig').splitlines()  # a BOM is no name's part
    except UnicodeDecodeError as error:
        raise VocabularyError(f'{path}: not UTF-8 text ({error})') from error
    separator = ';' if any(';' in line for line in lines) else ','
    classes = tuple(parse_class(line, f'{path}:{number}', separator)
                    for number, line in enumerate(lines, start=1) if line.strip())
    if not classes:
        raise VocabularyError(f'{path}: no class names (the file is empty)')
    return Vocabulary(classes)


def bundled_vocabularies() -> List[str]:
    return sorted(p.stem for p in CLASS_NAMES_DIR.glob('*.txt'))


def _key(name: str) -> str:
    """Names CLIP cannot tell apart: its tokenizer fixes the text's unicode (ftfy: NFC),
    unescapes HTML entities, lower-cases and splits on whitespace."""
    return whitespace_clean(basic_clean(name)).lower()


def check_user_vocabulary(vocabulary: Vocabulary, where: str) -> Vocabulary:
    """At least two classes and no name twice (in any class); returns the vocabulary."""
    if len(vocabulary) < 2:
        raise VocabularyError(
            f'{where}: a vocabulary needs at least two classes, got {len(vocabulary)} '
            f'({"; ".join(vocabulary.classes[0])!r}): with one class every pixel gets it. '
            'A class is one item (one line, one argument) whose synonyms are separated by ";"')
    first: Dict[str, int] = {}
    for index, synonyms in enumerate(vocabulary.classes):
        for name in synonyms:
            earlier = first.setdefault(_key(name), index)
            if earlier != index or synonyms.count(name) > 1:
                where_else = 'twice in class' if earlier == index else f'in classes {earlier} and'
                raise VocabularyError(
                    f'{where}: {name!r} appears {where_else} {index}: the same name gets the '
                    'same text embedding, so one of them can never win. Give each name once')
    return vocabulary


def load_vocabulary(spec: VocabularySpec) -> Vocabulary:
    """A bundled name (``'voc21'``), a class-name file, or a list of classes (each a string with
    ``;``-separated synonyms or a list of synonyms). Files and lists are checked
    (:func:`check_user_vocabulary`); bundled vocabularies are the official lists as they are."""
    if isinstance(spec, Vocabulary):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        bundled = CLASS_NAMES_DIR / f'{spec}.txt'
        if isinstance(spec, str) and os.sep not in spec and bundled.is_file():
            vocabulary = read_class_names(bundled)
            display = BUNDLED_DISPLAY_NAMES.get(spec, {})
            names = tuple(display.get(i, name) for i, name in enumerate(vocabulary.class_names))
            return Vocabulary(vocabulary.classes, names if display else None)
        if Path(spec).is_file():
            return check_user_vocabulary(read_class_names(spec), str(spec))
        raise VocabularyError(f'vocabulary {str(spec)!r} is neither a bundled vocabulary '
                              f'{bundled_vocabularies()} nor an existing class-name file')
    if not isinstance(spec, Iterable) or isinstance(spec, (bytes, Mapping)):
        raise VocabularyError('a vocabulary is a bundled name, a class-name file or a list of '
                              f'class names; got {type(spec).__name__}')
    classes = []
    for index, entry in enumerate(spec):
        where = f'vocabulary entry {index}'
        if isinstance(entry, Sequence) and not isinstance(entry, str) \
                and all(isinstance(name, str) for name in entry):
            entry = ';'.join(entry)
        if not isinstance(entry, str):
            raise VocabularyError(f'{where}: a class is a string (synonyms separated by ";") or '
                                  f'a list of synonyms; got {entry!r}')
        classes.append(parse_class(entry, where))
    if not classes:
        raise VocabularyError('the vocabulary is empty')
    return check_user_vocabulary(Vocabulary(tuple(classes)), 'vocabulary')
