"""The Titans neural long-term memory (Behrouz, Zhong, Mirrokni, arXiv 2501.00663, §3.1-3.2 and §4.4).

The memory is an MLP M whose weights are the recurrent state. For every token it takes one step of online
gradient descent with momentum and forgetting on the associative loss (eqs. 9-14)

    loss_t = || M_{t-1}(k_t) - v_t ||^2                           (12)
    S_t    = eta_t S_{t-1} - theta_t grad loss_t                  (10, 14)
    M_t    = (1 - alpha_t) M_{t-1} + S_t                          (13)

and is read without an update, y_t = M*(q_t) (eq. 15). Training is chunked (§3.2, eqs. 16-18): inside a
chunk of c tokens all gradients are taken at the chunk-start weights, so they are computed in parallel; the
momentum and decay recurrences are linear, so inside the chunk they become lower-triangular coefficient
matrices (the parallel scan of eq. 18 in closed form); across chunks the recurrence stays non-linear and
sequential.

How it is computed (our engineering, same maths):
- Gradients are analytic: for an MLP z_l = a_{l-1} W_l, a_l = act(z_l), the gradient of loss_t with
  respect to W_l is the outer product a_{t,l-1}^T delta_{t,l} (delta from the usual backward recursion), so
  a chunk's gradients are two small matrices per layer, never a per-token weight tensor, and the update does
  not rely on autograd (the memory keeps learning under ``torch.inference_mode``).
- Reads at per-token weights inside a chunk ("after"/"before") use the same outer-product structure:
  r W_{l,t} = m_t (r W_l) + s_t (r S_l) - sum_i K[t, i] (r . a_{i,l-1}) delta_{i,l}, an attention-like
  masked product of size chunk x chunk.
- Backward: a custom autograd Function stores the memory state only every ``checkpoint_every`` chunks and
  recomputes the weight trajectory of each stretch during the backward (O(sqrt(n)) stored states).

Deviations and open choices (also in docs/fidelity/titans.md):
- The memory's output is RMS-normalised by default (``norm=True``; the paper's plain MLP is ``norm=False``):
  without it the inner gradient descent of a deep memory diverged in our training runs.
- theta_t is capped at 1 / chunk_size by default (gradients of a chunk add up at the same weights).
- Per-chunk gates are computed from the chunk's FIRST token (the paper does not say how; a mean over the
  chunk would let earlier tokens see later ones).
- Read mode, MLP activation, M_0, gate parameterisation, conv kernel width, output norm and gate form are
  options in :class:`~testtime.titans.config.MemoryConfig` with documented defaults.

Shapes: b batch, n sequence, h heads, g = b*h independent memories, c chunk length (the paper's b in
eqs. 16-18), d head_dim, d_in / d_out the sides of one memory weight matrix, e the MLP hidden width,
L = depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from testtime.nn import rms, rms_norm
from testtime.titans.config import MemoryConfig

__all__ = [
    "MemoryState",
    "NeuralMemory",
    "chunk_coefficients",
    "chunk_step",
    "memory_scan",
    "segsum",
]


# ----------------------------------------------------------------------------------------------- maths


def act_fn(z: Tensor, name: str) -> Tensor:
    """The memory MLP's non-linearity."""
    return F.silu(z) if name == "silu" else F.gelu(z)


def act_grad(z: Tensor, name: str) -> Tensor:
    """Derivative of :func:`act_fn` at z (elementwise), written with plain ops so autograd can go through it."""
    if name == "silu":
        s = torch.sigmoid(z)
        return s * (1 + z * (1 - s))
    cdf = 0.5 * (1 + torch.erf(z * (1 / math.sqrt(2))))
    pdf = torch.exp(-0.5 * z * z) * (1 / math.sqrt(2 * math.pi))
    return cdf + z * pdf


def segsum(x: Tensor) -> Tensor:
    """Segment sums: out[..., t, s] = sum_{s < j <= t} x[..., j] for s <= t, -inf above the diagonal.

    Args:
        x: (..., c) log-gates.

    Returns:
        (..., c, c); exp(out) is the matrix of products prod_{j=s+1..t} gate_j (lower triangular).
    """
    c = x.shape[-1]
    xx = x[..., :, None].expand(*x.shape, c)  # [j, s] = x_j
    strict = torch.ones(c, c, dtype=torch.bool, device=x.device).tril(-1)
    xx = xx.masked_fill(~strict, 0.0)
    out = xx.cumsum(dim=-2)  # [t, s] = sum_{j <= t, j > s} x_j
    lower = torch.ones(c, c, dtype=torch.bool, device=x.device).tril()
    return out.masked_fill(~lower, float("-inf"))


