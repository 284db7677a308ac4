import open_clip
import pytest
import torch
import torch.nn.functional as F

from fsa_seg.models.backbones import OpenCLIP, interpolate_pos_embed, tiny_clip_arch
from fsa_seg.models.backbones.clip import is_causal_clip_text
from fsa_seg.models.weights import WeightsError

from references import official_interpolate_pos_encoding


def test_trunk_plus_unmodified_last_block_reproduces_open_clip_tokens(tiny_clip):
    clip = OpenCLIP(**tiny_clip)
    images = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    tokens, grid = clip.forward_to_last_block(images)
    out = clip.last_block(tokens)
    clip.visual.output_tokens = True
    pooled, expected = clip.visual(images)
    assert grid == (14, 14)
    assert torch.allclose(clip.visual.ln_post(out[:, 1:]), expected, atol=1e-12)
    assert torch.allclose(clip.head(out[:, 0]), pooled, atol=1e-12)


def test_qkv_and_out_proj_match_the_blocks_multihead_attention(tiny_clip):
    clip = OpenCLIP(**tiny_clip)
    tokens = torch.randn(2, 5, 64, dtype=torch.float64)
    q, k, v = clip.qkv(tokens)
    attn = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)
    x = clip.last_block.ln_1(tokens)
    expected = clip.last_block.attn(x, x, x, need_weights=False)[0]
    assert q.shape == (2, 4, 5, 16)
    assert torch.allclose(clip.out_proj(attn @ v), expected, atol=1e-12)


def test_any_crop_size_interpolates_positional_embeddings(tiny_clip):
    clip = OpenCLIP(**tiny_clip)
    tokens, grid = clip.forward_to_last_block(torch.randn(1, 3, 224, 336, dtype=torch.float64))
    assert grid == (14, 21) and tokens.shape == (1, 1 + 14 * 21, 64)


def test_pos_embed_interpolation_keeps_cls_and_constant_fields():
    pos = torch.cat([torch.full((1, 4), 7.0), torch.full((9, 4), 2.5)])
    out = interpolate_pos_embed(pos, (5, 4), (3, 3))
    assert out.shape == (21, 4)
    assert torch.equal(out[0], pos[0]) and torch.allclose(out[1:], torch.full((20, 4), 2.5))
    assert interpolate_pos_embed(pos, (3, 3), (3, 3)) is pos


def test_random_weights_need_the_explicit_switch():
    with pytest.raises(WeightsError, match='random_init=True'):
        OpenCLIP('ViT-B-16')
    with pytest.raises(ValueError, match='not both'):
        OpenCLIP('ViT-B-16', pretrained='openai', random_init=True)


def test_unknown_tag_names_the_model_and_the_known_tags():
    with pytest.raises(WeightsError, match=r"ViT-B-16.*'no_such_tag'.*openai"):
        OpenCLIP('ViT-B-16', pretrained='no_such_tag')


def test_failed_download_says_which_weights_and_how_to_load_a_file(monkeypatch):
    def offline(cfg, cache_dir=None):
        raise OSError('Failed to download file (open_clip_pytorch_model.bin)')

    monkeypatch.setattr(open_clip, 'download_pretrained', offline)
    with pytest.raises(WeightsError, match=r"ViT-B-16 weights 'openai'.*OSError.*local path"):
        OpenCLIP('ViT-B-16', pretrained='openai')


def test_without_network_a_download_fails_at_once_and_says_why(tmp_path, unresolvable_names):
    with pytest.raises(WeightsError, match=r"ViT-B-16 weights 'openai'.*huggingface.co cannot "
                                           r"be reached.*only the local cache.*local path"):
        OpenCLIP('ViT-B-16', pretrained='openai', cache_dir=str(tmp_path))
    assert unresolvable_names.count('huggingface.co') == 1   # the probe: no retried requests


def test_errors_other_than_download_errors_propagate_as_they_are(monkeypatch):
    # a TypeError of a version mismatch is not "could not download"
    def mismatched(cfg, cache_dir=None):
        raise TypeError("download_pretrained() got an unexpected keyword argument 'x'")

    monkeypatch.setattr(open_clip, 'download_pretrained', mismatched)
    with pytest.raises(TypeError, match='unexpected keyword'):
        OpenCLIP('ViT-B-16', pretrained='openai')


