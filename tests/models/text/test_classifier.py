import os
import stat

import open_clip
import pytest
import torch
import torch.nn.functional as F

from fsa_seg.models.backbones import OpenCLIP, tiny_clip_arch
from fsa_seg.models.text import cache_key, cached_query_embeddings, embed_queries


class CountingEncoder:
    """A deterministic stand-in text encoder: each prompt maps to a fixed random vector; prompts
    are encoded in batches of ``batch_size``, reporting progress after each."""

    def __init__(self, dim=8, text_id='m', batch_size=256):
        self.dim, self.text_id, self.batch_size, self.calls = dim, text_id, batch_size, 0

    def vector(self, prompt):
        generator = torch.Generator().manual_seed(sum(map(ord, prompt)) * 7919 + len(prompt))
        return torch.randn(self.dim, generator=generator) * (1 + len(prompt))

    def encode_text(self, prompts, progress=None):
        self.calls += 1
        for start in range(0, len(prompts), self.batch_size):
            if progress is not None:
                progress(len(prompts[start:start + self.batch_size]))
        return torch.stack([self.vector(p) for p in prompts])


class MustNotRun:
    text_id = 'm'

    def encode_text(self, prompts, progress=None):
        raise AssertionError('the text encoder ran on a cache hit')


def test_embeddings_average_per_template_normalised_vectors_then_renormalise():
    encoder = CountingEncoder()
    templates = ['a {}.', 'the {} here.']
    out = embed_queries(encoder, ['cat', 'dog'], templates)
    for row, name in zip(out, ['cat', 'dog']):
        vectors = [encoder.vector(t.format(name)) for t in templates]
        mean = sum(v / v.norm() for v in vectors) / len(vectors)
        assert torch.allclose(row, mean / mean.norm(), atol=1e-6)


def test_second_run_with_the_same_key_does_not_run_the_encoder(tmp_path, capsys):
    encoder = CountingEncoder()
    args = (['cat', 'dog'], ['a {}.'], tmp_path)
    first = cached_query_embeddings(encoder, *args)
    assert '2/2 names' in capsys.readouterr().err
    assert torch.equal(cached_query_embeddings(MustNotRun(), *args), first)
    assert encoder.calls == 1
    assert capsys.readouterr().err == ''  # no progress bar on a cache hit


def test_corrupt_or_inconsistent_entry_is_recomputed(tmp_path):
    encoder = CountingEncoder()
    args = (['cat', 'dog'], ['a {}.'], tmp_path)
    first = cached_query_embeddings(encoder, *args)
    entry = tmp_path / (cache_key('m', ['a {}.'], ['cat', 'dog']) + '.pt')
    entry.write_bytes(b'not a torch file')
    assert torch.equal(cached_query_embeddings(encoder, *args), first)
    assert encoder.calls == 2
    torch.save({'embeddings': torch.full((2, 8), float('nan'))}, entry)
    assert torch.equal(cached_query_embeddings(encoder, *args), first)
    assert encoder.calls == 3
    assert torch.equal(torch.load(entry)['embeddings'], first)  # the entry was repaired


def test_key_covers_encoder_templates_and_names():
    base = cache_key('m', ['a {}.'], ['cat'])
    assert len({base, cache_key('m2', ['a {}.'], ['cat']), cache_key('m', ['b {}.'], ['cat']),
                cache_key('m', ['a {}.'], ['cat', 'dog'])}) == 4


@pytest.mark.parametrize('umask,mode', [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_cache_files_follow_the_umask_so_a_group_can_share_them(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        cached_query_embeddings(CountingEncoder(), ['cat'], ['a {}.'], tmp_path, progress=False)
    finally:
        os.umask(previous)
    entries = list(tmp_path.iterdir())
    assert len(entries) == 1 and stat.S_IMODE(entries[0].stat().st_mode) == mode


def test_progress_in_a_log_is_one_line_per_refresh_with_names_and_time_left(capsys):
    # 3 names x 2 templates in batches of 4 prompts: after 4 prompts 2 names' worth are done.
    embed_queries(CountingEncoder(batch_size=4), ['cat', 'dog', 'cow'], ['a {}.', 'the {}.'])
    err = capsys.readouterr().err  # pytest's capture is not a terminal, as a log file is not
    lines = err.splitlines()
    assert '\r' not in err and err.endswith('\n')
    assert '0/3 names' in lines[0] and '<?' in lines[0]  # time left unknown at the start
    assert '3/3 names' in lines[-1] and '<00:00' in lines[-1]
    assert lines[0].startswith('text embeddings (2 templates):')


def test_no_progress_when_disabled(capsys):
    embed_queries(CountingEncoder(), ['cat'], ['a {}.'], progress=False)
    assert capsys.readouterr().err == ''


def full_context_embeddings(clip, queries, templates):
    """The zero-shot classifier written out on open_clip's own encode_text (77 tokens)."""
    tokenizer = open_clip.SimpleTokenizer()
    rows = []
    for query in queries:
        prompts = [template.format(query) for template in templates]
        per_prompt = F.normalize(clip.model.encode_text(tokenizer(prompts)), dim=-1)
        rows.append(F.normalize(per_prompt.mean(dim=0), dim=0))
    return torch.stack(rows)


def test_switching_quick_gelu_with_the_same_weights_file_never_serves_stale_embeddings(tmp_path):
    # Reported: after switching quick_gelu with the same weights file, the embeddings made with
    # the other activation were served from the cache.
    weights = tmp_path / 'clip.pt'
    torch.save(OpenCLIP(arch=tiny_clip_arch(), random_init=True).model.state_dict(), weights)
    queries, templates = ['cat', 'dog'], ['a photo of a {}.', 'a {}.']
    results = {}
    for quick_gelu in (False, True, False):
        clip = OpenCLIP(arch=tiny_clip_arch(), pretrained=str(weights), quick_gelu=quick_gelu,
                        precision='fp64')
        served = cached_query_embeddings(clip, queries, templates, tmp_path / 'cache')
        expected = full_context_embeddings(clip, queries, templates).float()
        assert torch.allclose(served, expected, atol=1e-6), quick_gelu
        results.setdefault(quick_gelu, served)
    assert (results[True] - results[False]).abs().max() > 1e-3  # the activation matters
    assert len(list((tmp_path / 'cache').iterdir())) == 2  # one entry each, the first reused


def test_precision_and_weights_are_part_of_the_key(tmp_path):
    weights = tmp_path / 'clip.pt'
    torch.save(OpenCLIP(arch=tiny_clip_arch(), random_init=True).model.state_dict(), weights)
    ids = {OpenCLIP(arch=tiny_clip_arch(), pretrained=str(weights), precision=p).text_id
           for p in ('fp32', 'fp64', 'bf16')}
    assert len(ids) == 3
    same = OpenCLIP(arch=tiny_clip_arch(), pretrained=str(weights))
    assert same.text_id in ids  # the same file, architecture and dtype: the same key
    assert same.to(torch.float16).text_id not in ids  # the dtype as it is now, not as built
    other = tmp_path / 'other.pt'
    torch.save(OpenCLIP(arch=tiny_clip_arch(), random_init=True).model.state_dict(), other)
    assert OpenCLIP(arch=tiny_clip_arch(), pretrained=str(other)).text_id not in ids
    wider_text = tiny_clip_arch()
    wider_text['text_cfg'] = dict(wider_text['text_cfg'], heads=4)
    assert OpenCLIP(arch=wider_text, pretrained=str(weights)).text_id not in ids