@dataclass
class ChunkCoefficients:
    """Closed form of the momentum / decay recurrences inside one chunk (eqs. 16-18), local times 1..c.

    With M_0, S_0 the chunk-start weights and momentum and u_i the gradient of token i at M_0:
        S_t = s_mom[t] S_0 - sum_i k_mom[t, i] u_i
        M_t = m_w[t] M_0 + m_s[t] S_0 - sum_i k_w[t, i] u_i
    (rows of the read coefficients are those of the weights each token reads).
    """

    m_w: Tensor  # g c
    m_s: Tensor  # g c
    k_w: Tensor  # g c c
    s_mom: Tensor  # g c
    k_mom: Tensor  # g c c
    read_w: Tensor | None  # g c      (None: read the chunk-start weights)
    read_s: Tensor | None  # g c
    read_k: Tensor | None  # g c c


def chunk_coefficients(
    theta: Tensor, log_eta: Tensor | None, log_gamma: Tensor | None, *, read: str
) -> ChunkCoefficients:
    """Coefficients of eqs. 16-18 for one chunk.

    Args:
        theta: (g, c) learning rates theta_t.
        log_eta: (g, c) log of the momentum gates eta_t; None: no momentum (eta = 0, Table 5).
        log_gamma: (g, c) log(1 - alpha_t); None: no forgetting (alpha = 0, Table 5).
        read: "after" (token t reads M_t), "before" (M_{t-1}) or "chunk_start" (M_0).

    Returns:
        The :class:`ChunkCoefficients`.
    """
    g, c = theta.shape
    eye = torch.eye(c, dtype=theta.dtype, device=theta.device).expand(g, c, c)
    if log_gamma is not None:
        p_gamma = torch.exp(segsum(log_gamma))
    else:
        p_gamma = theta.new_ones(c, c).tril().expand(g, c, c)
    m_w = torch.exp(log_gamma.cumsum(-1)) if log_gamma is not None else theta.new_ones(g, c)
    if log_eta is not None:
        p_eta = torch.exp(segsum(log_eta))
        s_mom = torch.exp(log_eta.cumsum(-1))
        m_s = (p_gamma @ s_mom[..., None])[..., 0]
        k_w = (p_gamma @ p_eta) * theta[:, None, :]
        k_mom = p_eta * theta[:, None, :]
    else:
        s_mom = theta.new_zeros(g, c)
        m_s = theta.new_zeros(g, c)
        k_w = p_gamma * theta[:, None, :]
        k_mom = eye * theta[:, None, :]
    if read == "after":
        read_w, read_s, read_k = m_w, m_s, k_w
    elif read == "before":  # row t is the row of M_{t-1}; row 0 is M_0 itself
        read_w = torch.cat([theta.new_ones(g, 1), m_w[:, :-1]], dim=1)
        read_s = torch.cat([theta.new_zeros(g, 1), m_s[:, :-1]], dim=1)
        read_k = torch.cat([theta.new_zeros(g, 1, c), k_w[:, :-1]], dim=1)
    else:
        read_w = read_s = read_k = None
    return ChunkCoefficients(
        m_w=m_w, m_s=m_s, k_w=k_w, s_mom=s_mom, k_mom=k_mom, read_w=read_w, read_s=read_s, read_k=read_k
    )


def rms_normalize(z: Tensor) -> tuple[Tensor, Tensor]:
    """z / r with r = sqrt(mean(z^2) + eps) over the last axis (:func:`testtime.nn.rms`); returns (z / r, r).

    The scale r is returned because the analytic inner backward needs it.
    """
    r = rms(z, eps=1e-6)
    return z / r, r


