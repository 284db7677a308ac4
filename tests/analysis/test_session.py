"""The summary that ends tools/analysis/gpu_session.sh (fsa_seg/analysis/session.py): the steps
asked for, and only those, each summarised or named as without results."""
from fsa_seg.analysis import session

NO_RESULT = '{}: no result (its output is in steps.log)'
ALL_STEPS = ['plugin', 'proxyclip_fp32', 'proxyclip_fp16', 'proxyclip_graphs', 'cass', 'kernel',
             'e2e', 'e2e_graphs']


def missing(text: str) -> list:
    return [line.split(':')[0] for line in text.splitlines() if 'no result' in line]


def test_only_the_steps_asked_for_are_named_without_results(tmp_path):
    # a step not asked for is not read at all: its file here would not even load
    (tmp_path / 'e2e.json').write_text('{}')
    text = session.summary(str(tmp_path), ['plugin', 'kernel', 'proxyclip_graphs'])
    assert missing(text) == ['plugin', 'proxyclip_graphs', 'kernel']
    assert NO_RESULT.format('kernel') in text.splitlines()


def test_all_steps_are_asked_for_when_none_are_named(tmp_path, capsys):
    assert missing(session.summary(str(tmp_path))) == ALL_STEPS
    session.main([str(tmp_path), ''])  # gpu_session.sh without STEPS
    assert missing(capsys.readouterr().out) == ALL_STEPS
    session.main([str(tmp_path), 'tests kernel'])  # STEPS="tests kernel": tests have no JSON
    assert missing(capsys.readouterr().out) == ['kernel']