def test_local_checkpoint_loads_exactly_and_a_mismatched_one_is_refused(tmp_path):
    source = OpenCLIP(arch=tiny_clip_arch(), random_init=True)
    path = tmp_path / 'tiny.pt'
    torch.save(source.model.state_dict(), path)
    loaded = OpenCLIP(arch=tiny_clip_arch(), pretrained=str(path))
    for key, value in source.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    assert loaded.weights_id.startswith('file:')

    with pytest.raises(WeightsError, match='tiny.pt does not fit'):
        OpenCLIP(arch=tiny_clip_arch(width=32, heads=2), pretrained=str(path))
    truncated = {k: v for k, v in source.model.state_dict().items() if 'resblocks.2' not in k}
    torch.save(truncated, tmp_path / 'truncated.pt')
    with pytest.raises(WeightsError, match='Missing key'):
        OpenCLIP(arch=tiny_clip_arch(), pretrained=str(tmp_path / 'truncated.pt'))
    with pytest.raises(WeightsError, match='not found'):
        OpenCLIP(arch=tiny_clip_arch(), pretrained=str(tmp_path / 'absent.pt'))


def test_a_named_model_loaded_from_a_file_is_not_reported_as_random(tmp_path, monkeypatch,
                                                                    caplog):
    # open_clip logs "Model initialized randomly" for every model built without its weights,
    # before ours are loaded from the file: users with real weights must not read that.
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, 'tiny-named', tiny_clip_arch())
    source = OpenCLIP('tiny-named', random_init=True)
    path = tmp_path / 'tiny.pt'
    torch.save(source.model.state_dict(), path)
    with caplog.at_level('WARNING'):
        loaded = OpenCLIP('tiny-named', pretrained=str(path))
    assert not [r for r in caplog.records if 'initialized randomly' in r.getMessage()]
    for key, value in source.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    with caplog.at_level('WARNING'):
        open_clip.create_model('tiny-named', pretrained=None, load_weights=False)
    assert [r for r in caplog.records if 'initialized randomly' in r.getMessage()], \
        'the notice is dropped only while we build'


@pytest.mark.parametrize('precision,dtype', [('fp32', torch.float32), ('bf16', torch.bfloat16),
                                             ('fp64', torch.float64)])
def test_precision_sets_the_weights_dtype(precision, dtype):
    clip = OpenCLIP(arch=tiny_clip_arch(), random_init=True, precision=precision)
    assert clip.dtype == dtype
    tokens, _ = clip.forward_to_last_block(torch.randn(1, 3, 32, 32))
    assert tokens.dtype == dtype and torch.isfinite(tokens.float()).all()


def test_text_encoder_embeds_prompts(tiny_clip):
    clip = OpenCLIP(**tiny_clip)
    out = clip.encode_text(['a photo of a cat.', 'dog'])
    expected = clip.model.encode_text(open_clip.SimpleTokenizer()(['a photo of a cat.', 'dog']))
    assert out.shape == (2, 32) and torch.allclose(out, expected)
    assert F.cosine_similarity(out[0], out[1], dim=0) < 1


# Prompts of many lengths, in no order, one longer than the 77-token context (cut by the
# tokenizer, its end-of-text token at the last position).
PROMPTS = ['dog', 'a photo of a cat.', 'itap of my television monitor.', 'a {}.'.format(
    'very ' * 90 + 'long name'), 'a black and white photo of the person in sweater.', 'sky',
    'the plushie pottedplant.', 'a photo of the hard to see bicycle.', 'graffiti of a cow.']


@pytest.mark.parametrize('batch_size', [1, 4, 256])
def test_text_cut_at_each_batchs_longest_prompt_equals_open_clips_full_context(tiny_clip,
                                                                             batch_size):
    clip = OpenCLIP(**tiny_clip)
    out = clip.encode_text(PROMPTS, batch_size=batch_size)
    expected = clip.model.encode_text(open_clip.SimpleTokenizer()(PROMPTS))  # 77 tokens each
    assert out.dtype == torch.float64
    assert (out - expected).abs().max() <= 1e-12