def mlp_forward_backward(
    k: Tensor, v: Tensor, weights: list[Tensor], *, act: str, residual: bool, norm: bool = False
) -> tuple[list[Tensor], list[Tensor]]:
    """Layer inputs and output-side gradients of loss_t = ||M(k_t) - v_t||^2 for every token (eq. 12).

    The gradient of token t's loss with respect to W_l is the outer product a[l][t]^T delta[l][t].

    Args:
        k, v: (g, c, d) keys and values.
        weights: L tensors (g, d_in, d_out), the chunk-start weights.
        act: the MLP non-linearity.
        residual: the memory is k + MLP(k).
        norm: the MLP's output is RMS-normalised (no gain) before the residual.

    Returns:
        (a, delta): per layer, inputs a[l] (g, c, d_in) and deltas delta[l] (g, c, d_out).
    """
    inputs, pre = [k], []
    h = k
    for index, w in enumerate(weights):
        z = h @ w
        if index < len(weights) - 1:
            pre.append(z)
            h = act_fn(z, act)
            inputs.append(h)
    zn, r = rms_normalize(z) if norm else (z, None)
    out = zn + k if residual else zn
    delta = 2.0 * (out - v)
    if r is not None:  # back through z / r: (g - n mean(g n)) / r
        delta = (delta - zn * (delta * zn).mean(dim=-1, keepdim=True)) / r
    deltas = [delta]
    for index in range(len(weights) - 2, -1, -1):
        delta = (delta @ weights[index + 1].mT) * act_grad(pre[index], act)
        deltas.append(delta)
    deltas.reverse()
    return inputs, deltas


def _last_rows(co: ChunkCoefficients) -> dict[str, Tensor | None]:
    """The coefficient tensors one chunk step needs (reads, and the rows of the chunk's last token)."""
    return {
        "read_w": co.read_w,
        "read_s": co.read_s,
        "read_k": co.read_k,
        "last_w": co.m_w[:, -1],
        "last_s": co.m_s[:, -1],
        "last_kw": co.k_w[:, -1],
        "last_smom": co.s_mom[:, -1],
        "last_kmom": co.k_mom[:, -1],
    }


COEF_NAMES = ("read_w", "read_s", "read_k", "last_w", "last_s", "last_kw", "last_smom", "last_kmom")


def _chunk_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    co: dict[str, Tensor | None],
    weights: list[Tensor],
    momenta: list[Tensor],
    *,
    act: str,
    residual: bool,
    norm: bool = False,
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """:func:`chunk_step` with precomputed coefficients (``COEF_NAMES``; read_* None: chunk-start reads)."""
    inputs, deltas = mlp_forward_backward(k, v, weights, act=act, residual=residual, norm=norm)
    read_w, read_s, read_k = co["read_w"], co["read_s"], co["read_k"]
    r = q
    for index, w in enumerate(weights):
        z = r @ w
        if read_k is not None:
            assert read_w is not None
            z = read_w[..., None] * z
            if momenta:
                assert read_s is not None
                z = z + read_s[..., None] * (r @ momenta[index])
            scores = read_k * (r @ inputs[index].mT)  # g c c
            z = torch.baddbmm(z, scores, deltas[index], alpha=-1.0)
        r = act_fn(z, act) if index < len(weights) - 1 else z
    if norm:
        r = rms_normalize(r)[0]
    y = r + q if residual else r
    last_w, last_kw = co["last_w"], co["last_kw"]
    assert last_w is not None and last_kw is not None
    new_weights, new_momenta = [], []
    for index, w in enumerate(weights):
        a_t = inputs[index].mT  # g d_in c
        w_new = torch.baddbmm(last_w[:, None, None] * w, a_t, last_kw[..., None] * deltas[index], alpha=-1.0)
        if momenta:
            last_s, last_smom, last_kmom = co["last_s"], co["last_smom"], co["last_kmom"]
            assert last_s is not None and last_smom is not None and last_kmom is not None
            w_new = w_new + last_s[:, None, None] * momenta[index]
            s_new = torch.baddbmm(
                last_smom[:, None, None] * momenta[index],
                a_t,
                last_kmom[..., None] * deltas[index],
                alpha=-1.0,
            )
            new_momenta.append(s_new)
        new_weights.append(w_new)
    return y, new_weights, new_momenta


def chunk_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    theta: Tensor,
    log_eta: Tensor | None,
    log_gamma: Tensor | None,
    weights: list[Tensor],
    momenta: list[Tensor],
    *,
    act: str,
    residual: bool,
    read: str,
    norm: bool = False,
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """One chunk of the memory: read every token (eq. 15), then the weights and momentum at its end (16-18).

    Args:
        q, k, v: (g, c, d).
        theta: (g, c); log_eta, log_gamma: (g, c) or None (see :func:`chunk_coefficients`).
        weights: L tensors (g, d_in, d_out) at the chunk start; momenta: the same shapes, or [] without momentum.
        act, residual, norm: the memory MLP; read: which weights each token reads.

    Returns:
        (y, weights_end, momenta_end) with y (g, c, d).
    """
    co = _last_rows(chunk_coefficients(theta, log_eta, log_gamma, read=read))
    return _chunk_step(q, k, v, co, weights, momenta, act=act, residual=residual, norm=norm)


# ------------------------------------------------------------------------------------ the chunked scan


