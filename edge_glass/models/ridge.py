"""Closed-form ridge maps from frozen pooled features into a text space, with the ridge picked on val."""

from __future__ import annotations

import torch
import torch.nn.functional as F

RIDGE_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0)


def ridge_map(x: torch.Tensor, y: torch.Tensor, ridge: float) -> torch.Tensor:
    """Closed-form least squares W minimising |[x,1] W - y|^2 + ridge |W|^2 (bias not penalised)."""
    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    reg = ridge * torch.eye(x1.shape[1], dtype=x.dtype)
    reg[-1, -1] = 0
    return torch.linalg.solve(x1.t() @ x1 + reg, x1.t() @ y)


def apply_map(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1) @ w


def top1_accuracy(mapped: torch.Tensor, targets: torch.Tensor) -> float:
    """Share of rows whose nearest target (cosine) is their own: a cheap R@1 for choosing the ridge."""
    sims = F.normalize(mapped, dim=-1) @ F.normalize(targets, dim=-1).t()
    return float((sims.argmax(1) == torch.arange(len(sims))).double().mean())


class RidgeStats:
    """Streaming float64 sufficient statistics of a ridge fit of y ~ x on standardised x.

    One pass over (x, y) chunks; memory O(d_x^2 + d_x d_y). :meth:`solve` gives exactly the fit of
    ``ridge_map`` on ``(x - mu) / sd`` with an unpenalised bias."""

    def __init__(self):
        self.n = 0
        self.sx = self.sxx = self.sy = self.sxy = None

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.detach().double().cpu(), y.detach().double().cpu()
        if self.sx is None:
            dx, dy = x.shape[1], y.shape[1]
            self.sx, self.sy = torch.zeros(dx, dtype=torch.float64), torch.zeros(dy, dtype=torch.float64)
            self.sxx, self.sxy = torch.zeros(dx, dx, dtype=torch.float64), torch.zeros(dx, dy, dtype=torch.float64)
        self.n += len(x)
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.sxx += x.t() @ x
        self.sxy += x.t() @ y

    def standardisation(self) -> tuple[torch.Tensor, torch.Tensor]:
        mu = self.sx / self.n
        var = (torch.diagonal(self.sxx) - self.n * mu * mu) / max(self.n - 1, 1)
        return mu, var.clamp(min=0).sqrt() + 1e-6

    def solve(self, ridge: float) -> torch.Tensor:
        """W ((d_x + 1), d_y) on [standardised x, 1], as ``ridge_map`` would give."""
        mu, sd = self.standardisation()
        zz = (self.sxx - self.n * torch.outer(mu, mu)) / torch.outer(sd, sd)  # Z^T Z (Z centred: Z^T 1 = 0)
        zy = (self.sxy - torch.outer(mu, self.sy)) / sd[:, None]
        d = len(mu)
        a = torch.zeros(d + 1, d + 1, dtype=torch.float64)
        a[:d, :d] = zz + ridge * torch.eye(d, dtype=torch.float64)
        a[d, d] = self.n
        rhs = torch.cat([zy, self.sy[None, :]])
        return torch.linalg.solve(a, rhs)


def fit_ridge_streaming(stats: RidgeStats, x_val: torch.Tensor | None = None, y_val: torch.Tensor | None = None,
                        default_ridge: float = 100.0, score=None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Fit y ~ x on standardised x for every ridge in RIDGE_GRID from streamed statistics; keep the ridge
    with the best val ``score(mapped val x)`` (default: top-1 against ``y_val``), else ``default_ridge``.

    Returns (weight (in, out), bias (out,)) acting on raw x, and the chosen ridge."""
    mu, sd = stats.standardisation()
    maps = {r: stats.solve(r) for r in RIDGE_GRID}
    if x_val is not None and len(x_val) > 1:
        xv = (x_val.double() - mu) / sd
        score = score or (lambda mapped: top1_accuracy(mapped, y_val.double()))
        best = max(RIDGE_GRID, key=lambda r: score(apply_map(maps[r], xv)))
    else:
        best = default_ridge if default_ridge in maps else RIDGE_GRID[-1]
        maps.setdefault(best, stats.solve(best))
    w = maps[best]
    weight = w[:-1] / sd[:, None]
    bias = w[-1] - (mu / sd) @ w[:-1]
    return weight, bias, best
