import torch

from fsa_seg.models.text import cache_key, cached_query_embeddings, embed_queries


class CountingEncoder:
    """A deterministic stand-in text encoder: each prompt maps to a fixed random vector."""

    def __init__(self, dim=8):
        self.dim, self.calls = dim, 0

    def vector(self, prompt):
        generator = torch.Generator().manual_seed(sum(map(ord, prompt)) * 7919 + len(prompt))
        return torch.randn(self.dim, generator=generator) * (1 + len(prompt))

    def __call__(self, prompts):
        self.calls += 1
        return torch.stack([self.vector(p) for p in prompts])


def test_embeddings_average_per_template_normalised_vectors_then_renormalise():
    encoder = CountingEncoder()
    templates = ['a {}.', 'the {} here.']
    out = embed_queries(encoder, ['cat', 'dog'], templates)
    for row, name in zip(out, ['cat', 'dog']):
        vectors = [encoder.vector(t.format(name)) for t in templates]
        mean = sum(v / v.norm() for v in vectors) / len(vectors)
        assert torch.allclose(row, mean / mean.norm(), atol=1e-6)


def test_second_run_with_the_same_key_does_not_run_the_encoder(tmp_path):
    encoder = CountingEncoder()
    args = (['cat', 'dog'], ['a {}.'], 'ViT-B-16', 'tag:openai', tmp_path)
    first = cached_query_embeddings(encoder, *args)
    calls = encoder.calls

    def must_not_run(prompts):
        raise AssertionError('the text encoder ran on a cache hit')

    assert torch.equal(cached_query_embeddings(must_not_run, *args), first)
    assert calls == encoder.calls == 1


def test_corrupt_or_inconsistent_entry_is_recomputed(tmp_path):
    encoder = CountingEncoder()
    args = (['cat', 'dog'], ['a {}.'], 'm', 'w', tmp_path)
    first = cached_query_embeddings(encoder, *args)
    entry = tmp_path / (cache_key('m', 'w', ['a {}.'], ['cat', 'dog']) + '.pt')
    entry.write_bytes(b'not a torch file')
    assert torch.equal(cached_query_embeddings(encoder, *args), first)
    assert encoder.calls == 2
    torch.save({'embeddings': torch.full((2, 8), float('nan'))}, entry)
    assert torch.equal(cached_query_embeddings(encoder, *args), first)
    assert encoder.calls == 3
    assert torch.equal(torch.load(entry)['embeddings'], first)  # the entry was repaired


def test_key_covers_model_weights_templates_and_names():
    base = cache_key('m', 'w', ['a {}.'], ['cat'])
    assert len({base, cache_key('m2', 'w', ['a {}.'], ['cat']),
                cache_key('m', 'w2', ['a {}.'], ['cat']), cache_key('m', 'w', ['b {}.'], ['cat']),
                cache_key('m', 'w', ['a {}.'], ['cat', 'dog'])}) == 5