def scan_coefficients(
    theta: Tensor, log_eta: Tensor | None, log_gamma: Tensor | None, *, chunk_size: int, read: str
) -> dict[str, Tensor | None]:
    """The coefficients of every chunk at once (eqs. 16-18), vectorised over chunks.

    Args:
        theta: (g, n); log_eta, log_gamma: (g, n) or None.
        chunk_size: c; the sequence is padded to a whole number of chunks (padding comes after every real
            token, so the coefficients of real tokens do not depend on it).
        read: the read mode.

    Returns:
        ``COEF_NAMES`` -> tensors with a chunk axis: read_w/read_s (g, N, c), read_k (g, N, c, c), last_w /
        last_s / last_smom (g, N), last_kw / last_kmom (g, N, c); momentum terms None without momentum.
    """
    g, n = theta.shape
    num = math.ceil(n / chunk_size)
    pad = num * chunk_size - n

    def fold(t: Tensor | None) -> Tensor | None:
        if t is None:
            return None
        return F.pad(t, (0, pad)).reshape(g * num, chunk_size)

    co = _last_rows(chunk_coefficients(fold(theta), fold(log_eta), fold(log_gamma), read=read))  # type: ignore[arg-type]
    out: dict[str, Tensor | None] = {}
    for name in COEF_NAMES:
        t = co[name]
        if t is None or (log_eta is None and name in ("read_s", "last_s", "last_smom", "last_kmom")):
            out[name] = None
        else:
            out[name] = t.reshape(g, num, *t.shape[1:])
    return out


def _slice_coefficients(co: dict[str, Tensor | None], index: int, length: int) -> dict[str, Tensor | None]:
    """Chunk ``index``'s coefficients, cut to its ``length`` real tokens."""
    out: dict[str, Tensor | None] = {}
    for name, t in co.items():
        if t is None:
            out[name] = None
        elif t.dim() == 2:
            out[name] = t[:, index]
        elif t.dim() == 3:
            out[name] = t[:, index, :length]
        else:
            out[name] = t[:, index, :length, :length]
    return out


@dataclass(frozen=True)
class _ScanSpec:
    chunk_size: int
    num_layers: int
    act: str
    residual: bool
    checkpoint_every: int
    norm: bool = False


def _bounds(n: int, c: int) -> list[tuple[int, int]]:
    return [(start, min(start + c, n)) for start in range(0, n, c)]


def _run_chunks(
    spec: _ScanSpec,
    qkv: tuple[Tensor, Tensor, Tensor],
    co: dict[str, Tensor | None],
    state: list[Tensor],
    first_chunk: int,
    num_chunks: int,
    y: Tensor | None,
) -> list[Tensor]:
    """Run chunks first_chunk .. first_chunk + num_chunks - 1 from ``state``; writes reads into y when given."""
    q, k, v = qkv
    c, n, num = spec.chunk_size, q.shape[1], spec.num_layers
    for index in range(first_chunk, min(first_chunk + num_chunks, math.ceil(n / c))):
        start, end = index * c, min(index * c + c, n)
        sl = slice(start, end)
        out, w, s = _chunk_step(
            q[:, sl], k[:, sl], v[:, sl], _slice_coefficients(co, index, end - start), state[:num], state[num:],
            act=spec.act, residual=spec.residual, norm=spec.norm,
        )  # fmt: skip
        if y is not None:
            y[:, sl] = out
        if end - start == c:  # a partial last chunk does not commit its state
            state = w + s
    return state


