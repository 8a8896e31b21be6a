"""Text encoders: tiny offline CLIP / T5 / BERT folders, the packaged MiniLM, the trainable scratch encoder."""

import json
from pathlib import Path

import pytest
import torch
import transformers

from gentron.text import (
    KINDS,
    ScratchTextModel,
    TextEmbedding,
    TextEncoder,
    TextEncoderConfig,
    load_text_encoder,
    load_text_encoders,
    masked_mean,
    minilm_dir,
)

WORDS = ["a", "red", "blue", "green", "circle", "square", "triangle", "on", "the", "left", "right"]
PROMPTS = ["a red circle on the left", "a blue square", "green triangle on the right", ""]


# ------------------------------------------------------------------------------------------------
# Tiny model folders, built offline
# ------------------------------------------------------------------------------------------------


def clip_tokenizer() -> transformers.PreTrainedTokenizerBase:
    """A real CLIP BPE tokenizer over a toy vocabulary (characters + merges that spell WORDS)."""
    chars = sorted(set("".join(WORDS)))
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges = []
    for w in WORDS:
        cur = w[0]
        for i, ch in enumerate(w[1:], 1):
            nxt = ch + "</w>" if i == len(w) - 1 else ch
            if (cur, nxt) not in merges:
                merges.append((cur, nxt))
            cur += nxt
            vocab.setdefault(cur, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return transformers.CLIPTokenizer(vocab=vocab, merges=merges)


def t5_tokenizer() -> transformers.PreTrainedTokenizerBase:
    """A real T5 (Unigram) tokenizer over a toy vocabulary."""
    chars = sorted(set("".join(WORDS)))
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    pieces += [("▁" + w, -1.0) for w in WORDS] + [(c, -5.0) for c in chars]
    return transformers.T5Tokenizer(vocab=pieces, extra_ids=0)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encoders")
    torch.manual_seed(0)
    out = {}

    tok = clip_tokenizer()
    clip_cfg = transformers.CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=16, projection_dim=24, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    for name, cls in (("clip", transformers.CLIPTextModel), ("clip_proj", transformers.CLIPTextModelWithProjection)):
        cls(clip_cfg).save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out[name] = root / name

    tok = t5_tokenizer()
    t5_cfg = transformers.T5Config(
        vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id,
    )
    t5 = transformers.T5EncoderModel(t5_cfg)
    t5.save_pretrained(root / "t5")
    tok.save_pretrained(root / "t5")
    out["t5"] = root / "t5"
    # diffusers-style pipeline folder (what a local PixArt-α snapshot looks like)
    t5.save_pretrained(root / "pixart" / "text_encoder")
    tok.save_pretrained(root / "pixart" / "tokenizer")
    out["pixart"] = root / "pixart"

    tok = transformers.AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)
    bert_cfg = transformers.BertConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64,
    )
    transformers.BertModel(bert_cfg).save_pretrained(root / "bert")
    tok.save_pretrained(root / "bert")
    out["bert"] = root / "bert"
    return out


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return load_text_encoder(TextEncoderConfig())


def check_embedding(emb: TextEmbedding, enc: TextEncoder, batch: int) -> None:
    assert emb.tokens.shape == (batch, enc.max_length, enc.dim)
    assert emb.mask.shape == (batch, enc.max_length) and emb.mask.dtype == torch.bool
    assert emb.pooled.shape == (batch, enc.pooled_dim)
    assert emb.mask.any(dim=1).all()  # every prompt, even "", has at least its special tokens
    assert torch.isfinite(emb.tokens).all() and torch.isfinite(emb.pooled).all()


# ------------------------------------------------------------------------------------------------
# Frozen pretrained kinds
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,pooled_dim", [("clip", 32), ("clip_proj", 24)])
def test_clip(folders, name, pooled_dim):
    enc = load_text_encoder({"kind": "clip", "path": str(folders[name]), "max_length": 12})
    assert (enc.dim, enc.pooled_dim, enc.max_length, enc.trainable) == (32, pooled_dim, 12, False)
    assert not any(p.requires_grad for p in enc.parameters()) and not enc.model.training
    batch = enc.tokenize(PROMPTS)
    emb = enc(**batch)
    check_embedding(emb, enc, len(PROMPTS))
    assert torch.equal(emb.mask, batch["attention_mask"].bool())
    with torch.no_grad():
        out = enc.model(**batch)
    ref = out.text_embeds if name == "clip_proj" else out.pooler_output
    torch.testing.assert_close(emb.pooled, ref)