def test_text_batches_run_longest_first_each_only_up_to_its_longest_prompt(tiny_clip):
    clip = OpenCLIP(**tiny_clip)
    seen = []
    clip.model.transformer.register_forward_pre_hook(
        lambda module, args: seen.append(tuple(args[0].shape[:2])))
    done = []
    clip.encode_text(PROMPTS, batch_size=4, progress=done.append)
    # Start, words and end of text: the BPE tokens of each prompt plus two.
    tokenizer = open_clip.SimpleTokenizer()
    lengths = sorted((min(len(tokenizer.encode(p)) + 2, 77) for p in PROMPTS), reverse=True)
    assert seen == [(4, lengths[0]), (4, lengths[4]), (1, lengths[8])]
    assert done == [4, 4, 1]


@pytest.mark.parametrize('text_cfg', [dict(pool_type='eos', eos_id=49407),
                                      dict(no_causal_mask=True), dict(pool_type='last')])
def test_other_text_towers_equal_open_clip_whether_cut_or_not(text_cfg):
    arch = tiny_clip_arch()
    arch['text_cfg'] = dict(arch['text_cfg'], **text_cfg)
    clip = OpenCLIP(arch=arch, random_init=True, precision='fp64')
    out = clip.encode_text(PROMPTS, batch_size=4)
    expected = clip.model.encode_text(open_clip.SimpleTokenizer()(PROMPTS))
    assert (out - expected).abs().max() <= 1e-12
    # Only end-of-text pooling under the causal mask depends on the tokens up to the pooled one.
    assert is_causal_clip_text(clip.model) == ('eos_id' in text_cfg)


def test_custom_text_clips_are_encoded_at_full_context():
    arch = tiny_clip_arch()
    model = open_clip.CustomTextCLIP(arch['embed_dim'], arch['vision_cfg'], arch['text_cfg'])
    assert not is_causal_clip_text(model)


def test_text_in_fp32_stays_close_to_the_full_context():
    clip = OpenCLIP(arch=tiny_clip_arch(), random_init=True)
    out = clip.encode_text(PROMPTS)
    expected = clip.model.encode_text(open_clip.SimpleTokenizer()(PROMPTS))
    assert out.dtype == torch.float32 and (out - expected).abs().max() <= 1e-5


def test_pos_embed_interpolation_follows_the_dino_formula_of_the_segmentation_codebases():
    import math
    torch.manual_seed(0)
    pos = torch.randn(1 + 14 * 14, 8)
    out = interpolate_pos_embed(pos, (21, 28), (14, 14))
    # DINO's interpolate_pos_encoding, as SCLIP / ProxyCLIP / FSA copy it.
    side = int(math.sqrt(pos.shape[0] - 1))
    h0, w0 = 21 + 0.1, 28 + 0.1
    patch = F.interpolate(pos[1:].reshape(1, side, side, 8).permute(0, 3, 1, 2),
                          scale_factor=(h0 / side, w0 / side), mode='bicubic')
    expected = patch.permute(0, 2, 3, 1).reshape(-1, 8)
    assert torch.allclose(out[1:], expected)
    resized = F.interpolate(pos[1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2), size=(21, 28),
                            mode='bicubic').permute(0, 2, 3, 1).reshape(-1, 8)
    assert not torch.allclose(out[1:], resized)  # the two samplings do differ


@pytest.mark.parametrize('size', [(224, 224), (336, 336), (448, 448), (224, 336), (224, 232)],
                         ids=lambda s: f'{s[0]}x{s[1]}')