class _ChunkedMemoryScan(torch.autograd.Function):
    """The whole sequence's memory scan with a recomputing backward (stores states every few chunks)."""

    @staticmethod
    def forward(ctx, spec: _ScanSpec, q, k, v, *rest):  # type: ignore[override]
        coefs = dict(zip(COEF_NAMES, rest[: len(COEF_NAMES)], strict=True))
        state = list(rest[len(COEF_NAMES) :])
        g, n, d = q.shape
        num_chunks = math.ceil(n / spec.chunk_size)
        y = q.new_empty(g, n, d)
        checkpoints: list[Tensor] = []
        cur = list(state)
        every = spec.checkpoint_every
        for first in range(0, num_chunks, every):
            checkpoints.extend(cur)
            cur = _run_chunks(spec, (q, k, v), coefs, cur, first, every, y)
        ctx.spec = spec
        ctx.num_state = len(state)
        ctx.present = [coefs[name] is not None for name in COEF_NAMES]
        ctx.save_for_backward(q, k, v, *[t for t in coefs.values() if t is not None], *checkpoints)
        inputs = {id(t) for t in state}
        return (y, *[t.clone() if id(t) in inputs else t for t in cur])

    @staticmethod
    def backward(ctx, dy, *dstate):  # type: ignore[override]
        spec: _ScanSpec = ctx.spec
        saved = list(ctx.saved_tensors)
        q, k, v = saved[:3]
        pos = 3
        coefs: dict[str, Tensor | None] = {}
        for name, present in zip(COEF_NAMES, ctx.present, strict=True):
            coefs[name] = saved[pos] if present else None
            pos += int(present)
        checkpoints = saved[pos:]
        num_state, num_layers, c = ctx.num_state, spec.num_layers, spec.chunk_size
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        dco = {name: torch.zeros_like(t) if t is not None else None for name, t in coefs.items()}
        n = q.shape[1]
        num_chunks = math.ceil(n / c)
        every = spec.checkpoint_every
        dcur = [
            d if d is not None else torch.zeros_like(s)
            for d, s in zip(dstate, checkpoints[:num_state], strict=True)
        ]
        dy = dy if dy is not None else torch.zeros_like(q)
        for seg in range(math.ceil(num_chunks / every) - 1, -1, -1):
            state = [t.detach() for t in checkpoints[seg * num_state : (seg + 1) * num_state]]
            records = []
            with torch.enable_grad():
                for index in range(seg * every, min(seg * every + every, num_chunks)):
                    start, end = index * c, min(index * c + c, n)
                    sl = slice(start, end)
                    leaves = [t[:, sl].detach().requires_grad_() for t in (q, k, v)]
                    co = {
                        name: t.detach().requires_grad_() if t is not None else None
                        for name, t in _slice_coefficients(coefs, index, end - start).items()
                    }
                    leaves_state = [t.detach().requires_grad_() for t in state]
                    out, w, s = _chunk_step(
                        *leaves, co, leaves_state[:num_layers], leaves_state[num_layers:],
                        act=spec.act, residual=spec.residual, norm=spec.norm,
                    )  # fmt: skip
                    complete = end - start == c
                    records.append((index, sl, leaves, co, leaves_state, out, w + s, complete))
                    if complete:
                        state = [t.detach() for t in w + s]
            for index, sl, leaves, co, leaves_state, out, new_state, complete in reversed(records):
                outputs = [out] + (new_state if complete else [])
                grad_out = [dy[:, sl]] + (dcur if complete else [])
                co_names = [name for name, t in co.items() if t is not None]
                wrt = leaves + [co[name] for name in co_names] + leaves_state
                got = torch.autograd.grad(outputs, wrt, grad_out, allow_unused=True)
                for full, gi in zip((dq, dk, dv), got[:3], strict=True):
                    if gi is not None:
                        full[:, sl] += gi
                length = sl.stop - sl.start
                for name, gi in zip(co_names, got[3 : 3 + len(co_names)], strict=True):
                    full = dco[name]
                    assert full is not None
                    if gi is None:
                        continue
                    if full.dim() == 2:
                        full[:, index] += gi
                    elif full.dim() == 3:
                        full[:, index, :length] += gi
                    else:
                        full[:, index, :length, :length] += gi
                dstate_in = [
                    gs if gs is not None else torch.zeros_like(ls)
                    for gs, ls in zip(got[3 + len(co_names) :], leaves_state, strict=True)
                ]
                if complete:
                    dcur = dstate_in
                else:  # the partial chunk starts from the returned state: add, do not replace
                    dcur = [a + b for a, b in zip(dcur, dstate_in, strict=True)]
        return (None, dq, dk, dv, *[dco[name] for name in COEF_NAMES], *dcur)