def test_default_max_lengths(folders, minilm):
    assert minilm.max_length == 32
    assert load_text_encoder({"kind": "t5", "path": str(folders["t5"])}).max_length == 120
    assert load_text_encoder({"kind": "bert", "path": str(folders["bert"])}).max_length == 64
    with pytest.raises(ValueError, match="exceeds"):  # CLIP's 77 > this toy model's 16 positions
        load_text_encoder({"kind": "clip", "path": str(folders["clip"])})


def test_t5_masked_mean_and_padding(folders):
    enc = load_text_encoder({"kind": "t5", "path": str(folders["t5"]), "max_length": 10})
    assert (enc.dim, enc.pooled_dim) == (32, 32)
    emb = enc.encode(PROMPTS)
    check_embedding(emb, enc, len(PROMPTS))
    for i in range(len(PROMPTS)):
        n = int(emb.mask[i].sum())
        assert emb.mask[i, :n].all() and not emb.mask[i, n:].any()  # right padding
        torch.testing.assert_close(emb.pooled[i], emb.tokens[i, :n].mean(0))
    longer = load_text_encoder({"kind": "t5", "path": str(folders["t5"]), "max_length": 24}).encode(PROMPTS)
    torch.testing.assert_close(longer.pooled, emb.pooled, atol=1e-5, rtol=1e-5)


def test_pipeline_style_folder(folders):
    enc = load_text_encoder({"kind": "t5", "path": str(folders["pixart"]), "max_length": 10})
    ref = load_text_encoder({"kind": "t5", "path": str(folders["t5"]), "max_length": 10})
    torch.testing.assert_close(enc.encode(PROMPTS).tokens, ref.encode(PROMPTS).tokens)


@pytest.mark.parametrize("kind", ["bert", "auto"])
def test_bert_like(folders, kind):
    enc = load_text_encoder({"kind": kind, "path": str(folders["bert"]), "max_length": 16})
    assert (enc.kind, enc.dim, enc.pooled_dim) == (kind, 32, 32)
    check_embedding(enc.encode(PROMPTS), enc, len(PROMPTS))


def test_kind_mismatch_is_explained(folders):
    with pytest.raises(ValueError, match="not CLIP"):
        load_text_encoder({"kind": "clip", "path": str(folders["t5"])})
    with pytest.raises(ValueError, match="not T5"):
        load_text_encoder({"kind": "t5", "path": str(folders["bert"])})


def test_multi_encoder_and_dtype(folders):
    encs = load_text_encoders([
        {"kind": "clip", "path": str(folders["clip"]), "max_length": 12},
        TextEncoderConfig(kind="t5", path=str(folders["t5"]), max_length=10, dtype="bfloat16"),
    ])
    assert [e.kind for e in encs] == ["clip", "t5"]
    assert encs[1].dtype == torch.bfloat16 and encs[1].encode(PROMPTS).tokens.dtype == torch.bfloat16


def test_save_and_reload_frozen(folders, tmp_path):
    enc = load_text_encoder({"kind": "clip", "path": str(folders["clip_proj"]), "max_length": 12})
    enc.save_pretrained(tmp_path / "enc")
    meta = json.loads((tmp_path / "enc" / "gentron_text_encoder.json").read_text())
    assert meta["kind"] == "clip" and meta["max_length"] == 12 and meta["pooled_dim"] == 24
    again = TextEncoder.from_pretrained(tmp_path / "enc")
    assert (again.kind, again.max_length, again.pooled_dim) == ("clip", 12, 24)
    torch.testing.assert_close(again.encode(PROMPTS).pooled, enc.encode(PROMPTS).pooled)
    # to_dict reproduces the encoder; components() feed a pipeline and from_components reads them back
    assert load_text_encoder(enc.to_dict()).max_length == 12
    wrapped = TextEncoder.from_components(*enc.components(), kind="clip", max_length=12)
    torch.testing.assert_close(wrapped.encode(PROMPTS).tokens, enc.encode(PROMPTS).tokens)


