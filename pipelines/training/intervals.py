"""Prediction-interval offsets simulated with Prophet's own method, once per store at training time.

Stock ``Prophet.predict`` (vectorized) simulates future trend changes on the requested rows: at each
future step a slope change with probability ``S * step`` (S changepoints, step in scaled time) of
Laplace size ``mean|delta|``, averaged over neighbouring steps and integrated twice, plus Gaussian
observation noise ``sigma_obs``; the bounds are percentiles over ``uncertainty_samples`` paths.
Here the same process runs on the daily future after the store's last history date, seeded per
store, and the percentiles are kept on a grid of days ahead. The request path then only
interpolates, so an interval never depends on the window, batch or replica it was asked in.
History dates (noise only) get the exact normal quantile, the limit of the sampled percentiles.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

GRID_DAILY = 63
GRID_MAX = 730
GRID_RATIO = 1.08


def default_grid(daily: int = GRID_DAILY, horizon: int = GRID_MAX, ratio: float = GRID_RATIO) -> np.ndarray:
    """Days ahead where offsets are simulated: 0 (history), every day to ``daily``, then geometric."""
    days = list(range(daily + 1))
    while days[-1] < horizon:
        days.append(min(horizon, max(days[-1] + 1, int(np.ceil(days[-1] * ratio)))))
    return np.array(days, dtype=np.int64)


def bernoulli_positions(rng: np.random.Generator, p: float, cells: int) -> np.ndarray:
    """Indices of successes of ``cells`` independent Bernoulli(p) trials, drawn as geometric gaps."""
    if p <= 0 or cells <= 0:
        return np.zeros(0, dtype=np.int64)
    if p >= 1:
        return np.arange(cells, dtype=np.int64)
    expected = cells * p
    size = int(expected + 6 * np.sqrt(expected) + 16)
    pos = np.cumsum(rng.geometric(p, size=size)) - 1
    while pos[-1] < cells:
        pos = np.concatenate([pos, pos[-1] + np.cumsum(rng.geometric(p, size=size))])
    return pos[pos < cells]


def simulate_offsets(*, t_scale: float, delta: np.ndarray, sigma_obs: float, y_scale: float,
                     samples: int, interval_width: float, flat: bool, grid: np.ndarray,
                     rng: np.random.Generator) -> dict[str, np.ndarray | float]:
    """Lower/upper offsets from yhat on ``grid`` days ahead, and the variance terms used beyond it."""
    n_grid = len(grid)
    if samples <= 0:
        zeros = np.zeros(n_grid)
        return {"iv_lower": zeros, "iv_upper": zeros, "iv_trend_var": 0.0, "iv_noise_var": 0.0}
    step = 86400.0 / t_scale  # one day in Prophet's scaled time: the future rows' spacing
    n_cp = len(delta)
    likelihood = 0.0 if flat else n_cp * step
    mean_delta = float(np.mean(np.abs(delta))) + 1e-8 if n_cp else 0.0
    horizon = int(grid[-1])
    extra = np.zeros((samples, n_grid))
    cells = bernoulli_positions(rng, min(likelihood, 1.0), samples * horizon)
    if len(cells):
        shifts = rng.laplace(0.0, mean_delta, size=len(cells))
        sample, change_step = np.divmod(cells, horizon)
        grid_step = grid - 1.0  # future row j is day j + 1; grid[0] (history) sees no change
        grid_step[0] = -1.0
        first = np.searchsorted(grid_step, change_step)  # first grid point at or after the change
        flat_idx = sample * n_grid + first
        keep = first < n_grid
        a = np.bincount(flat_idx[keep], weights=shifts[keep], minlength=samples * n_grid)
        b = np.bincount(flat_idx[keep], weights=(shifts * change_step)[keep], minlength=samples * n_grid)
        a = a.reshape(samples, n_grid).cumsum(axis=1)
        b = b.reshape(samples, n_grid).cumsum(axis=1)
        # a change of size d at step i moves step j >= i by d * (j - i + 0.5) (Prophet's double cumsum
        # of the neighbour-averaged shifts), times the step length
        extra = step * (a * (grid_step + 0.5)[None, :] - b)
        extra[:, 0] = 0.0
    # one noise draw per path, shared by the grid days (common random numbers): each day's marginal is
    # Prophet's (trend change + independent noise), and the percentile curve comes out smoother
    noise = rng.normal(0.0, sigma_obs, size=(samples, 1))
    sims = (extra + noise) * y_scale
    lower_p, upper_p = 100 * (1.0 - interval_width) / 2, 100 * (1.0 + interval_width) / 2
    lower, upper = np.percentile(sims, [lower_p, upper_p], axis=0)
    # history rows carry noise only: use its exact quantile, the limit of the sampled one
    z = NormalDist().inv_cdf(upper_p / 100)
    lower[0], upper[0] = -z * sigma_obs * y_scale, z * sigma_obs * y_scale
    trend_var = (y_scale * step) ** 2 * min(likelihood, 1.0) * 2 * mean_delta**2 / 3
    return {"iv_lower": lower, "iv_upper": upper, "iv_trend_var": float(trend_var),
            "iv_noise_var": float((sigma_obs * y_scale) ** 2)}


WIDEST = 3.0   # the most a rare day's interval is widened
UNSEEN = 2.0   # the widening of a regressor a store's history never saw active: its effect is unknown
ONCE = 1.25    # seen once: its coefficient fits that day exactly, so its residual says nothing
THIN = 40      # a regressor active on fewer history days than this is thinly known: its days are widened


def widening_factors(x: np.ndarray, residuals: np.ndarray, sigma: float) -> np.ndarray:
    """Per regressor (columns of ``x``, the history's regressor values): how much wider than the noise band
    a day it is active on must be, from the in-sample ``residuals`` (fitted scale) on the ``m`` days it was.

    A coefficient fitted on ``m`` days absorbs their mean, so their residual variance is estimated with
    ``m - 1`` degrees of freedom and a new such day varies ``1 + 1/m`` times as much: the sparser the
    history, the wider (``UNSEEN`` when it was never active, ``ONCE`` when once), at most ``WIDEST``. A regressor
    active on ``THIN`` days or more is known as well as the rest of the history: its days keep the band.
    """
    out = np.full(x.shape[1], UNSEEN)
    out[(x != 0).sum(axis=0) == 1] = ONCE
    if sigma <= 0:
        return np.ones(x.shape[1])
    for j in range(x.shape[1]):
        active = x[:, j] != 0
        m = int(active.sum())
        if m >= THIN:
            out[j] = 1.0
        elif m >= 2:
            var = float((residuals[active] ** 2).sum()) / (m - 1) * (1 + 1 / m)
            out[j] = np.sqrt(var) / sigma
    return np.clip(out, 1.0, WIDEST)
