import open_clip
import pytest
import torch

from fsa_seg.models.text import (
    VocabularyError,
    bundled_vocabularies,
    load_vocabulary,
    read_class_names,
)

# The paper's benchmarks' class counts (written out; a new benchmark is checked against its
# dataset class in tests/datasets/test_benchmark_configs.py instead).
PAPER_CLASSES = dict(voc21=21, context60=60, coco_object=81, voc20=20, context59=59,
                     coco_stuff164k=171, cityscapes=19, ade20k=150)


def test_file_with_synonyms_blank_lines_and_trailing_whitespace(tmp_path):
    path = tmp_path / 'names.txt'
    path.write_bytes(b'sky; cloud  \r\n\r\n  person; man;woman\r\ncar\t\n\n')
    vocab = read_class_names(path)
    assert vocab.classes == (('sky', 'cloud'), ('person', 'man', 'woman'), ('car',))
    assert vocab.class_names == ['sky', 'person', 'car']
    assert vocab.queries == ['sky', 'cloud', 'person', 'man', 'woman', 'car']
    assert vocab.query_to_class == [0, 0, 1, 1, 1, 2]


def test_a_byte_order_mark_is_not_part_of_the_first_name(tmp_path):
    """Windows editors save UTF-8 with a BOM (EF BB BF) in front of the first line."""
    path = tmp_path / 'names.txt'
    path.write_bytes(b'\xef\xbb\xbfsky\ntree; bush\n')
    assert read_class_names(path).classes == (('sky',), ('tree', 'bush'))


@pytest.mark.parametrize('spec, message', [
    (None, 'a list of class names; got NoneType'), ({'sky': 1}, 'got dict'),
    (['sky', 3], 'entry 1: a class is a string .* got 3'),
    (['sky', ['tree', None]], r"entry 1: .* got \['tree', None\]")])
def test_what_is_not_a_list_of_names_is_refused_in_words(spec, message):
    with pytest.raises(VocabularyError, match=message):
        load_vocabulary(spec)


def test_empty_file_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / 'empty.txt'
    path.write_text('\n  \n')
    with pytest.raises(VocabularyError, match='empty.txt.*empty'):
        read_class_names(path)


@pytest.mark.parametrize('line', ['cat;;dog', 'cat; ', ' ;cat'])
def test_empty_name_is_an_error_naming_file_and_line(tmp_path, line):
    path = tmp_path / 'bad.txt'
    path.write_text(f'sky\n\n{line}\n')
    with pytest.raises(VocabularyError, match=r'bad.txt:3'):
        read_class_names(path)


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(VocabularyError, match='not found'):
        read_class_names(tmp_path / 'nope.txt')
    path = tmp_path / 'latin1.txt'
    path.write_bytes(b'caf\xe9\n')
    with pytest.raises(VocabularyError, match='UTF-8'):
        read_class_names(path)


def test_vocabulary_from_list_name_or_path(tmp_path):
    assert load_vocabulary(['cat', 'dog; puppy', ['grass', 'lawn']]).classes == (
        ('cat', ), ('dog', 'puppy'), ('grass', 'lawn'))
    with pytest.raises(VocabularyError, match='empty'):
        load_vocabulary([])
    with pytest.raises(VocabularyError, match='entry 1'):
        load_vocabulary(['cat', ''])
    with pytest.raises(VocabularyError, match='neither a bundled'):
        load_vocabulary('no_such_vocabulary')
    path = tmp_path / 'mine.txt'
    path.write_text('a\nb\n')
    assert load_vocabulary(str(path)).class_names == ['a', 'b']


@pytest.mark.parametrize('name', sorted(PAPER_CLASSES))
def test_bundled_vocabularies_have_the_benchmarks_class_counts(name):
    assert name in bundled_vocabularies()
    assert len(load_vocabulary(name)) == PAPER_CLASSES[name]


def test_voc21_background_is_the_26_stuff_words():
    background = load_vocabulary('voc21').classes[0]
    assert len(background) == 26 and background[0] == 'sky' and background[-1] == 'fence'


def test_sclip_style_files_separate_synonyms_with_commas(tmp_path):
    path = tmp_path / 'cls_voc21.txt'  # as SCLIP ships its class-name files
    path.write_text('sky, wall, tree\naeroplane\nbicycle\nperson, person in shirt\n')
    vocab = load_vocabulary(str(path))
    assert vocab.classes == (('sky', 'wall', 'tree'), ('aeroplane',), ('bicycle',),
                             ('person', 'person in shirt'))
    # a ";" anywhere makes ";" the separator: commas then belong to the names
    path.write_text('sky; cloud\nwall, brick\n')
    assert load_vocabulary(str(path)).classes == (('sky', 'cloud'), ('wall, brick',))


@pytest.mark.parametrize('spec,message', [
    (['sky', 'tree', 'Sky'], r"'Sky' appears in classes 0 and 2"),
    (['sky; cloud', 'house', 'cloud'], r"'cloud' appears in classes 0 and 2"),
    (['sky; sky', 'tree'], r"'sky' appears twice in class 0"),
    (['house; building', 'tree; building  '], r"'building' appears in classes 0 and 1"),
])
def test_a_users_duplicate_names_are_refused(spec, message):
    with pytest.raises(VocabularyError, match=message + '.*can never win'):
        load_vocabulary(spec)


@pytest.mark.parametrize('first,second', [('café', 'cafe\u0301'),  # NFC and NFD
                                          ('fish & chips', 'fish &amp chips'),  # HTML
                                          ('sea  lion', 'Sea Lion')])
def test_names_written_apart_that_clip_reads_alike_are_refused(first, second):
    """The same tokens give the same text embedding, however the names were written."""
    assert torch.equal(open_clip.tokenize([first]), open_clip.tokenize([second]))
    with pytest.raises(VocabularyError, match=r'appears in classes 0 and 1.*can never win'):
        load_vocabulary([first, second])


def test_a_users_one_class_vocabulary_is_refused(tmp_path):
    with pytest.raises(VocabularyError, match="at least two classes, got 1 .*'sky; tree; road'"):
        load_vocabulary(['sky; tree; road'])
    path = tmp_path / 'one.txt'
    path.write_text('cat; kitten\n')
    with pytest.raises(VocabularyError, match=r'one.txt: a vocabulary needs at least two'):
        load_vocabulary(str(path))
    path.write_text('cat\ndog\ncat\n')
    with pytest.raises(VocabularyError, match=r"one.txt: 'cat' appears in classes 0 and 2"):
        load_vocabulary(str(path))


def test_bundled_vocabularies_keep_the_official_lists_repeats_included():
    coco = load_vocabulary('coco_object')  # "bed": a background synonym and class 60
    assert 'bed' in coco.classes[0] and coco.classes[60] == ('bed',)
    assert coco.queries.count('bed') == 2


@pytest.mark.parametrize('name', ['voc21', 'coco_object'])
def test_stuff_word_background_is_displayed_as_background(name):
    vocab = load_vocabulary(name)
    assert vocab.class_names[0] == 'background'
    assert vocab.queries[0] == 'sky' and 'background' not in vocab.queries  # queried as it is
    assert vocab.class_names[1] == vocab.classes[1][0]


def test_other_vocabularies_are_named_by_their_first_synonym():
    assert load_vocabulary('context60').class_names[:2] == ['background', 'aeroplane']
    assert load_vocabulary(['house; building', 'tree']).class_names == ['house', 'tree']