def test_hidden_layer_selects_hidden_states_and_round_trips(folders, tmp_path):
    """``hidden_layer`` picks ``hidden_states[k]`` as tokens (pooled = their masked mean for T5) and survives
    save_pretrained, to_dict and a pipeline's config; out-of-range layers are a clear error."""
    from gentron.diffusion import DiffusionConfig
    from gentron.models import GenTronTransformer, zoo_config
    from gentron.pipelines import GenTronPipeline

    spec = {"kind": "t5", "path": str(folders["t5"]), "max_length": 10}
    last, first = load_text_encoder(spec), load_text_encoder({**spec, "hidden_layer": 0})
    ids = first.tokenize(PROMPTS)
    with torch.no_grad():
        ref = first.model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"], output_hidden_states=True)
    emb = first.encode(PROMPTS)
    torch.testing.assert_close(emb.tokens, ref.hidden_states[0])
    torch.testing.assert_close(emb.pooled, masked_mean(emb.tokens, emb.mask))
    assert not torch.allclose(emb.tokens, last.encode(PROMPTS).tokens)
    with pytest.raises(ValueError, match="hidden_layer=5 is out of range for a 2-layer"):
        load_text_encoder({**spec, "hidden_layer": 5})

    first.save_pretrained(tmp_path / "enc")
    assert TextEncoder.from_pretrained(tmp_path / "enc").hidden_layer == 0
    assert load_text_encoder(first.to_dict()).hidden_layer == 0
    model = GenTronTransformer(**zoo_config("GenTron-T/4", conditioning="cross-attn", sample_size=8, in_channels=3,
                                            learn_sigma=False, text_dims=[first.dim], pooled_dims=[first.pooled_dim]))
    GenTronPipeline.from_parts(model, [first], DiffusionConfig()).save_pretrained(tmp_path / "pipe")
    pipe = GenTronPipeline.from_pretrained(tmp_path / "pipe")
    assert pipe.config.text_hidden_layers == [0]
    torch.testing.assert_close(pipe.text_encoders[0].encode(PROMPTS).tokens, emb.tokens)
    # a pipeline saved before the option (no key in model_index.json) reads the last layer, as it was trained
    index = tmp_path / "pipe" / "model_index.json"
    index.write_text(json.dumps({k: v for k, v in json.loads(index.read_text()).items() if k != "text_hidden_layers"}))
    older = GenTronPipeline.from_pretrained(tmp_path / "pipe")
    assert older.config.text_hidden_layers == [-1] and older.text_encoders[0].hidden_layer == -1


# ------------------------------------------------------------------------------------------------
# MiniLM (the packaged default)
# ------------------------------------------------------------------------------------------------


def test_minilm_basics(minilm):
    assert (minilm.kind, minilm.dim, minilm.pooled_dim, minilm.trainable) == ("minilm", 384, 384, False)
    assert minilm.to_dict()["path"] is None  # the package folder, not a machine-specific path
    minilm.clear_cache()
    a = minilm.encode(PROMPTS)
    minilm.clear_cache()
    b = minilm.encode(PROMPTS)
    check_embedding(a, minilm, len(PROMPTS))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.pooled, b.pooled)  # deterministic (eval mode)
    cos = torch.nn.functional.cosine_similarity(a.pooled[0], a.pooled[1], dim=0)
    assert cos < 0.95
    assert not a.pooled.requires_grad


def test_minilm_pooling_ignores_padding(minilm):
    longer = TextEncoder.from_components(minilm.model, minilm.tokenizer, "minilm", max_length=48, cache_size=0)
    short = minilm.encode(PROMPTS)
    long = longer.encode(PROMPTS)
    assert long.tokens.shape[1] == 48
    torch.testing.assert_close(long.pooled, short.pooled, atol=1e-5, rtol=1e-5)
    n = short.mask.sum(1)
    torch.testing.assert_close(long.tokens[0, : n[0]], short.tokens[0, : n[0]], atol=1e-5, rtol=1e-5)


def test_minilm_cache(minilm):
    uncached = TextEncoder.from_components(minilm.model, minilm.tokenizer, "minilm", cache_size=0)
    ref = uncached.encode(PROMPTS)
    assert uncached.cache_info["entries"] == 0
    minilm.clear_cache()
    first = minilm.encode(PROMPTS)  # all misses: computed exactly like the uncached call
    assert minilm.cache_info["entries"] == len(PROMPTS)
    second = minilm.encode(PROMPTS)  # all hits
    for got in (first, second):
        assert torch.equal(got.tokens, ref.tokens) and torch.equal(got.mask, ref.mask)
        assert torch.equal(got.pooled, ref.pooled)
    mixed = ["a blue square", "a new prompt", "a blue square", ""]  # hits, a miss, duplicates
    got, want = minilm.encode(mixed), uncached.encode(mixed)
    torch.testing.assert_close(got.tokens, want.tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.pooled, want.pooled, atol=1e-5, rtol=1e-5)

    small = TextEncoder.from_components(minilm.model, minilm.tokenizer, "minilm", cache_size=2)
    out = small.encode(PROMPTS)  # more misses than the cache holds: still correct, cache stays bounded
    assert small.cache_info["entries"] == 2
    torch.testing.assert_close(out.pooled, ref.pooled, atol=1e-5, rtol=1e-5)


