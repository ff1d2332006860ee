"""Real clients: small Hugging Face transformers models with their norms swapped.

Models are built from transformers' own config classes with random weights (no downloads),
so what runs is transformers' real modelling code: its RMSNorm classes, casting orders and
residual structure.  Skipped when transformers is not installed (it is in the ``test`` extra).
"""

import copy

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fastln.torch import replace_norms  # noqa: E402

TINY = dict(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)


def _llama():
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY, rms_norm_eps=1e-6))


def _qwen2():
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**TINY, rms_norm_eps=1e-6))


def _gemma():
    return transformers.GemmaForCausalLM(
        transformers.GemmaConfig(**TINY, head_dim=16, rms_norm_eps=1e-6)
    )


MODELS = {"llama": _llama, "qwen2": _qwen2, "gemma": _gemma}


def _model(name: str):
    torch.manual_seed(0)
    model = MODELS[name]().float()
    # Norm weights start at 1 (Llama, Qwen2) or 0 (Gemma): perturb them so a swap that
    # ignored the weight, or Gemma's (1 + weight), could not pass.
    with torch.no_grad():
        for module in model.modules():
            if type(module).__name__.endswith("RMSNorm"):
                module.weight.add_(0.3 * torch.randn_like(module.weight))
    return model


def _norm_classes(model):
    return sorted({type(m).__name__ for m in model.modules() if "RMSNorm" in type(m).__name__})


@pytest.mark.parametrize("name", sorted(MODELS))
def test_logits_match_with_norms_swapped(name):
    model = _model(name).eval()
    fast = copy.deepcopy(model)
    expected_count = 2 * TINY["num_hidden_layers"] + 1  # two per layer and the final norm
    _, count = replace_norms(fast, return_count=True)
    assert count >= expected_count
    assert all(cls.startswith("Fastln") for cls in _norm_classes(fast)), _norm_classes(fast)

    ids = torch.randint(0, TINY["vocab_size"], (3, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(ids).logits
        got = fast(ids).logits
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # The logits must actually depend on the norms' weights (the check above is not vacuous).
    with torch.no_grad():
        for module in fast.modules():
            if "RMSNorm" in type(module).__name__:
                module.weight.mul_(0.5)
        moved = fast(ids).logits
    assert (moved - want).abs().max() > 1e-3


@pytest.mark.parametrize("name", sorted(MODELS))
def test_adamw_losses_match_with_norms_swapped(name):
    model = _model(name).train()
    fast = replace_norms(copy.deepcopy(model))
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, TINY["vocab_size"], (4, 16), generator=gen)
    batches = [ids] * 5  # one batch, memorised: the loss must fall

    def losses(m):
        torch.manual_seed(3)  # same dropout masks (dropout is 0 in these configs anyway)
        opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
        out = []
        for ids in batches:
            loss = m(ids, labels=ids).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append(loss.item())
        return out

    want, got = losses(model), losses(fast)
    assert want[-1] < want[0]  # it learns, so the comparison covers moving weights
    assert got == pytest.approx(want, rel=2e-4, abs=2e-5)
    # Norm weights received the same gradients and so moved the same way.
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), fast.named_parameters(), strict=True):
        assert n1 == n2
        if "norm" in n1:
            torch.testing.assert_close(p2, p1, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bfloat16_model_keeps_each_models_casting_order(name):
    model = _model(name).to(torch.bfloat16).eval()
    fast = replace_norms(copy.deepcopy(model))
    ids = torch.randint(0, TINY["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(4))
    hidden = torch.randn(2, 9, TINY["hidden_size"], generator=torch.Generator().manual_seed(5))
    hidden = (hidden * 3).to(torch.bfloat16)
    # Norm by norm: each swapped module rounds exactly where its original does, so the outputs
    # agree to bf16 rounding of float32-accurate values (one ulp at most).
    for (_, a), (_, b) in zip(model.named_modules(), fast.named_modules(), strict=True):
        if "RMSNorm" in type(a).__name__:
            with torch.no_grad():
                ya, yb = a(hidden), b(hidden)
            assert yb.dtype == ya.dtype
            torch.testing.assert_close(yb.float(), ya.float(), rtol=2 ** -7, atol=1e-6)
    with torch.no_grad():
        want = model(ids).logits.float()
        got = fast(ids).logits.float()
    assert (got - want).abs().max() <= 0.05 * want.abs().max()


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_layer_norm_models_match_with_norms_swapped(name):
    """LayerNorm clients: BERT (post-norm, eps 1e-12) and GPT-2 (pre-norm), forward and grads."""
    torch.manual_seed(0)
    if name == "bert":
        cfg = transformers.BertConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=128, hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0)
        model = transformers.BertForMaskedLM(cfg)
    else:
        cfg = transformers.GPT2Config(vocab_size=97, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.add_(0.3 * torch.randn_like(m.weight))
                m.bias.add_(0.1 * torch.randn_like(m.bias))
    fast = copy.deepcopy(model)
    _, count = replace_norms(fast, return_count=True)
    assert count == sum(isinstance(m, torch.nn.LayerNorm) for m in model.modules()) > 0
    ids = torch.randint(0, 97, (2, 13), generator=torch.Generator().manual_seed(1))
    want = model(ids, labels=ids)
    got = fast(ids, labels=ids)
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-5)
    want.loss.backward()
    got.loss.backward()
    for (n1, p1), (_, p2) in zip(model.named_parameters(), fast.named_parameters(), strict=True):
        torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-4, atol=1e-5, msg=n1)
