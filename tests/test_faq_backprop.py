"""FAQ: how does backpropagation work through linear, conv and pooling layers?

Every gradient below is written out by hand with plain tensor arithmetic (no autograd in
the hand-written part) and then checked two ways:

* against autograd of the ``torch.nn.functional`` op (``F.linear``, ``F.conv2d``, ...), and
* with ``torch.autograd.gradcheck`` (float64 finite differences) on an ``autograd.Function``
  whose forward is our hand-written forward and whose backward is our hand-written backward,
  so a wrong formula fails even if autograd and we shared a bug.

Notation: ``L`` is a scalar loss, ``G = dL/dy`` is the upstream gradient, same shape as ``y``.

These are checks of the FAQ's arithmetic: they need no project code and run in ``make test`` so that
the answer in docs/faq.md cannot drift from what PyTorch does.
"""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck
from torch.testing import assert_close

DT = torch.float64


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=DT)


def _autograd_grads(fn, *inputs, G):
    """Reference: gradients of sum(fn(*inputs) * G) w.r.t. every input, via autograd."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    fn(*leaves).backward(G)
    return [t.grad for t in leaves]


# ---------------------------------------------------------------------------------------
# (a) Linear layer  y = x W^T + b     x: (N, I), W: (O, I), b: (O,), y, G: (N, O)
# ---------------------------------------------------------------------------------------
def linear_forward(x, W, b):
    return x @ W.T + b


def linear_backward(x, W, G):
    # y[n,o] = sum_i x[n,i] W[o,i] + b[o]
    dx = G @ W  # dL/dx[n,i] = sum_o G[n,o] W[o,i]             -> (N, I)
    dW = G.T @ x  # dL/dW[o,i] = sum_n G[n,o] x[n,i]           -> (O, I)
    db = G.sum(0)  # b is added to every row, so its grads add up  -> (O,)
    return dx, dW, db


class HandLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W, b):
        ctx.save_for_backward(x, W)
        return linear_forward(x, W, b)

    @staticmethod
    def backward(ctx, G):
        x, W = ctx.saved_tensors
        return linear_backward(x, W, G)


def test_linear_gradients_match_autograd():
    x, W, b, G = _rand(5, 4, seed=1), _rand(3, 4, seed=2), _rand(3, seed=3), _rand(5, 3, seed=4)
    # tiny example fully by hand: x = [[1, 2]], W = [[3, 4]], G = [[2]]  ->  dx = [[6, 8]], dW = [[2, 4]]
    dx, dW, db = linear_backward(
        torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 4.0]]), torch.tensor([[2.0]])
    )
    assert dx.tolist() == [[6.0, 8.0]] and dW.tolist() == [[2.0, 4.0]] and db.tolist() == [2.0]

    ref = _autograd_grads(F.linear, x, W, b, G=G)
    for mine, theirs in zip(linear_backward(x, W, G), ref, strict=True):
        assert_close(mine, theirs)
    assert_close(linear_forward(x, W, b), F.linear(x, W, b))


def test_linear_gradcheck():
    args = (
        _rand(4, 3, seed=5).requires_grad_(),
        _rand(2, 3, seed=6).requires_grad_(),
        _rand(2, seed=7).requires_grad_(),
    )
    assert gradcheck(HandLinear.apply, args)


# ---------------------------------------------------------------------------------------
# (b) Conv2d as cross-correlation, stride s, zero padding p
#     x: (N, C, H, W), w: (O, C, k, k), b: (O,), y, G: (N, O, Ho, Wo), Ho = (H + 2p - k)//s + 1
# ---------------------------------------------------------------------------------------
def correlate(x, w, stride=1):
    """Valid cross-correlation: y[n,o,a,b] = sum_{c,i,j} w[o,c,i,j] x[n,c,a*s+i,b*s+j].

    One einsum per kernel tap (i, j): the tap sees a strided slice of the input.
    """
    k_h, k_w = w.shape[-2:]
    Ho, Wo = (x.shape[-2] - k_h) // stride + 1, (x.shape[-1] - k_w) // stride + 1
    y = x.new_zeros(x.shape[0], w.shape[0], Ho, Wo)
    for i, j in itertools.product(range(k_h), range(k_w)):
        patch = x[:, :, i : i + stride * Ho : stride, j : j + stride * Wo : stride]  # (N, C, Ho, Wo)
        y = y + torch.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return y


def conv_forward(x, w, b, stride, padding):
    return correlate(F.pad(x, [padding] * 4), w, stride) + b[None, :, None, None]


def dilate(G, stride):
    """Insert stride-1 zeros between the entries of G: Gd[.., a*s, b*s] = G[.., a, b]."""
    if stride == 1:
        return G
    N, O, Ho, Wo = G.shape
    Gd = G.new_zeros(N, O, (Ho - 1) * stride + 1, (Wo - 1) * stride + 1)
    Gd[:, :, ::stride, ::stride] = G
    return Gd


def conv_backward(x, w, G, stride, padding):
    k = w.shape[-1]
    xp = F.pad(x, [padding] * 4)  # the forward correlated the padded input
    Gd = dilate(G, stride)  # stride s == dense correlation sampled every s-th position
    # dL/dw[o,c,i,j] = sum_{n,a,b} G[n,o,a,b] xp[n,c,a*s+i,b*s+j]:
    # correlate the input with the (dilated) upstream gradient, batch playing the channel role.
    # (the result is larger than k x k when (H + 2p - k) % s != 0; those extra taps do not exist)
    dw = correlate(xp.transpose(0, 1), Gd.transpose(0, 1)).transpose(0, 1)[:, :, :k, :k]  # (O, C, k, k)
    # dL/dxp[n,c,u,v] = sum_{o,i,j} Gd[n,o,u-i,v-j] w[o,c,i,j]: a *full* correlation of Gd
    # (zero padded by k-1) with the kernel flipped in space and with in/out channels swapped.
    # This is exactly what conv_transpose2d computes.
    w_flip = w.flip(-1, -2).transpose(0, 1)  # (C, O, k, k)
    dxp = correlate(F.pad(Gd, [k - 1] * 4), w_flip)  # (N, C, (Ho-1)s+k, (Wo-1)s+k)
    # rows/cols the strided windows never reached (when (H+2p-k) % s != 0) get zero gradient
    dxp = F.pad(dxp, [0, xp.shape[-1] - dxp.shape[-1], 0, xp.shape[-2] - dxp.shape[-2]])
    dx = dxp[:, :, padding : xp.shape[-2] - padding, padding : xp.shape[-1] - padding]  # drop padding
    db = G.sum((0, 2, 3))  # the bias is added at every output position
    return dx, dw, db


class HandConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, stride, padding):
        ctx.save_for_backward(x, w)
        ctx.stride, ctx.padding = stride, padding
        return conv_forward(x, w, b, stride, padding)

    @staticmethod
    def backward(ctx, G):
        x, w = ctx.saved_tensors
        return *conv_backward(x, w, G, ctx.stride, ctx.padding), None, None


def test_conv_tiny_by_hand():
    # 1 channel, x = [[1,2,3],[4,5,6],[7,8,9]], 2x2 kernel, stride 1, no padding, G = ones(2,2)
    x = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    w = torch.tensor([[[[1.0, 0.0], [0.0, -1.0]]]])
    G = torch.ones(1, 1, 2, 2)
    dx, dw, db = conv_backward(x, w, G, stride=1, padding=0)
    # each input pixel receives sum of w over the taps that touched it
    assert dx[0, 0].tolist() == [[1, 1, 0], [1, 0, -1], [0, -1, -1]]
    # dw[i,j] = sum of the 2x2 input block starting at (i, j)
    assert dw[0, 0].tolist() == [[12, 16], [24, 28]]
    assert db.tolist() == [4.0]


@pytest.mark.parametrize(
    "stride,padding,size,k",
    [(1, 1, 6, 3), (2, 1, 7, 3), (2, 1, 8, 3), (2, 0, 6, 2), (1, 0, 5, 3)],
)
def test_conv_gradients_match_autograd(stride, padding, size, k):
    x, w, b = _rand(2, 3, size, size, seed=10), _rand(4, 3, k, k, seed=11), _rand(4, seed=12)
    y = conv_forward(x, w, b, stride, padding)
    assert_close(y, F.conv2d(x, w, b, stride=stride, padding=padding))
    G = _rand(*y.shape, seed=13)

    ref = _autograd_grads(lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=padding), x, w, b, G=G)
    dx, dw, db = conv_backward(x, w, G, stride, padding)
    assert_close(dx, ref[0])
    assert_close(dw, ref[1])
    assert_close(db, ref[2])
    # the input gradient is a transposed convolution of G with the same kernel
    out_pad = (size + 2 * padding - k) % stride
    assert_close(dx, F.conv_transpose2d(G, w, stride=stride, padding=padding, output_padding=out_pad))


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1)])
def test_conv_gradcheck(stride, padding):
    x = _rand(1, 2, 5, 5, seed=20).requires_grad_()
    w = _rand(3, 2, 3, 3, seed=21).requires_grad_()
    b = _rand(3, seed=22).requires_grad_()
    assert gradcheck(lambda x, w, b: HandConv.apply(x, w, b, stride, padding), (x, w, b))


# ---------------------------------------------------------------------------------------
# (c), (d) Pooling with a k x k window and stride s (no padding)   x: (N, C, H, W)
# ---------------------------------------------------------------------------------------
def windows(x, k, s):
    """(N, C, Ho, Wo, k*k) view of all pooling windows."""
    return x.unfold(2, k, s).unfold(3, k, s).flatten(-2)


def scatter_windows(g_win, shape, k, s):
    """Inverse bookkeeping of ``windows``: add each window entry back to its input pixel.

    g_win: (N, C, Ho, Wo, k*k) -> (N, C, H, W); overlapping windows accumulate.
    """
    dx = g_win.new_zeros(shape)
    Ho, Wo = g_win.shape[2:4]
    for t, (i, j) in enumerate(itertools.product(range(k), range(k))):
        dx[:, :, i : i + s * Ho : s, j : j + s * Wo : s] += g_win[..., t]
    return dx


def maxpool_forward(x, k, s):
    return windows(x, k, s).amax(-1)


def maxpool_backward(x, G, k, s):
    # y = max over the window, so dy/dx is 1 at the argmax and 0 elsewhere:
    # the whole upstream gradient of a window is routed to its winner.
    win = windows(x, k, s)
    onehot = F.one_hot(win.argmax(-1), k * k).to(G.dtype)  # (N, C, Ho, Wo, k*k)
    return scatter_windows(onehot * G[..., None], x.shape, k, s)


def avgpool_forward(x, k, s):
    return windows(x, k, s).mean(-1)


def avgpool_backward(x, G, k, s):
    # y = (1/k^2) sum over the window: every element gets G / k^2
    g_win = (G / (k * k))[..., None].expand(*G.shape, k * k)
    return scatter_windows(g_win, x.shape, k, s)


class HandMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, k, s):
        ctx.save_for_backward(x)
        ctx.k, ctx.s = k, s
        return maxpool_forward(x, k, s)

    @staticmethod
    def backward(ctx, G):
        (x,) = ctx.saved_tensors
        return maxpool_backward(x, G, ctx.k, ctx.s), None, None


class HandAvgPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, k, s):
        ctx.save_for_backward(x)
        ctx.k, ctx.s = k, s
        return avgpool_forward(x, k, s)

    @staticmethod
    def backward(ctx, G):
        (x,) = ctx.saved_tensors
        return avgpool_backward(x, G, ctx.k, ctx.s), None, None


def test_pooling_tiny_by_hand():
    x = torch.tensor([[[[1.0, 5.0], [3.0, 2.0]]]])
    G = torch.tensor([[[[10.0]]]])
    assert maxpool_backward(x, G, 2, 2)[0, 0].tolist() == [[0, 10], [0, 0]]  # all to the max (5)
    assert avgpool_backward(x, G, 2, 2)[0, 0].tolist() == [[2.5, 2.5], [2.5, 2.5]]  # 10 / 4 each


@pytest.mark.parametrize("k,s", [(2, 2), (3, 2), (3, 1)])  # (3, *) windows overlap
def test_pooling_gradients_match_autograd(k, s):
    # a permutation gives distinct values, so the argmax is unique (max is not differentiable at ties)
    x = torch.randperm(2 * 3 * 7 * 7, generator=torch.Generator().manual_seed(30)).to(DT).reshape(2, 3, 7, 7)
    G = _rand(*maxpool_forward(x, k, s).shape, seed=31)

    assert_close(maxpool_forward(x, k, s), F.max_pool2d(x, k, s))
    (ref,) = _autograd_grads(lambda t: F.max_pool2d(t, k, s), x, G=G)
    assert_close(maxpool_backward(x, G, k, s), ref)

    assert_close(avgpool_forward(x, k, s), F.avg_pool2d(x, k, s))
    (ref,) = _autograd_grads(lambda t: F.avg_pool2d(t, k, s), x, G=G)
    assert_close(avgpool_backward(x, G, k, s), ref)


@pytest.mark.parametrize("k,s", [(2, 2), (3, 2)])
def test_pooling_gradcheck(k, s):
    # well separated values so the finite-difference step never changes the argmax
    x = (torch.randperm(50, generator=torch.Generator().manual_seed(40)).to(DT) * 0.1).reshape(1, 2, 5, 5)
    x.requires_grad_()
    assert gradcheck(lambda t: HandMaxPool.apply(t, k, s), (x,))
    assert gradcheck(lambda t: HandAvgPool.apply(t, k, s), (x,))