def test_frozen_stays_in_eval(minilm):
    parent = torch.nn.ModuleList([minilm]).train()
    assert not minilm.model.training
    parent.eval()


# ------------------------------------------------------------------------------------------------
# The trainable scratch encoder
# ------------------------------------------------------------------------------------------------


def test_scratch_trains_and_round_trips(tmp_path):
    torch.manual_seed(0)
    enc = load_text_encoder({"kind": "scratch", "width": 32, "depth": 2, "heads": 4, "max_length": 16})
    assert isinstance(enc.model, ScratchTextModel)
    assert (enc.trainable, enc.dim, enc.pooled_dim, enc.max_length) == (True, 32, 32, 16)
    assert enc.cache_info["max_entries"] == 0
    emb = enc.encode(PROMPTS)
    check_embedding(emb, enc, len(PROMPTS))
    (emb.pooled.square().mean() + emb.tokens.mean()).backward()
    grads = {n: p.grad for n, p in enc.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert grads["model.position_embedding"].abs().sum() > 0 and grads["model.token_embedding.weight"].abs().sum() > 0

    enc.save_pretrained(tmp_path / "scratch")
    assert (tmp_path / "scratch" / "diffusion_pytorch_model.safetensors").is_file()
    assert (tmp_path / "scratch" / "tokenizer.json").is_file()
    again = TextEncoder.from_pretrained(tmp_path / "scratch")
    assert (again.kind, again.dim, again.max_length, again.trainable) == ("scratch", 32, 16, True)
    with torch.no_grad():
        a, b = enc.encode(PROMPTS), again.encode(PROMPTS)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.pooled, b.pooled)
    assert again.to_dict()["width"] == 32
    with pytest.raises(ValueError, match="exceeds"):
        load_text_encoder({"kind": "scratch", "path": str(tmp_path / "scratch"), "max_length": 64})


def test_scratch_padding_is_masked():
    torch.manual_seed(0)
    short = load_text_encoder({"kind": "scratch", "width": 32, "depth": 1, "heads": 2, "max_length": 24})
    longer = TextEncoder.from_components(short.model, short.tokenizer, "scratch", max_length=12)
    with torch.no_grad():
        torch.testing.assert_close(short.encode(PROMPTS).pooled, longer.encode(PROMPTS).pooled,
                                   atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Errors and helpers
# ------------------------------------------------------------------------------------------------


def test_missing_or_wrong_paths(tmp_path):
    missing = tmp_path / "nowhere"
    for kind in ("clip", "t5", "bert", "minilm", "scratch"):
        with pytest.raises(FileNotFoundError, match=str(missing)):
            load_text_encoder({"kind": kind, "path": str(missing)})
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_text_encoder({"kind": "bert", "path": str(tmp_path)})
    with pytest.raises(ValueError, match="needs `path`"):
        load_text_encoder({"kind": "clip"})


def test_unknown_kind_and_options():
    with pytest.raises(ValueError, match="valid kinds: " + ", ".join(KINDS)):
        load_text_encoder({"kind": "gpt"})
    with pytest.raises(ValueError, match="unknown text encoder option"):
        load_text_encoder({"kind": "minilm", "hidden": 3})
    with pytest.raises(ValueError, match="dtype"):
        TextEncoderConfig(dtype="int8")


def test_masked_mean_ignores_garbage_in_padding():
    tokens = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    dirty = tokens.clone()
    dirty[0, 2:] = 1e6
    torch.testing.assert_close(masked_mean(dirty, mask), masked_mean(tokens, mask))
    torch.testing.assert_close(masked_mean(tokens, mask)[0], tokens[0, :2].mean(0))


def test_text_embedding_helpers():
    e = TextEmbedding(tokens=torch.randn(4, 3, 2), mask=torch.ones(4, 3, dtype=torch.bool), pooled=torch.randn(4, 5))
    assert len(e) == 4 and len(e[1]) == 1 and len(e[-1]) == 1 and len(e[1:3]) == 2
    sel = e.index_select(torch.tensor([3, 0]))
    assert torch.equal(sel.pooled, e.pooled[[3, 0]])
    both = TextEmbedding.cat([e[:2], e[2:]])
    assert torch.equal(both.tokens, e.tokens) and torch.equal(both.mask, e.mask)
    half = e.to("cpu", dtype=torch.float16)
    assert half.tokens.dtype == torch.float16 and half.mask.dtype == torch.bool
