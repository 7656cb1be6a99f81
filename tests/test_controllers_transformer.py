"""Annealing for transformers (anacuda.nn.controller): layer groups that follow the blocks,
controllers stepped per optimiser step (and resumed exactly), and the λ warm-up of Hugging
Face's 1.58-bit fine-tuning (huggingface/blog#2339) as alpha-blending."""

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from anacuda import Quantizer
from anacuda import functional as F
from anacuda.nn import AlphaController, BitLinear, NoiseController, TernaryLinear, auto_groups
from conftest import bitnet_activation_quant as activation_quant, bitnet_weight_quant as weight_quant


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")  # tiny tensors: one thread


class Block(nn.Module):
    """A pre-norm transformer block's Linear layers (attention as a plain mix, enough here)."""

    def __init__(self, d, linear, experts=0):
        super().__init__()
        self.qkv, self.proj = linear(d, 3 * d), linear(d, d)
        self.fc1, self.fc2 = linear(d, 2 * d), linear(2 * d, d)
        self.experts = nn.ModuleList(linear(d, d) for _ in range(experts))  # a list inside a block

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        x = x + self.proj(torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1) @ v)
        for e in self.experts:
            x = x + e(x)
        return x + self.fc2(nn.functional.gelu(self.fc1(x)))


class GPT(nn.Module):
    """GPT-2's layout (``transformer.h.<i>``), a float embedding and an optionally quantised head."""

    def __init__(self, linear, n_layer=3, d=16, vocab=11, head=None, experts=0):
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.wte = nn.Embedding(vocab, d)
        self.transformer.h = nn.ModuleList(Block(d, linear, experts) for _ in range(n_layer))
        self.lm_head = (head or nn.Linear)(d, vocab)

    def forward(self, idx):
        x = self.transformer.wte(idx)
        for b in self.transformer.h:
            x = b(x)
        return self.lm_head(x)


def ana(d_in, d_out, **kw):
    """ANA on the ternary weights, BitNet's hard 8-bit activations (the demo's ANA layer)."""
    return TernaryLinear(d_in, d_out, bias=False, noise="normal", strategy="expectation", sigma=0.25,
                         activation_sigma=0.0, activation_backward_noise="identity", **kw)


def both_noisy(d_in, d_out):
    return TernaryLinear(d_in, d_out, sigma=0.5)


# --- groups that follow the blocks ---------------------------------------------------------------
def test_auto_groups_by_block_gpt_layout():
    model = GPT(ana, n_layer=3, head=both_noisy, experts=2)
    groups = auto_groups(model, by="blocks")
    assert len(groups) == 4  # three blocks, then the quantised head
    for i, g in enumerate(groups[:3]):
        # the block's noisy quantisers (weights), the experts' included; the hard activations left out
        assert g == [f"transformer.h.{i}.{m}.weight_quant" for m in ("qkv", "proj", "fc1", "fc2", "experts.0",
                                                                     "experts.1")]
    assert groups[3] == ["lm_head.input_quant", "lm_head.weight_quant"]
    # the layer rule (the default) does not see blocks: TernaryLinear has no ANA weight layer
    assert len(auto_groups(model)) == 1 and auto_groups(model) == auto_groups(model, by="layers")


@pytest.mark.parametrize("layout", ["layers", "sequential", "root"])
def test_auto_groups_by_block_other_layouts(layout):
    """Llama's / nn.TransformerEncoder's ``layers.<i>``, an nn.Sequential of blocks, and a model
    that is itself the list of blocks."""
    blocks = [Block(8, both_noisy) for _ in range(2)]
    if layout == "layers":
        model = nn.Module()
        model.layers = nn.ModuleList(blocks)
        prefix = "layers."
    elif layout == "sequential":
        model = nn.Module()
        model.blocks = nn.Sequential(*blocks)
        prefix = "blocks."
    else:
        model, prefix = nn.Sequential(*blocks), ""
    groups = auto_groups(model, by="blocks")
    assert [sorted({n[len(prefix):].split(".")[0] for n in g}) for g in groups] == [["0"], ["1"]]
    assert all(len(g) == 8 for g in groups)  # 4 layers x (input, weight), all noisy here


