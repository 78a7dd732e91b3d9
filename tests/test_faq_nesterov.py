"""FAQ: is ``torch.optim.SGD(nesterov=True)`` the Nesterov method from the textbook?

Yes, after a change of variables. Textbook (look-ahead) Nesterov, with v_0 = 0:

    v_t     = mu v_{t-1} - eta grad J(theta_{t-1} + mu v_{t-1})
    theta_t = theta_{t-1} + v_t

PyTorch (no dampening, no weight decay) keeps a buffer and parameters phi:

    g_t   = grad J(phi_{t-1})
    buf_t = mu buf_{t-1} + g_t                      (buf_1 = g_1)
    phi_t = phi_{t-1} - eta (g_t + mu buf_t)

Claim: phi_t = theta_t + mu v_t and v_t = -eta buf_t.  By induction (t = 0: phi_0 = theta_0, v_0 = 0):
phi_{t-1} = theta_{t-1} + mu v_{t-1} is the look-ahead point, so both evaluate the same gradient g_t;
v_t = mu v_{t-1} - eta g_t = -eta (mu buf_{t-1} + g_t) = -eta buf_t; and
theta_t + mu v_t = (phi_{t-1} - mu v_{t-1}) + (1 + mu) v_t = phi_{t-1} - eta g_t + mu v_t
                 = phi_{t-1} - eta (g_t + mu buf_t) = phi_t.
So PyTorch stores the look-ahead point itself; the textbook theta is phi - mu v.

The identity is checked against ``torch.optim.SGD`` (the FAQ's arithmetic, run in ``make test``), and the
last test against what ``train.optimizer=sgd train.nesterov=true`` builds here (engine/train/optim.py).
"""

import numpy as np
import torch
from torch.testing import assert_close

DT = torch.float64


def quadratic(cond=100.0):
    """J(theta) = 0.5 theta^T A theta - b^T theta with A symmetric positive definite, cond(A) = cond.

    Returns (A (2, 2), b (2,), grad) where grad(theta) = A theta - b.
    """
    rot = torch.tensor([[np.cos(0.4), -np.sin(0.4)], [np.sin(0.4), np.cos(0.4)]], dtype=DT)
    A = rot @ torch.diag(torch.tensor([1.0, cond], dtype=DT)) @ rot.T  # rotated, so coordinates mix
    b = torch.tensor([1.0, -2.0], dtype=DT)
    return A, b, lambda theta: A @ theta - b


def run_torch_sgd(theta0, grad, lr, mu, nesterov, steps):
    """Parameters phi_t and momentum buffers buf_t, t = 0..steps (buf_0 = 0). Shapes (steps+1, 2)."""
    phi = theta0.clone().requires_grad_(True)
    opt = torch.optim.SGD([phi], lr=lr, momentum=mu, nesterov=nesterov)
    phis, bufs = [phi.detach().clone()], [torch.zeros_like(theta0)]
    for _ in range(steps):
        opt.zero_grad()
        phi.grad = grad(phi.detach())  # exact gradient of the quadratic, no autograd needed
        opt.step()
        phis.append(phi.detach().clone())
        bufs.append(opt.state[phi]["momentum_buffer"].clone())
    return torch.stack(phis), torch.stack(bufs)


def run_lookahead_nesterov(theta0, grad, lr, mu, steps):
    """Textbook Nesterov; returns theta_t and v_t, t = 0..steps. Shapes (steps+1, 2)."""
    theta, v = theta0.clone(), torch.zeros_like(theta0)
    thetas, vs = [theta], [v]
    for _ in range(steps):
        v = mu * v - lr * grad(theta + mu * v)  # gradient at the look-ahead point
        theta = theta + v
        thetas.append(theta)
        vs.append(v)
    return torch.stack(thetas), torch.stack(vs)


# Nesterov is stable for lr * lambda_max < 2 (1 + mu) / (1 + 2 mu) ~ 1.36; lr * lambda_max = 1 here
LR, MU, STEPS = 0.01, 0.9, 50
THETA0 = torch.tensor([3.0, -4.0], dtype=DT)


def both_forms(grad):
    """PyTorch's (phi, buf) and the look-ahead form's (theta, v) over STEPS steps from THETA0."""
    phi, buf = run_torch_sgd(THETA0, grad, LR, MU, nesterov=True, steps=STEPS)
    theta, v = run_lookahead_nesterov(THETA0, grad, LR, MU, STEPS)
    return phi, buf, theta, v