def test_fp64_embedding_equals_the_official_interpolation_in_fp64(tiny_clip, size):
    clip = OpenCLIP(**tiny_clip)
    visual = clip.visual
    with torch.no_grad():  # random init leaves a smooth embedding; any values will do
        visual.positional_embedding.copy_(torch.randn_like(visual.positional_embedding))
    images = torch.randn(1, 3, *size, dtype=torch.float64)
    tokens, grid = clip.embed(images)
    # the official trunk: conv1, cls, + interpolate_pos_encoding(x, w, h).to(x.dtype) where the
    # token count differs from the embedding's (else the embedding as it is), ln_pre
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(1, 1, -1), x], dim=1)
    if x.shape[1] != visual.positional_embedding.shape[0]:
        pos = official_interpolate_pos_encoding(visual.positional_embedding[None], 16, x, *size)
    else:
        pos = visual.positional_embedding
    pos = pos.reshape(-1, pos.shape[-1])  # (1 + h·w, C); (1, 1 + h·w, C) where resampled
    assert pos.dtype == torch.float64
    expected = visual.ln_pre(x + pos.to(x.dtype))
    assert grid == (size[0] // 16, size[1] // 16)
    assert (tokens - expected).abs().max() <= 1e-12
    resampled = interpolate_pos_embed(visual.positional_embedding, grid, (14, 14))
    assert resampled.dtype == torch.float64
    assert (resampled - pos).abs().max() <= 1e-12
    if grid != (14, 14):  # the old float32 round trip is visible against this tolerance
        as_float32 = interpolate_pos_embed(visual.positional_embedding.float(), grid,
                                           (14, 14)).double()
        assert (as_float32 - pos).abs().max() > 1e-12


def test_a_grid_of_the_native_token_count_keeps_the_native_embedding():
    """The official trunks' rule: resampled only when the token count differs."""
    pos = torch.randn(1 + 14 * 14, 8, dtype=torch.float64)
    assert interpolate_pos_embed(pos, (7, 28), (14, 14)) is pos
    assert interpolate_pos_embed(pos, (14, 15), (14, 14)).shape == (1 + 14 * 15, 8)


def test_half_embedding_stays_half():
    pos = torch.randn(1 + 14 * 14, 8).half()
    out = interpolate_pos_embed(pos, (21, 21), (14, 14))
    assert out.dtype == torch.float16 and out.shape == (1 + 21 * 21, 8)


def test_intermediate_block_outputs_equal_open_clips_forward_intermediates(tiny_clip):
    """The trunk's intermediate outputs (SC-CLIP, ResCLIP read them) at the native grid, against
    open_clip's own forward_intermediates."""
    clip = OpenCLIP(**tiny_clip)
    images = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    x, grid, outputs = clip.forward_to_last_block(images, return_intermediates=True)
    layers = len(clip.visual.transformer.resblocks)
    assert len(outputs) == layers - 1 and torch.equal(outputs[-1], x)
    upstream = clip.visual.forward_intermediates(
        images, indices=list(range(layers - 1)), intermediates_only=True, output_fmt='NLC',
        output_extra_tokens=True)
    for ours, patches, prefix in zip(outputs, upstream['image_intermediates'],
                                     upstream['image_intermediates_prefix']):
        assert torch.allclose(ours, torch.cat([prefix, patches], dim=1), atol=1e-12)
    # q, k, v and out_proj of any block, from that block's own weights
    q, k, v = clip.qkv(outputs[0], block=1)
    attn = clip.block(1).attn
    width = attn.embed_dim
    expected_k = F.linear(clip.block(1).ln_1(outputs[0]), attn.in_proj_weight[width:2 * width],
                          attn.in_proj_bias[width:2 * width])
    assert torch.allclose(k.transpose(1, 2).flatten(2), expected_k, atol=1e-12)
    assert torch.allclose(clip.out_proj(v, block=1), attn.out_proj(v.transpose(1, 2).flatten(2)))


def test_the_resampled_embedding_is_made_once_per_grid_and_follows_new_weights(tiny_clip,
                                                                               monkeypatch):
    import fsa_seg.models.backbones.clip as clip_module
    calls = []
    monkeypatch.setattr(clip_module, 'interpolate_pos_embed',
                        lambda *args: calls.append(args[1]) or interpolate_pos_embed(*args))
    clip = OpenCLIP(**tiny_clip)
    visual = clip.visual
    images = torch.randn(2, 3, 336, 336, dtype=torch.float64)

    def official_tokens():
        x = visual.conv1(images).flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.expand(2, 1, -1), x], dim=1)
        pos = official_interpolate_pos_encoding(visual.positional_embedding[None], 16, x, 336, 336)
        return visual.ln_pre(x + pos)

    with torch.no_grad():
        for _ in range(3):
            tokens, _ = clip.embed(images)
        assert calls == [(21, 21)]
        assert (tokens - official_tokens()).abs().max() <= 1e-12
        state = {k: torch.randn_like(v) if k.endswith('positional_embedding') else v
                 for k, v in visual.state_dict().items()}
        visual.load_state_dict(state)
        tokens, _ = clip.embed(images)
        assert calls == [(21, 21)] * 2
        assert (tokens - official_tokens()).abs().max() <= 1e-12