def test_auto_groups_by_block_rules():
    # consecutive quantisers outside blocks share a group; a block between them splits it
    model = nn.Module()
    model.pre = both_noisy(8, 8)
    model.layers = nn.ModuleList([Block(8, both_noisy)])
    model.post1, model.post2 = both_noisy(8, 8), both_noisy(8, 8)
    g = auto_groups(model, by="blocks")
    assert [len(x) for x in g] == [2, 8, 4] and g[0][0] == "pre.input_quant" and g[2][-1] == "post2.weight_quant"
    # a list of quantised layers is not a list of blocks: its elements are the quantisers' layers
    flat = nn.ModuleList([both_noisy(8, 8), both_noisy(8, 8)])
    assert [len(x) for x in auto_groups(flat, by="blocks")] == [2, 2]
    # a list of different things (a model wrapped with its embedding) is not a list of blocks
    wrapped = nn.Sequential(nn.Embedding(5, 8), GPT(ana, n_layer=2, d=8))
    assert [sorted({n.split(".")[3] for n in g}) for g in auto_groups(wrapped, by="blocks")] == [["0"], ["1"]]
    # a CNN's nn.Sequential of mixed layers has no blocks: consecutive quantisers form one group
    from anacuda.nn import convert
    cnn = convert(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
    assert auto_groups(cnn, by="blocks") == [[n for g in auto_groups(cnn) for n in g]]
    with pytest.raises(ValueError, match="by must be one of"):
        auto_groups(model, by="block")


def test_noise_controller_per_block_and_per_step():
    torch.manual_seed(0)
    model = GPT(ana, n_layer=3)
    ctl = NoiseController(model, steps=30, groups="blocks", window="partition")
    assert len(ctl.groups) == 3
    for _ in range(15):
        ctl.step()  # once per optimiser step
    s = [v["sigma"] for v in ctl.values()]
    assert s[0] == 0 and s[1] == pytest.approx(0.25 * (1 - 5 / 10) ** 2) and s[2] == pytest.approx(0.25)
    assert model.transformer.h[1].fc2.weight_quant.sigma.item() == pytest.approx(s[1])
    # the hard activations are left alone
    assert all(b.qkv.input_quant.sigma.item() == 0 for b in model.transformer.h)
    # steps= is the horizon in steps: the same clock as the positional one
    other = NoiseController(GPT(ana, n_layer=3), 30, groups="blocks", window="partition")
    assert other.state_dict()["config"] == ctl.state_dict()["config"]


def test_mixed_start_values_in_a_group_are_refused():
    """A group has one start σ: the layer rule puts BitNet's hard activations (σ = 0) and the
    weights (σ = 0.25) in one group here; silently starting all from the first would freeze the
    weights."""
    model = GPT(ana, n_layer=1)
    with pytest.raises(ValueError, match="start from different sigma"):
        NoiseController(model, 10)
    ctl = NoiseController(model, 10, sigma0=0.25)  # an explicit start is taken for all
    assert model.transformer.h[0].qkv.input_quant.sigma.item() == pytest.approx(0.25)
    assert ctl.values()[0]["sigma"] == pytest.approx(0.25)


def test_bad_horizons_and_groups():
    model = GPT(ana, n_layer=1)
    with pytest.raises(TypeError, match="epochs or as steps, not both"):
        NoiseController(model, 10, steps=10, groups="blocks")
    with pytest.raises(ValueError, match="steps must be > 0, got 0"):
        NoiseController(model, steps=0, groups="blocks")
    with pytest.raises(TypeError, match="steps must be a number"):
        NoiseController(model, steps="10", groups="blocks")
    with pytest.raises(TypeError, match="groups must be a list of lists of module names or a rule"):
        NoiseController(model, 10, groups="block")
    hard = GPT(lambda i, o: BitLinear(i, o), n_layer=1)
    with pytest.raises(ValueError, match="no quantiser to anneal"):
        NoiseController(hard, 10, groups="blocks")


def _train(model, ctl, opt, steps, gen):
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, 11, (4, 7), generator=gen)
        loss = nn.functional.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        ctl.step()
        losses.append(loss.detach())
    return losses


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("kind", ["noise", "alpha"])
def test_per_step_resume_is_exact(kind):
    """Stop after 3 of 8 steps, save model, optimiser and controller, build everything again
    (the controller before the model's state is loaded) and continue: the same losses, bit for bit."""
    def fresh():
        torch.manual_seed(1)
        if kind == "noise":
            model = GPT(ana, n_layer=2)
            ctl = NoiseController(model, steps=8, groups="blocks", window="same_end")
        else:
            model = GPT(lambda i, o: BitLinear(i, o, blend=True), n_layer=2)
            ctl = AlphaController(model, 4, shape="power", k=4)
        return model, ctl, torch.optim.AdamW(model.parameters(), lr=1e-2)

    model, ctl, opt = fresh()
    straight = _train(model, ctl, opt, 8, torch.Generator().manual_seed(2))

    model, ctl, opt = fresh()
    gen = torch.Generator().manual_seed(2)
    first = _train(model, ctl, opt, 3, gen)
    saved = _roundtrip({"model": model.state_dict(), "opt": opt.state_dict(), "ctl": ctl.state_dict()})
    model, ctl, opt = fresh()
    ctl.load_state_dict(saved["ctl"])
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    assert ctl.t == 3
    rest = _train(model, ctl, opt, 5, gen)
    assert torch.equal(torch.stack(first + rest), torch.stack(straight))