def test_pytorch_nesterov_is_lookahead_nesterov():
    A, b, grad = quadratic(cond=100.0)
    lr, mu, steps = LR, MU, STEPS
    phi, buf, theta, v = both_forms(grad)

    for t in range(steps + 1):  # every step, not only the end point
        assert_close(
            phi[t], theta[t] + mu * v[t], rtol=1e-12, atol=1e-12, msg=f"phi != theta + mu v at t={t}"
        )
        assert_close(v[t], -lr * buf[t], rtol=1e-12, atol=1e-12, msg=f"v != -lr * buf at t={t}")

    # sanity: the run does something, and both converge to the minimiser A^-1 b
    theta_star = torch.linalg.solve(A, b)
    assert (theta[0] - theta_star).norm() > 1.0
    assert (theta[-1] - theta_star).norm() < (theta[0] - theta_star).norm()


def test_first_step_by_hand():
    # t = 1: buf_1 = g_0 = grad J(theta_0); phi_1 = theta_0 - lr (1 + mu) g_0
    _, _, grad = quadratic(cond=100.0)
    theta0 = torch.tensor([3.0, -4.0], dtype=DT)
    lr, mu = 0.01, 0.9
    phi, buf = run_torch_sgd(theta0, grad, lr, mu, nesterov=True, steps=1)
    g0 = grad(theta0)
    assert_close(buf[1], g0)
    assert_close(phi[1], theta0 - lr * (1 + mu) * g0)


def test_plain_momentum_differs():
    """Heavy-ball momentum phi_t = phi_{t-1} - lr buf_t does not satisfy the identity above."""
    _, _, grad = quadratic(cond=100.0)
    lr, mu, steps = 0.01, 0.9, 50
    theta0 = torch.tensor([3.0, -4.0], dtype=DT)

    phi_plain, _ = run_torch_sgd(theta0, grad, lr, mu, nesterov=False, steps=steps)
    phi_nest, _ = run_torch_sgd(theta0, grad, lr, mu, nesterov=True, steps=steps)
    theta, v = run_lookahead_nesterov(theta0, grad, lr, mu, steps)

    # plain momentum's first step is theta_0 - lr g_0, Nesterov's is theta_0 - lr (1 + mu) g_0
    assert (phi_plain[1] - phi_nest[1]).abs().max() > 1e-3
    lookahead = theta + mu * v
    assert (phi_plain - lookahead).abs().amax(dim=1).max() > 1e-2
    assert (phi_plain - theta).abs().amax(dim=1).max() > 1e-2


def test_the_usual_slips_of_the_derivation_do_not_hold():
    """The three slips named in docs/faq.md (question 5), each checked against PyTorch's iterates."""
    _, _, grad = quadratic(cond=100.0)
    phi, _, theta, v = both_forms(grad)
    lr, mu, steps, theta0 = LR, MU, STEPS, THETA0

    # 1. The gradient point: grad J(theta_{t-1}) instead of grad J(theta_{t-1} + mu v_{t-1}) is heavy-ball
    #    momentum, whose iterates match neither theta + mu v nor theta.
    #    (PyTorch's plain momentum is heavy-ball: its parameters are theta_t of that recursion.)
    heavy, _ = run_torch_sgd(theta0, grad, lr, mu, nesterov=False, steps=steps)
    assert (heavy - theta).abs().amax(dim=1).max() > 1e-2
    # 2. The index of the look-ahead: phi_t = theta_t + mu v_t, not theta_t + mu v_{t-1}.
    assert_close(phi[1:], theta[1:] + mu * v[1:], rtol=1e-12, atol=1e-12)
    assert (phi[1:] - (theta[1:] + mu * v[:-1])).abs().amax(dim=1).max() > 1e-3
    # 3. Which variable the last line updates: PyTorch's parameters are phi (the look-ahead point), not theta.
    assert (phi[1:] - theta[1:]).abs().amax(dim=1).max() > 1e-3


def test_the_trainers_sgd_with_nesterov_is_lookahead_nesterov():
    """What ``train.optimizer=sgd train.nesterov=true`` builds (engine.train.optim) follows the same identity."""
    from engine.train.optim import build_optimizer

    _, _, grad = quadratic(cond=100.0)
    model = torch.nn.Linear(2, 1, bias=False).to(DT)
    with torch.no_grad():
        model.weight.copy_(THETA0[None])
    opt = build_optimizer(model, "sgd", LR, weight_decay=0.0, momentum=MU, nesterov=True)
    phis = [model.weight.detach()[0].clone()]
    for _ in range(STEPS):
        opt.zero_grad()
        model.weight.grad = grad(model.weight.detach()[0])[None]
        opt.step()
        phis.append(model.weight.detach()[0].clone())
    theta, v = run_lookahead_nesterov(THETA0, grad, LR, MU, STEPS)
    assert_close(torch.stack(phis), theta + MU * v, rtol=1e-12, atol=1e-12)
