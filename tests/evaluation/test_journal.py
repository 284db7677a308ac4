"""The evaluation journal: what an interrupted tools/test.py run keeps and a resumed one adds."""
import json

import pytest
import torch

from fsa_seg.evaluation import AnnotationError, JournalError, PerClassIoUMetric
from fsa_seg.evaluation import journal as journal_module
from fsa_seg.evaluation.journal import (
    Journal,
    Resumption,
    from_line,
    journal_header,
    journal_path,
    load_journal,
)

from doubles import record_logs

PRED = [[0, 1, 2], [0, 1, 1]]
HEADER = journal_header(dict(model=dict(type='ClearCLIP', prob_thd=0.0), seed=0))


def sample(gt, name):
    return dict(pred_sem_seg=dict(data=torch.tensor([PRED])),
                gt_sem_seg=dict(data=torch.tensor([gt], dtype=torch.uint8)),
                seg_map_path=f'/data/{name}.png', img_path=f'/data/{name}.jpg')


def resumed(folder, header=HEADER, images=None):
    """A resumed run's journal, as tools/test.py makes it: the earlier lines read first, those
    of the dataset's ``images`` taken (default: the journal's, a dataset unchanged)."""
    entries = load_journal(str(folder), header)
    earlier = Resumption(entries, list(entries) if images is None else images).earlier
    return Journal(str(folder), header, earlier)


def metric(folder, resume=False, header=HEADER, images=None, **kwargs):
    metric = PerClassIoUMetric(**kwargs)
    metric.journal = (resumed(folder, header, images) if resume else
                      Journal(str(folder), header))
    metric.dataset_meta = dict(classes=('sky', 'tree', 'road'))
    return metric


def test_a_resumed_metric_adds_the_images_scored_before_it(tmp_path):
    first = metric(tmp_path)
    first.process({}, [sample(PRED, 'a')])                       # all 6 pixels right
    second = metric(tmp_path, resume=True)
    second.process({}, [sample([[0, 1, 2], [0, 2, 1]], 'b')])    # (1, 1) is road, not tree
    metrics = second.compute_metrics(second.results)
    # by hand over both images: sky 4/4; tree ∩ 5, ∪ 6; road ∩ 2, ∪ 3; 11 of 12 pixels right
    assert second.num_images == 2 and second.num_resumed == 1
    assert metrics['aAcc'] == pytest.approx(1100 / 12, abs=0.01)
    assert [second.per_class[c]['IoU'] for c in ('sky', 'tree', 'road')] == pytest.approx(
        [100.0, 500 / 6, 200 / 3])
    fresh = metric(tmp_path)                                     # not resumed: b alone
    fresh.process({}, [sample([[0, 1, 2], [0, 2, 1]], 'b')])
    assert fresh.compute_metrics(fresh.results)['aAcc'] == pytest.approx(500 / 6, abs=0.01)


def test_a_resumed_metric_counts_only_the_images_of_the_dataset_now(tmp_path):
    """The split (or ``indices``) changed since: journaled images it no longer has are not
    counted, whatever they scored."""
    first = metric(tmp_path)
    first.process({}, [sample(PRED, 'a'), sample([[2, 2, 2], [2, 2, 2]], 'gone')])
    second = metric(tmp_path, resume=True, images=['/data/a.jpg', '/data/b.jpg'])
    second.process({}, [sample([[0, 1, 2], [0, 2, 1]], 'b')])
    metrics = second.compute_metrics(second.results)
    # a and b alone, as in the test above: 11 of 12 pixels right (with 'gone': 13 of 18)
    assert second.num_images == 2 and second.num_resumed == 1
    assert metrics['aAcc'] == pytest.approx(1100 / 12, abs=0.01)


def test_what_a_resumed_run_takes_from_the_journal_and_what_it_scores():
    """Of the dataset's images now (a, b, c, d): the good entries taken, the bad annotation
    (c) scored again before the image never scored (d); the entry of 'gone' is left out."""
    good, bad = dict(problem=None), dict(problem=dict(file='c.png', problem='values'))
    entries = {'gone.jpg': good, 'b.jpg': good, 'c.jpg': bad, 'a.jpg': good}
    plan = Resumption(entries, ['a.jpg', 'b.jpg', 'c.jpg', 'd.jpg'])
    assert list(plan.earlier) == ['a.jpg', 'b.jpg'] and plan.to_score == [2, 3]
    assert plan.messages('/work') == [
        'resuming: 2 of the 4 images are scored in /work; scoring the other 2',
        "resuming: 1 of the journaled images had a bad annotation: scored again first, under "
        "this run's policy for them",
        'resuming: 1 journaled images are not in the dataset now (its split or indices '
        'changed): left out of the metrics']
    done = Resumption({'a.jpg': good}, ['a.jpg'])
    assert done.to_score == [] and done.messages('/work') == [
        'resuming: 1 of the 1 images are scored in /work; scoring the last one again to run '
        'the evaluation']