# --- the λ warm-up of huggingface/blog#2339 -------------------------------------------------------
# The blog's code, as it writes it (lambda_ is its name; `activation_quant` and `weight_quant` are
# BitNet's, in conftest.py).
def blog_lambda(training_step, total_training_steps):
    lambda_ = min(2 * training_step / total_training_steps, 1)
    return lambda_


def blog_scheduler(step, total_steps, k):
    normalized_step = step / total_steps
    return 1 - (1 - normalized_step)**k


def sigmoid_scheduler(step, total_steps, k):
    # Sigmoid-like curve: slow start, fast middle, slow end
    normalized_step = step / total_steps
    return 1 / (1 + np.exp(-k * (normalized_step - 0.5)))


def blog_bitlinear(layer, x, lambda_):
    """BitNet's BitLinear.forward with the blog's warm-up."""
    w = layer.weight
    x_norm = nn.functional.rms_norm(x, (x.shape[-1],), layer.norm.weight)
    x_quant = x_norm + lambda_ * (activation_quant(x_norm) - x_norm).detach()
    w_quant = w + lambda_ * (weight_quant(w) - w).detach()
    return nn.functional.linear(x_quant, w_quant, layer.bias)


def test_blog_schedules_are_alpha_controller_schedules():
    model = BitLinear(4, 4, blend=True)
    total = 1000
    lin = AlphaController(model, end=total / 2, shape="linear")
    for step in list(range(0, total + 1, 7)) + [499, 500, 501, total]:
        lin.step(step)
        assert lin.alpha() == blog_lambda(step, total), step  # exactly: min(2 step / total, 1)
        assert model.weight_quant.alpha.item() == torch.tensor(blog_lambda(step, total), dtype=torch.float32).item()
    ramp = AlphaController(model, end=1000, shape="linear")  # the blog's min(training_step / 1000, 1)
    ramp.step(250)
    assert ramp.alpha() == min(250 / 1000, 1)
    for k in (4, 6, 8, 10):
        pw = AlphaController(model, end=total, shape="power", k=k)
        sg = AlphaController(model, end=total, shape="sigmoid", k=5 * k)
        for step in range(0, total + 1, 50):
            pw.step(step)
            sg.step(step)
            assert pw.alpha() == pytest.approx(blog_scheduler(step, total, k), rel=1e-12, abs=1e-15)
            assert sg.alpha() == pytest.approx(float(sigmoid_scheduler(step, total, 5 * k)), rel=1e-12)
    assert AlphaController(model, shape="power", k=3).alpha(0.3) == AlphaController(model).alpha(0.3)  # cubic


