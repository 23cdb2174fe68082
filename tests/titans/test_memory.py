"""The chunked-parallel neural memory against a naive token-by-token recurrence, in float64.

The reference below is written independently of memory.py: it walks the tokens one by one, takes each
token's gradient with torch.autograd (not the analytic formula) at the chunk-start weights, and applies
eqs. 13-14 literally.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from testtime.titans.config import MemoryConfig
from testtime.titans.memory import NeuralMemory, memory_scan


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _mlp(x, weights, act, residual, norm=False):
    h = x
    for i, w in enumerate(weights):
        h = h @ w
        if i < len(weights) - 1:
            h = F.silu(h) if act == "silu" else F.gelu(h)
    if norm:
        h = F.rms_norm(h, (h.shape[-1],), eps=1e-6)
    return h + x if residual else h


def naive_memory(
    q, k, v, theta, eta, alpha, weights, *, chunk, act="silu", residual=False, read="after", norm=False
):
    """Token-by-token eqs. 9-15 with gradients at the chunk-start weights (eq. 16); eta/alpha may be None."""
    g, n, _ = q.shape
    w_cur = [w.clone() for w in weights]
    s_cur = [torch.zeros_like(w) for w in weights]
    anchor = w_cur
    ys = []
    for t in range(n):
        if t % chunk == 0:
            anchor = [w.clone() for w in w_cur]
        with torch.enable_grad():
            leaves = [a.detach().requires_grad_() for a in anchor]
            out = _mlp(k[:, t : t + 1], leaves, act, residual, norm)
            loss = ((out - v[:, t : t + 1]) ** 2).sum()
            grads = torch.autograd.grad(loss, leaves)
        before = w_cur
        e = eta[:, t, None, None] if eta is not None else 0.0
        keep = 1 - alpha[:, t, None, None] if alpha is not None else 1.0
        s_cur = [e * s - theta[:, t, None, None] * u for s, u in zip(s_cur, grads, strict=True)]
        w_cur = [keep * w + s for w, s in zip(w_cur, s_cur, strict=True)]
        read_w = {"after": w_cur, "before": before, "chunk_start": anchor}[read]
        ys.append(_mlp(q[:, t : t + 1], read_w, act, residual, norm))
    return torch.cat(ys, dim=1), w_cur, s_cur


def _inputs(g=3, n=11, d=4, e=6, depth=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(g, n, d, generator=gen), dim=-1)
    k = F.normalize(torch.randn(g, n, d, generator=gen), dim=-1)
    v = torch.randn(g, n, d, generator=gen)
    theta = 0.5 * torch.rand(g, n, generator=gen)
    eta = torch.rand(g, n, generator=gen)
    alpha = 0.3 * torch.rand(g, n, generator=gen)
    dims = [d] + [e] * (depth - 1) + [d]
    weights = [torch.randn(g, a, b, generator=gen) / a**0.5 for a, b in zip(dims[:-1], dims[1:], strict=True)]
    return q, k, v, theta, eta, alpha, weights


@pytest.mark.parametrize(
    "chunk,read,depth",
    [
        (1, "after", 2),  # chunk size 1: plain online gradient descent with momentum and decay
        (1, "before", 1),
        (3, "after", 2),  # 11 tokens: three full chunks and a partial one
        (3, "before", 3),
        (4, "after", 1),
        (4, "chunk_start", 2),
        (4, "before", 2),
        (11, "after", 3),  # one chunk: every gradient at M_0
        (11, "chunk_start", 1),
    ],
)
def test_chunked_equals_naive_recurrence(chunk, read, depth):
    q, k, v, theta, eta, alpha, weights = _inputs(depth=depth)
    y, w_end, s_end = memory_scan(
        q, k, v, theta, eta.log(), torch.log1p(-alpha), weights, [torch.zeros_like(w) for w in weights],
        chunk_size=chunk, read=read,
    )  # fmt: skip
    y_ref, w_ref, s_ref = naive_memory(q, k, v, theta, eta, alpha, weights, chunk=chunk, read=read)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    n_done = q.shape[1] // chunk * chunk  # the state is the one after the last complete chunk
    _, w_ref_done, s_ref_done = naive_memory(
        q[:, :n_done], k[:, :n_done], v[:, :n_done], theta, eta, alpha, weights, chunk=chunk
    )
    for a, b in zip(w_end + s_end, w_ref_done + s_ref_done, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "act,residual,norm,depth",
    [("gelu", False, False, 2), ("silu", True, False, 2), ("silu", False, True, 2), ("gelu", True, True, 3)],
)
def test_activation_residual_and_norm(act, residual, norm, depth):
    q, k, v, theta, eta, alpha, weights = _inputs(depth=depth, seed=1)
    y, _, _ = memory_scan(
        q, k, v, theta, eta.log(), torch.log1p(-alpha), weights, [torch.zeros_like(w) for w in weights],
        chunk_size=4, act=act, residual=residual, norm=norm,
    )  # fmt: skip
    y_ref, _, _ = naive_memory(
        q, k, v, theta, eta, alpha, weights, chunk=4, act=act, residual=residual, norm=norm
    )
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("momentum,decay", [(False, True), (True, False), (False, False)])
def test_ablations_equal_naive(momentum, decay):
    q, k, v, theta, eta, alpha, weights = _inputs(depth=2, seed=2)
    y, _, s_end = memory_scan(
        q, k, v, theta, eta.log() if momentum else None, torch.log1p(-alpha) if decay else None,
        weights, [torch.zeros_like(w) for w in weights] if momentum else [], chunk_size=4,
    )  # fmt: skip
    y_ref, _, _ = naive_memory(
        q, k, v, theta, eta if momentum else None, alpha if decay else None, weights, chunk=4
    )
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    assert (len(s_end) > 0) == momentum


def test_linear_memory_is_gated_delta_rule():
    """Depth 1, eta = 0, chunk 1: W_t = (1 - alpha_t) W_{t-1} - 2 theta_t k_t^T (k_t W_{t-1} - v_t)."""
    q, k, v, theta, _, alpha, weights = _inputs(depth=1, seed=3)
    y, w_end, _ = memory_scan(q, k, v, theta, None, torch.log1p(-alpha), weights, [], chunk_size=1)
    w = weights[0].clone()
    ys = []
    for t in range(q.shape[1]):
        kt, vt = k[:, t : t + 1], v[:, t : t + 1]
        w = (1 - alpha[:, t, None, None]) * w - 2 * theta[:, t, None, None] * kt.mT @ (kt @ w - vt)
        ys.append(q[:, t : t + 1] @ w)
    torch.testing.assert_close(y, torch.cat(ys, dim=1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(w_end[0], w, rtol=1e-12, atol=1e-12)


def test_linear_memory_chunk_closed_form_eq17():
    """Depth 1, eta = 0, one chunk: W_b = beta_b W_0 - sum_i theta_i beta_b / beta_i 2 k_i^T (k_i W_0 - v_i)."""
    q, k, v, theta, _, alpha, weights = _inputs(n=8, depth=1, seed=4)
    _, w_end, _ = memory_scan(q, k, v, theta, None, torch.log1p(-alpha), weights, [], chunk_size=8)
    beta = torch.cumprod(1 - alpha, dim=1)  # g n
    w0 = weights[0]
    coef = theta * beta[:, -1:] / beta  # g n
    grads = 2 * k.mT @ (coef[..., None] * (k @ w0 - v))
    torch.testing.assert_close(w_end[0], beta[:, -1, None, None] * w0 - grads, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("read", ["after", "before", "chunk_start"])
def test_custom_backward_gradcheck(read):
    q, k, v, theta, eta, alpha, weights = _inputs(g=1, n=5, d=2, e=3, depth=2, seed=5)
    momenta = [0.1 * torch.randn_like(w) for w in weights]
    leaves = [t.clone().requires_grad_() for t in (q, k, v, theta, eta.log(), torch.log1p(-alpha))]
    state = [t.clone().requires_grad_() for t in weights + momenta]

    def fn(*args):
        y, w, s = memory_scan(
            *args[:6], list(args[6:8]), list(args[8:]), chunk_size=2, read=read, checkpoint_every=1,
            norm=read == "after",
        )  # fmt: skip
        return (y, *w, *s)

    assert torch.autograd.gradcheck(fn, (*leaves, *state), eps=1e-6, atol=1e-6, fast_mode=True)


def test_custom_backward_matches_plain_autograd():
    """The recomputing Function, the stored (plain autograd) scan and a hand loop over chunk_step agree."""
    from testtime.titans.memory import chunk_step

    q, k, v, theta, eta, alpha, weights = _inputs(g=2, n=13, d=4, e=5, depth=2, seed=6)
    momenta = [torch.zeros_like(w) for w in weights]
    inputs = [q, k, v, theta, eta.log(), torch.log1p(-alpha)]

    def grads(how):
        a = [t.clone().requires_grad_() for t in inputs + weights]
        if how == "loop":  # per-chunk coefficients, no vectorised scan, no custom Function
            cur, ys = a[6:] + momenta, []
            for start in range(0, 13, 4):
                sl = slice(start, min(start + 4, 13))
                yy, ww, ss = chunk_step(
                    *(t[:, sl] for t in a[:6]), cur[:2], cur[2:], act="silu", residual=False, read="after"
                )
                ys.append(yy)
                if sl.stop - sl.start == 4:
                    cur = ww + ss
            y, w = torch.cat(ys, dim=1), cur[:2]
        else:
            y, w, _ = memory_scan(*a[:6], a[6:], momenta, chunk_size=4, checkpoint_every=how)
        ((y**2).sum() + (w[0] ** 3).sum()).backward()
        return [t.grad for t in a]

    reference = grads("loop")
    for how in (1, 2, 0):
        for got, want in zip(grads(how), reference, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def _module(**overrides):
    torch.manual_seed(0)
    cfg = MemoryConfig.tiny(**overrides)
    mem = NeuralMemory(cfg)
    with torch.no_grad():  # non-trivial gates
        mem.to_gates.weight.normal_(std=0.5)
    return mem


@pytest.mark.parametrize("gates", ["token", "chunk"])
@pytest.mark.parametrize("read", ["after", "before"])
def test_module_equals_naive(gates, read):
    mem = _module(gates=gates, read=read)
    x = torch.randn(2, 10, 16)
    out, _ = mem(x)
    q, k, v, _ = mem.project_qkv(x, None)
    theta, log_eta, log_gamma = mem.gates(x)
    if gates == "chunk":  # the chunk's first token decides the chunk's gates
        first = (torch.arange(10) // 4) * 4
        theta, log_eta, log_gamma = theta[:, first], log_eta[:, first], log_gamma[:, first]
    weights = [w.repeat(2, 1, 1) for w in mem.init_weights]
    y_ref, _, _ = naive_memory(
        q, k, v, theta, log_eta.exp(), -torch.expm1(log_gamma), weights, chunk=4, read=read,
        norm=mem.config.norm,
    )  # fmt: skip
    torch.testing.assert_close(out, mem.output(y_ref, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("gates", ["token", "chunk"])
def test_streaming_equals_full_sequence(gates):
    mem = _module(gates=gates)
    x = torch.randn(2, 23, 16)
    full, state_full = mem(x)
    pieces, state = [], None
    for start, end in [(0, 3), (3, 4), (4, 9), (9, 10), (10, 17), (17, 23)]:
        out, state = mem(x[:, start:end], state)
        pieces.append(out)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-10, atol=1e-10)
    assert state.position == 23 and state_full.position == 23
    for a, b in zip(state.tensors().values(), state_full.tensors().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_token_by_token_under_inference_mode():
    """The memory keeps learning without autograd: decoding one token at a time equals the full pass."""
    mem = _module()
    x = torch.randn(1, 9, 16)
    with torch.no_grad():
        full, _ = mem(x)
    with torch.inference_mode():
        state, outs = None, []
        for t in range(9):
            out, state = mem(x[:, t : t + 1], state)
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-10, atol=1e-10)
    assert not torch.equal(state.weights[0], mem.init_weights[0])


def test_module_gradcheck():
    mem = _module(conv_kernel=2)
    x = torch.randn(1, 6, 16, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: mem(x)[0], (x,), eps=1e-6, atol=1e-6, fast_mode=True)
    out, _ = mem(x)
    out.sum().backward()
    assert all(p.grad is not None for p in mem.parameters() if p.requires_grad)


def test_state_save_load_roundtrip(tmp_path):
    from testtime.titans.memory import MemoryState

    mem = _module()
    x = torch.randn(2, 7, 16)
    _, state = mem(x[:, :5])
    torch.save(state.tensors(), tmp_path / "state.pt")
    loaded = MemoryState.from_tensors(torch.load(tmp_path / "state.pt"))
    a, _ = mem(x[:, 5:], state)
    b, _ = mem(x[:, 5:], loaded)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_config_validation():
    with pytest.raises(ValueError):
        MemoryConfig(dim=10, num_heads=3)
    with pytest.raises(ValueError):
        MemoryConfig(depth=2, learned_init=False)
    with pytest.raises(ValueError):
        MemoryConfig(read="later")  # type: ignore[arg-type]


@pytest.mark.slow
def test_custom_backward_full_gradcheck():
    """Every entry of the Jacobian (not a random projection), read after, partial last chunk."""
    q, k, v, theta, eta, alpha, weights = _inputs(g=1, n=5, d=2, e=3, depth=2, seed=7)
    momenta = [0.1 * torch.randn_like(w) for w in weights]
    leaves = [t.clone().requires_grad_() for t in (q, k, v, theta, eta.log(), torch.log1p(-alpha))]
    state = [t.clone().requires_grad_() for t in weights + momenta]

    def fn(*args):
        y, w, s = memory_scan(*args[:6], list(args[6:8]), list(args[8:]), chunk_size=2, checkpoint_every=1)
        return (y, *w, *s)

    assert torch.autograd.gradcheck(fn, (*leaves, *state), eps=1e-6, atol=1e-6)


def test_default_gates_stay_finite_on_long_sequences():
    """An untrained memory with the default initial gates does not blow up over thousands of tokens."""
    torch.manual_seed(0)
    mem = NeuralMemory(MemoryConfig.tiny(chunk_size=16))
    x = torch.randn(2, 4096, 16)  # unit scale, as after the blocks' RMSNorm
    with torch.no_grad():
        out, state = mem(x)
    assert torch.isfinite(out).all()
    assert all(w.abs().max() < 100 for w in state.weights)