def test_a_bad_annotation_scored_before_meets_the_resumed_runs_policy(tmp_path, monkeypatch):
    """Journaled under 'warn' (pixels ignored), the image is not taken but scored again: under
    'error' it stops the run as a new run would; under 'warn' it is warned about and listed.
    The undefined pixels of the images taken are still listed."""
    from fsa_seg.evaluation import metrics as metrics_module
    first = metric(tmp_path, on_bad_annotation='warn')
    bad = sample([[0, 1, 2], [30, 1, 1]], 'a')
    first.process({}, [bad, dict(sample(PRED, 'b'), undefined_pixels=2)])
    images = ['/data/a.jpg', '/data/b.jpg']
    assert list(resumed(tmp_path, images=images).earlier) == ['/data/b.jpg']
    strict = metric(tmp_path, resume=True, images=images)
    with pytest.raises(AnnotationError, match=r'^/data/a.png: label values 30 lie outside the 3 '
                                              r'classes .*--allow-bad-annotations'):
        strict.process({}, [bad])
    messages = record_logs(monkeypatch, metrics_module)
    lenient = metric(tmp_path, resume=True, images=images, on_bad_annotation='warn')
    lenient.process({}, [bad])
    metrics = lenient.compute_metrics(lenient.results)
    assert messages[0].startswith('/data/a.png: label values 30 lie outside the 3 classes')
    assert lenient.annotation_problems == [dict(file='/data/a.png', problem='values',
                                                values=[30], pixels=1)]
    assert lenient.undefined_predictions == [dict(file='/data/b.jpg', pixels=2)]
    # by hand: a's 5 valid pixels and b's 6 are all right
    assert lenient.num_images == 2 and metrics['aAcc'] == 100.0


def test_areas_read_back_exactly(tmp_path):
    areas = torch.tensor([3.0, 1.5e7, 16777216.0, 123457.0])
    Journal(str(tmp_path), HEADER).write(
        [dict(image='x.jpg', areas=[areas.tolist()] * 4, problem=None, undefined=0)])
    back = from_line(load_journal(str(tmp_path), HEADER)['x.jpg'])
    assert all(torch.equal(area, areas) and area.dtype == torch.float32 for area in back[:4])


def test_a_line_cut_short_by_the_interruption_is_dropped_and_written_over(tmp_path):
    line = dict(areas=[[1.0]] * 4, problem=None, undefined=0)
    Journal(str(tmp_path), HEADER).write([dict(line, image='a.jpg')])
    path = journal_path(str(tmp_path), HEADER, 0)
    with open(path, 'a') as handle:
        handle.write('{"image": "b.jpg", "are')
    assert list(load_journal(str(tmp_path), HEADER)) == ['a.jpg']
    resumed(tmp_path).write([dict(line, image='c.jpg')])
    assert list(load_journal(str(tmp_path), HEADER)) == ['a.jpg', 'c.jpg']
    with open(path, 'a') as handle:
        handle.write('not json\n{"image": "d.jpg"}\n')
    with pytest.raises(JournalError, match=r'rank0\.jsonl, line 4: not a journal line'):
        load_journal(str(tmp_path), HEADER)


def test_runs_of_other_settings_keep_their_own_journals(tmp_path):
    """Resuming under other settings is refused, naming what changed; a run of other settings
    in the same work dir (two runs at once) leaves the first run's journal alone."""
    line = dict(areas=[[1.0]] * 4, problem=None, undefined=0)
    Journal(str(tmp_path), HEADER).write([dict(line, image='a.jpg')])
    other = journal_header(dict(model=dict(type='ClearCLIP', prob_thd=0.3), seed=0))
    with pytest.raises(JournalError, match=r'holds journals of other settings only \(changed: '
                                           r'model\.prob_thd\); leave out --resume'):
        load_journal(str(tmp_path), other)
    Journal(str(tmp_path), other).write([dict(line, image='b.jpg')])
    assert list(load_journal(str(tmp_path), HEADER)) == ['a.jpg']
    assert list(load_journal(str(tmp_path), other)) == ['b.jpg']
    assert load_journal(str(tmp_path / 'empty'), HEADER) == {}   # nothing to resume: no error


def test_a_new_run_starts_its_file_afresh_and_drops_files_of_ranks_it_lacks(tmp_path):
    """One process (rank 0 of 1): rank 1's file of an earlier two-process run goes, unless the
    run resumes (then its images count)."""
    line = dict(areas=[[1.0]] * 4, problem=None, undefined=0)
    for rank, image in ((0, 'a.jpg'), (1, 'b.jpg')):
        with open(journal_path(str(tmp_path), HEADER, rank), 'w') as handle:
            handle.write(json.dumps(HEADER) + '\n' + json.dumps(dict(line, image=image)) + '\n')
    resumed(tmp_path).write([dict(line, image='c.jpg')])
    assert sorted(load_journal(str(tmp_path), HEADER)) == ['a.jpg', 'b.jpg', 'c.jpg']
    Journal(str(tmp_path), HEADER).write([dict(line, image='d.jpg')])
    assert list(load_journal(str(tmp_path), HEADER)) == ['d.jpg']
    assert [str(p) for p in tmp_path.iterdir()] == [journal_path(str(tmp_path), HEADER, 0)]


def test_a_journal_that_cannot_be_written_warns_once_and_the_evaluation_goes_on(tmp_path,
                                                                              monkeypatch):
    messages = record_logs(monkeypatch, journal_module)
    (tmp_path / 'file').write_text('a file where the folder should be')
    scoring = metric(tmp_path / 'file')
    scoring.process({}, [sample(PRED, 'a')])
    scoring.process({}, [sample(PRED, 'b')])
    assert scoring.compute_metrics(scoring.results)['aAcc'] == 100.0
    assert len(messages) == 1 and 'cannot write the evaluation journal' in messages[0]