@pytest.mark.parametrize("lambda_", [0.0, 0.3, 0.75, 1.0])
def test_bitlinear_blend_is_the_blog_recipe_exactly(lambda_):
    """BitLinear(blend=True) at α = λ: the blog's forward (BitNet's quantisers, except at ties)
    and its gradients (the unclipped STE through both terms), for every parameter and the input."""
    torch.manual_seed(3)
    layer = BitLinear(32, 16, bias=True, blend=True)
    with torch.no_grad():
        layer.norm.weight.uniform_(0.5, 1.5)
    total = 100
    ctl = AlphaController(layer, end=total / 2, shape="linear")
    ctl.step(lambda_ * total / 2)
    assert ctl.alpha() == lambda_  # the buffers hold it in float32, as torch casts the blog's Python float
    assert layer.input_quant.alpha.item() == layer.weight_quant.alpha.item() == torch.tensor(lambda_).item()
    x = torch.randn(3, 5, 32, requires_grad=True)
    xr = x.detach().clone().requires_grad_(True)
    y, yr = layer(x), blog_bitlinear(layer, xr, lambda_)
    torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(y)
    params = [layer.weight, layer.norm.weight, layer.bias]
    got = torch.autograd.grad(y, params + [x], g)
    ref = torch.autograd.grad(yr, params + [xr], g)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    if 0 < lambda_ < 1:  # a blend: neither the float layer nor the quantised one
        layer.weight_quant.alpha.fill_(0.0)
        layer.input_quant.alpha.fill_(0.0)
        assert not torch.allclose(layer(x), y)
    # eval mode: the deployed network is the fully quantised one, whatever α
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), blog_bitlinear(layer, x, 1.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lambda_", [0.0, 0.4, 1.0])
def test_alpha_blend_has_the_blog_forward_and_a_scaled_gradient(lambda_):
    """functional.alpha_blend (Liu & Mattina) at α = λ with BitNet's absmean scale: the same
    forward as the blog's w + λ (weight_quant(w) − w).detach(); its gradient is (1 − λ) times the
    blog's (no gradient through the quantised term), so it is the blog's forward, not its backward."""
    torch.manual_seed(4)
    w = (torch.randn(24, 40) * 0.02).requires_grad_(True)
    wr = w.detach().clone().requires_grad_(True)
    y = F.alpha_blend(w, Quantizer.ternary(), lambda_, eps="absmean")
    w_quant = wr + lambda_ * (weight_quant(wr) - wr).detach()
    torch.testing.assert_close(y, w_quant, rtol=1e-5, atol=1e-7)
    g = torch.randn_like(y)
    (gw,) = torch.autograd.grad(y, w, g)
    (gr,) = torch.autograd.grad(w_quant, wr, g)
    assert torch.equal(gr, g)  # the blog's: the identity
    torch.testing.assert_close(gw, (1 - lambda_) * g, rtol=1e-6, atol=0)


def test_blend_with_ana_backward_and_compile():
    """A blend quantiser with an ANA backward: gradient 1 − α + α · the quantiser's; α written by
    the controller changes nothing in the compiled graph (no recompilation)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch.manual_seed(5)
    layer = TernaryLinear(16, 8, noise="uniform", strategy="expectation", sigma=0.5, blend=True, activation_bits=None)
    ctl = AlphaController(layer, 10, shape="linear")
    ctl.step(4)
    w = layer.weight
    y = layer.weight_quant(w)
    (gw,) = torch.autograd.grad(y, w, torch.ones_like(w))
    m = w.detach().abs().mean()
    u = (w.detach() / m).abs()  # ternary, expectation, uniform 0.5: clamp(u, -1, 1), slope 1 on |u| < 1 (SPEC §5)
    inside, outside = u < 0.99, u > 1.01
    assert inside.any() and outside.any()
    torch.testing.assert_close(gw[inside], torch.ones_like(gw[inside]))  # 1 - 0.4 + 0.4 * 1
    torch.testing.assert_close(gw[outside], torch.full_like(gw[outside], 0.6))  # 1 - 0.4 + 0.4 * 0
    torch._dynamo.reset()
    cnt = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(layer, backend=cnt, fullgraph=True)
    x = torch.randn(2, 3, 16)
    for t in (0, 3, 7, 10):
        ctl.step(t)
        torch.testing.assert_close(compiled(x), layer(x))
    assert cnt.frame_count == 1
    torch._dynamo.reset()


def test_alpha_controller_bad_arguments_and_state():
    model = BitLinear(4, 4, blend=True)
    with pytest.raises(ValueError, match="needs k"):
        AlphaController(model, 10, shape="power")
    with pytest.raises(ValueError, match="k must be > 0"):
        AlphaController(model, 10, shape="sigmoid", k=0)
    with pytest.raises(ValueError, match="k is for the power and sigmoid shapes"):
        AlphaController(model, 10, shape="linear", k=2)
    with pytest.raises(ValueError, match="shape must be 'cubic' or 'linear', or 'power' or 'sigmoid' with k"):
        AlphaController(model, 10, shape="exp")
    with pytest.raises(ValueError, match="no alpha-blending layers.*blend=True"):
        AlphaController(BitLinear(4, 4), 10)
    with pytest.raises(TypeError, match="blend must be a bool"):
        TernaryLinear(4, 4, blend=1)
    a = AlphaController(model, 10, shape="power", k=4)
    a.step(3)
    with pytest.raises(ValueError, match="another configuration"):
        AlphaController(model, 10, shape="power", k=6).load_state_dict(a.state_dict())
    b = AlphaController(model, 10, shape="power", k=4)
    b.load_state_dict(_roundtrip(a.state_dict()))
    assert b.t == 3 and model.weight_quant.alpha.item() == pytest.approx(1 - 0.7 ** 4)
    # the state dict of a cubic or linear controller holds no k (as before)
    assert "k" not in AlphaController(model, 10).state_dict()["config"]