def memory_scan(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    theta: Tensor,
    log_eta: Tensor | None,
    log_gamma: Tensor | None,
    weights: list[Tensor],
    momenta: list[Tensor],
    *,
    chunk_size: int,
    act: str = "silu",
    residual: bool = False,
    read: str = "after",
    checkpoint_every: int | None = None,
    norm: bool = False,
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Chunked-parallel memory over a sequence that starts at a chunk boundary (eqs. 9-18).

    Args:
        q, k, v: (g, n, d).
        theta: (g, n); log_eta, log_gamma: (g, n) or None (no momentum / no forgetting).
        weights: L tensors (g, d_in, d_out), M_0; momenta: the same shapes (S_0), or [] without momentum.
        chunk_size: c, the chunk length (the paper writes b in eq. 16).
        act, residual, read, norm: see :class:`~testtime.titans.config.MemoryConfig`.
        checkpoint_every: chunks between states stored for the backward (None: ~sqrt(number of chunks);
            0: plain autograd, every chunk's weights stored).

    Returns:
        (y, weights, momenta): the reads y (g, n, d) and the state after the last COMPLETE chunk (a trailing
        partial chunk is read but not committed: the next call continues it).
    """
    if (log_eta is None) != (len(momenta) == 0):
        raise ValueError("pass momenta exactly when log_eta is given")
    n = q.shape[1]
    num_chunks = max(1, math.ceil(n / chunk_size))
    every = checkpoint_every if checkpoint_every is not None else max(1, math.isqrt(num_chunks))
    spec = _ScanSpec(
        chunk_size=chunk_size, num_layers=len(weights), act=act, residual=residual, checkpoint_every=every,
        norm=norm,
    )  # fmt: skip
    coefs = scan_coefficients(theta, log_eta, log_gamma, chunk_size=chunk_size, read=read)
    state = list(weights) + list(momenta)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, *coefs.values(), *state)
    )
    if needs_grad and every > 0:
        y, *new_state = _ChunkedMemoryScan.apply(spec, q, k, v, *coefs.values(), *state)
    elif needs_grad:  # plain autograd through the chunk loop: stores every chunk's weights, no recompute
        outs: list[Tensor] = []
        for index, (start, end) in enumerate(_bounds(n, chunk_size)):
            sl = slice(start, end)
            out, w, s = _chunk_step(
                q[:, sl], k[:, sl], v[:, sl], _slice_coefficients(coefs, index, end - start),
                state[: len(weights)], state[len(weights) :], act=act, residual=residual, norm=norm,
            )  # fmt: skip
            outs.append(out)
            if end - start == chunk_size:
                state = w + s
        y, new_state = torch.cat(outs, dim=1), state
    else:
        y = q.new_empty(q.shape)
        new_state = _run_chunks(spec, (q, k, v), coefs, state, 0, num_chunks, y)
    num = len(weights)
    return y, list(new_state[:num]), list(new_state[num:])


# --------------------------------------------------------------------------------------------- module


@dataclass
class MemoryState:
    """The streaming state of one :class:`NeuralMemory` for a batch (one memory per sequence).

    Attributes:
        weights: L tensors (b*h, d_in, d_out): the memory at the last chunk boundary.
        momenta: the momentum S at that boundary (same shapes; empty without momentum).
        pending: keys, values and gates of the tokens since that boundary (the partial chunk), each (b*h, p, ...).
        conv: the last conv_kernel - 1 projected inputs (b, conv_kernel - 1, 3*h*d), or None.
        position: tokens seen so far.
    """

    weights: list[Tensor]
    momenta: list[Tensor]
    pending: dict[str, Tensor] = field(default_factory=dict)
    conv: Tensor | None = None
    position: int = 0

    def tensors(self) -> dict[str, Tensor]:
        """All tensors by name (for saving with safetensors or torch.save)."""
        out = {f"weights.{i}": w for i, w in enumerate(self.weights)}
        out.update({f"momenta.{i}": s for i, s in enumerate(self.momenta)})
        out.update({f"pending.{key}": t for key, t in self.pending.items()})
        if self.conv is not None:
            out["conv"] = self.conv
        out["position"] = torch.tensor(self.position)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> MemoryState:
        """Inverse of :meth:`tensors`."""

        def collect(prefix: str) -> list[Tensor]:
            keys = sorted((k for k in tensors if k.startswith(prefix)), key=lambda k: int(k.split(".")[1]))
            return [tensors[k] for k in keys]

        pending = {k.split(".", 1)[1]: t for k, t in tensors.items() if k.startswith("pending.")}
        return cls(
            weights=collect("weights."), momenta=collect("momenta."), pending=pending,
            conv=tensors.get("conv"), position=int(tensors["position"]),
        )  # fmt: skip

    def detach(self) -> MemoryState:
        """The same state cut from the autograd graph (truncated backpropagation through time)."""
        return MemoryState(
            weights=[w.detach() for w in self.weights], momenta=[s.detach() for s in self.momenta],
            pending={k: t.detach() for k, t in self.pending.items()},
            conv=self.conv.detach() if self.conv is not None else None, position=self.position,
        )  # fmt: skip


def causal_depthwise_conv(x: Tensor, weight: Tensor, cache: Tensor | None) -> tuple[Tensor, Tensor]:
    """Causal depthwise 1D convolution over time (§4.4), continuing from ``cache``.

    Args:
        x: (b, n, ch).
        weight: (ch, 1, K).
        cache: (b, K - 1, ch), the previous inputs, or None (zeros: the sequence starts here).

    Returns:
        (y, new_cache): y (b, n, ch); new_cache (b, K - 1, ch), the last K - 1 inputs.
    """
    kernel = weight.shape[-1]
    if cache is None:
        cache = x.new_zeros(x.shape[0], kernel - 1, x.shape[2])
    full = torch.cat([cache, x], dim=1)
    y = F.conv1d(rearrange(full, "b n ch -> b ch n"), weight, groups=weight.shape[0])
    return rearrange(y, "b ch n -> b n ch"), full[:, full.shape[1] - (kernel - 1) :]


class NeuralMemory(nn.Module):
    """The neural long-term memory as a sequence layer: (b, n, dim) -> (b, n, dim), one memory per sequence.

    q, k, v = l2norm(SiLU(conv(x W_{Q,K,V}))) per head (§4.4); theta, eta, alpha from linear maps of x
    (eqs. 13-14); y = M*(q) (eq. 15); out = W_O (RMSNorm(y) * SiLU(x W_G)) (§4.4).

    Args:
        config: the :class:`~testtime.titans.config.MemoryConfig`.
    """

    def __init__(self, config: MemoryConfig) -> None:
        super().__init__()
        self.config = config
        h, d = config.num_heads, config.head_dim
        assert d is not None
        inner = h * d
        self.to_qkv = nn.Linear(config.dim, 3 * inner, bias=False)
        self.conv = (
            nn.Parameter(torch.empty(3 * inner, 1, config.conv_kernel)) if config.conv_kernel > 0 else None
        )
        self.to_gates = nn.Linear(config.dim, 3 * h)
        self.init_weights = nn.ParameterList(
            [nn.Parameter(torch.empty(h, d_in, d_out)) for d_in, d_out in config.layer_dims]
        )
        self.out_norm_weight = nn.Parameter(torch.ones(h, d)) if config.output_norm else None
        self.to_gate_out = nn.Linear(config.dim, inner, bias=False) if config.output_gate else None
        self.to_out = nn.Linear(inner, config.dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise: gate projections start at their biases; M_0 ~ N(0, 1/d_in) (or zero)."""
        cfg = self.config
        if self.conv is not None:  # start near identity on the current token, as a small learned smoother
            nn.init.normal_(self.conv, std=0.02)
            with torch.no_grad():
                self.conv[:, 0, -1] += 1.0
        nn.init.zeros_(self.to_gates.weight)
        h = cfg.num_heads
        with torch.no_grad():
            self.to_gates.bias[:h] = cfg.theta_bias
            self.to_gates.bias[h : 2 * h] = cfg.eta_bias
            self.to_gates.bias[2 * h :] = cfg.alpha_bias
        for w in self.init_weights:
            if cfg.learned_init:
                nn.init.normal_(w, std=1.0 / math.sqrt(w.shape[1]))
            else:
                nn.init.zeros_(w)
        if not cfg.learned_init:
            for w in self.init_weights:
                w.requires_grad_(False)

    # -- state

    def init_state(self, batch_size: int) -> MemoryState:
        """The state before any token: M_0 for each sequence, zero momentum, empty conv cache."""
        weights = [w.repeat(batch_size, 1, 1) for w in self.init_weights]  # (b h) d_in d_out, b-major
        momenta = [torch.zeros_like(w) for w in weights] if self.config.momentum else []
        return MemoryState(weights=weights, momenta=momenta)

    # -- pieces

    def _heads(self, t: Tensor) -> Tensor:
        return rearrange(t, "b n (h d) -> (b h) n d", h=self.config.num_heads)

    def project_qkv(
        self, x: Tensor, conv_cache: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """q, k, v as (b*h, n, d) after projection, causal conv, SiLU and l2 norm of q and k (§4.4)."""
        proj = self.to_qkv(x)
        new_cache = None
        if self.conv is not None:
            proj, new_cache = causal_depthwise_conv(proj, self.conv, conv_cache)
        q, k, v = (self._heads(t) for t in F.silu(proj).chunk(3, dim=-1))
        if self.config.qk_l2norm:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        return q, k, v, new_cache

    def project_queries(self, x: Tensor, conv_cache: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Queries only (the read path of MAC, eq. 21), with their own conv cache (b, K - 1, h*d)."""
        inner = self.config.num_heads * self.config.head_dim  # type: ignore[operator]
        proj = F.linear(x, self.to_qkv.weight[:inner])
        new_cache = None
        if self.conv is not None:
            proj, new_cache = causal_depthwise_conv(proj, self.conv[:inner], conv_cache)
        q = self._heads(F.silu(proj))
        if self.config.qk_l2norm:
            q = F.normalize(q, dim=-1)
        return q, new_cache

    def gates(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-token theta_t, log eta_t, log(1 - alpha_t), each (b*h, n) (eqs. 13-14)."""
        raw = rearrange(self.to_gates(x), "b n (k h) -> k (b h) n", k=3)
        theta = self.config.lr_cap * torch.sigmoid(raw[0])
        return theta, F.logsigmoid(raw[1]), F.logsigmoid(-raw[2])

    def output(self, y: Tensor, x: Tensor) -> Tensor:
        """Output normalisation, gating and projection (§4.4); y (b*h, n, d), x (b, n, dim)."""
        y = rearrange(y, "(b h) n d -> b n h d", h=self.config.num_heads)
        if self.out_norm_weight is not None:
            y = rms_norm(y, self.out_norm_weight, eps=torch.finfo(y.dtype).eps)
        y = rearrange(y, "b n h d -> b n (h d)")
        if self.to_gate_out is not None:
            y = y * F.silu(self.to_gate_out(x))
        return self.to_out(y)

    def read(
        self, x: Tensor, weights: list[Tensor], conv_cache: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Retrieval without update (eq. 15) from fixed memory weights, e.g. MAC's h_t = M*_{t-1}(q_t) (eq. 21).

        Args:
            x: (b, n, dim) inputs to take queries from.
            weights: L tensors (b*h, d_in, d_out), the memory to read.
            conv_cache: the query convolution's cache for this stream.

        Returns:
            (out (b, n, dim), new conv cache).
        """
        q, cache = self.project_queries(x, conv_cache)
        r = q
        for index, w in enumerate(weights):
            r = r @ w
            if index < len(weights) - 1:
                r = act_fn(r, self.config.activation)
        if self.config.norm:
            r = rms_normalize(r)[0]
        if self.config.residual:
            r = r + q
        return self.output(r, x), cache

    # -- the layer

    def forward(self, x: Tensor, state: MemoryState | None = None) -> tuple[Tensor, MemoryState]:
        """Read and write the memory for every token of x (eqs. 9-15), continuing from ``state``.

        Args:
            x: (b, n, dim).
            state: the memory after the previous tokens (None: a fresh memory).

        Returns:
            (out, state): out (b, n, dim) and the state after x (streaming: feeding a sequence in pieces gives
            the same outputs as feeding it whole).
        """
        cfg = self.config
        b, n, _ = x.shape
        if state is None:
            state = self.init_state(b)
        q, k, v, conv_cache = self.project_qkv(x, state.conv)
        theta, log_eta, log_gamma = self.gates(x)
        p = state.pending["k"].shape[1] if state.pending else 0
        if p:
            pend = state.pending
            q = torch.cat([torch.zeros_like(pend["k"]), q], dim=1)
            k, v = torch.cat([pend["k"], k], dim=1), torch.cat([pend["v"], v], dim=1)
            theta = torch.cat([pend["theta"], theta], dim=1)
            log_eta = torch.cat([pend["log_eta"], log_eta], dim=1)
            log_gamma = torch.cat([pend["log_gamma"], log_gamma], dim=1)
        raw = {"k": k, "v": v, "theta": theta, "log_eta": log_eta, "log_gamma": log_gamma}
        if cfg.gates == "chunk":  # one value per chunk, from its first token (causal)
            c = cfg.chunk_size
            first = torch.arange(theta.shape[1], device=x.device) // c * c
            theta, log_eta, log_gamma = theta[:, first], log_eta[:, first], log_gamma[:, first]
        y, weights, momenta = memory_scan(
            q, k, v, theta,
            log_eta if cfg.momentum else None,
            log_gamma if cfg.weight_decay else None,
            state.weights, state.momenta,
            chunk_size=cfg.chunk_size, act=cfg.activation, residual=cfg.residual, read=cfg.read,
            checkpoint_every=cfg.checkpoint_every, norm=cfg.norm,
        )  # fmt: skip
        total = p + n
        done = total // cfg.chunk_size * cfg.chunk_size
        pending = {key: t[:, done:] for key, t in raw.items()} if done < total else {}
        new_state = MemoryState(
            weights=weights, momenta=momenta, pending=pending, conv=conv_cache, position=state.position + n
        )
        return self.output(y[:, p:], x), new_state
