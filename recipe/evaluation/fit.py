"""A proposed mixture: a small regression from a sweep's shares to a figure, and the shares it
predicts are best, proposed only when the shares explain the figure beyond what noise does.

The model, in the smallest forms RegMix and "Data Mixing Laws" fit mixtures to per-domain figures
with: ridge regression of the figure on the shares, **linear** (y ~ b + sum_i w_i s_i),
**quadratic** (+ sum_{i<=j} v_ij s_i s_j) or **log** (y ~ b + sum_i w_i log(s_i + 0.01): a power
law in each share, as a data-mixing law's per-domain term), over the components' shares s (which
sum to 1, so the last share is left out of the linear and quadratic features). Features are
standardised; the form and the penalty are chosen by exact leave-one-out error (for ridge the LOO
residual is r_i / (1 - h_ii)).

When it proposes: a **permutation test** (a randomization test of "the shares explain the figure"):
the figures are shuffled across the jobs 199 times and the same choice of form and penalty is made
each time; the fit proposes only when its leave-one-out error is below all but 5% of the shuffled
ones (p <= 0.05). So at most 5% of sweeps whose figure does not depend on the shares get a proposal
(a fixed rule of "better than the mean's error" let 15-35% through).

What it proposes: the shares maximizing (or minimizing) the prediction within **the ranges the sweep
tried** (each share between the smallest and largest value any job ran with, on the subspace it
explored, the shares summing to 1), with a 90% interval of the prediction there from refitting on jobs drawn with replacement. It
says when the proposal sits at the **edge** of a range (the best may lie beyond it: widen that
way), and when its prediction does not beat the **best job already run** by more than its error
(run that job's mixture instead).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
PERMUTATIONS = 199
SIGNIFICANCE = 0.05
INTERVAL_LEVEL = 0.9
BOOTSTRAPS = 200
EDGE = 0.02  # a proposed share within this fraction of its range's width of a bound is on the edge


def _linear(shares: np.ndarray, coords: np.ndarray) -> np.ndarray:
    return coords


def _quadratic(shares: np.ndarray, coords: np.ndarray) -> np.ndarray:
    k = coords.shape[1]
    return np.column_stack([coords, *[coords[:, i] * coords[:, j] for i in range(k) for j in range(i, k)]])


def _log(shares: np.ndarray, coords: np.ndarray) -> np.ndarray:
    return np.log(shares + 0.01)


FORMS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "linear": _linear,
    "quadratic": _quadratic,
    "log": _log,
}


@dataclass(frozen=True)
class Basis:
    """The affine subspace of shares the sweep explored (its jobs' shares minus their mean, by SVD):
    a sweep of one share with the others rescaled (`mix.rescale`) explores a line, whatever the
    number of components, and is fitted and searched along it."""

    center: np.ndarray
    axes: np.ndarray  # rank x components

    @classmethod
    def of(cls, shares: np.ndarray) -> Basis:
        center = shares.mean(axis=0)
        _, singular, axes = np.linalg.svd(shares - center, full_matrices=False)
        rank = int((singular > 1e-9 * max(float(singular.max(initial=0.0)), 1e-12)).sum())
        return cls(center, axes[:rank])

    def coords(self, shares: np.ndarray) -> np.ndarray:
        return (shares - self.center) @ self.axes.T

    def design(self, form: str, shares: np.ndarray) -> np.ndarray:
        return FORMS[form](shares, self.coords(shares))


@dataclass(frozen=True)
class Proposal:
    components: tuple[str, ...]
    jobs: int
    loo_error: float | None  # leave-one-out RMSE of the chosen fit
    mean_error: float | None  # leave-one-out RMSE of predicting the mean
    shares: dict[str, float] | None  # the proposed mixture (None: no proposal)
    predicted: float | None
    bounds: dict[str, tuple[float, float]]
    verdict: str  # what to make of it, in a sentence or two
    form: str | None = None  # linear | quadratic | log
    p_value: float | None = None  # the permutation test's
    low: float | None = None  # the prediction's interval (INTERVAL_LEVEL)
    high: float | None = None
    edges: dict[str, str] = field(default_factory=dict)  # component -> "smallest" | "largest" share tried
    best_job: int | None = None  # the index of the best job already run
    beats_best: bool | None = None  # whether the prediction beats that job's figure by more than its error

    def override(self) -> str | None:
        """The command-line overrides that run the proposed mixture."""
        if self.shares is None:
            return None
        return " ".join(f"mix.components.{c}.share={v:g}" for c, v in self.shares.items())


def _standardised(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mu, sd = x.mean(axis=0), x.std(axis=0)
    sd[sd == 0] = 1.0
    return (x - mu) / sd, mu, sd


def loo_errors(x: np.ndarray, ys: np.ndarray, penalty: float) -> np.ndarray:
    """Ridge's exact leave-one-out RMSE on features `x` for each column of `ys` (the figures, or
    shuffles of them). The fit is linear in the figures (fitted = S y, S = 11'/n + Z (Z'Z + pI)^-1 Z'
    on the standardised features Z), so one S serves every column, and the LOO residual of each is
    r_i / (1 - S_ii)."""
    z, _, _ = _standardised(x)
    smoother = z @ np.linalg.solve(z.T @ z + penalty * np.eye(z.shape[1]), z.T) + 1.0 / len(x)
    residual = ys - smoother @ ys
    hat = np.clip(1.0 - np.diag(smoother), 1e-9, None)
    return np.sqrt(np.mean((residual / hat[:, None]) ** 2, axis=0))


class Ridge:
    """Ridge on standardised features, intercept unpenalised; `loo` is the exact LOO RMSE."""

    def __init__(self, x: np.ndarray, y: np.ndarray, penalty: float) -> None:
        z, self.mu, self.sd = _standardised(x)
        self.y_mean = y.mean()
        self.w = np.linalg.solve(z.T @ z + penalty * np.eye(z.shape[1]), z.T @ (y - self.y_mean))
        self.loo = float(loo_errors(x, y[:, None], penalty)[0])

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.y_mean + ((x - self.mu) / self.sd) @ self.w


def _fits(basis: Basis, shares: np.ndarray, n: int) -> list[tuple[str, float, np.ndarray]]:
    """(form, penalty, features) of every fit a choice is made among: FORMS x PENALTIES, each form
    with fewer features than the jobs less two."""
    found = []
    for form in FORMS:
        x = basis.design(form, shares)
        if x.shape[1] and x.shape[1] + 2 <= n:
            found += [(form, p, x) for p in PENALTIES]
    return found


def _best_fit(basis: Basis, shares: np.ndarray, ys: np.ndarray) -> tuple[str, float, np.ndarray]:
    """(form, penalty) with the least leave-one-out error for the figures (`ys`'s first column), and
    the least error any choice makes for each column (each shuffle chooses its own form and penalty)."""
    fits = _fits(basis, shares, len(ys))
    errors = np.array([loo_errors(x, ys, p) for _, p, x in fits])
    _, form, penalty = min((float(errors[i, 0]), form, p) for i, (form, p, _) in enumerate(fits))
    return form, penalty, errors.min(axis=0)


def _candidates(basis: Basis, shares: np.ndarray, bounds: np.ndarray, seed: int, count: int = 20000) -> np.ndarray:
    """Share vectors on the explored subspace with every share within its bounds: coordinates drawn
    uniformly within those the jobs had, mapped back, kept if inside."""
    rng = np.random.default_rng(seed)
    coords = basis.coords(shares)
    drawn = rng.uniform(coords.min(axis=0), coords.max(axis=0), size=(count, coords.shape[1]))
    points = basis.center + drawn @ basis.axes
    inside = np.all((points >= bounds[:, 0] - 1e-9) & (points <= bounds[:, 1] + 1e-9), axis=1)
    return np.clip(points[inside], 0.0, 1.0)


def _rounded(shares: np.ndarray, places: int = 3) -> np.ndarray:
    """Shares rounded to `places` decimals that still sum to exactly 1 (largest remainder)."""
    unit = 10**places
    scaled = shares * unit
    floors = np.floor(scaled)
    short = int(unit - floors.sum())
    order = np.argsort(-(scaled - floors))
    floors[order[:short]] += 1
    return floors / unit


def number(value: float, error: float) -> str:
    """A prediction with as many decimals as its error calls for (0.7312 ± 0.0038, not 0.7 ± 0.0038)."""
    decimals = 2 if error <= 0 or not np.isfinite(error) else max(2, int(-np.floor(np.log10(error))) + 1)
    return f"{value:.{decimals}f}"


def propose(
    rows: Sequence[Mapping[str, float]],
    figures: Sequence[float],
    *,
    maximize: bool = True,
    seed: int = 0,
) -> Proposal:
    """Fit the figure against the shares of `rows` (component -> share, one per finished job) and
    propose the best shares within the ranges tried, when the permutation test says the shares
    explain the figure."""
    components = tuple(sorted({c for row in rows for c in row}))
    shares = np.array([[row.get(c, 0.0) for c in components] for row in rows], dtype=float)
    y = np.asarray(figures, dtype=float)
    bounds = {c: (float(shares[:, i].min()), float(shares[:, i].max())) for i, c in enumerate(components)}
    n = len(y)
    basis = Basis.of(shares) if n else Basis(np.zeros(len(components)), np.zeros((0, len(components))))
    needed = len(basis.axes) + 2  # the linear form's features + 2
    if n < needed or len(components) < 2 or not len(basis.axes):
        why = (
            f"{n} finished jobs over {len(basis.axes)} free direction(s) of {len(components)} components; "
            f"a fit needs at least {max(needed, 3)}"
        )
        return Proposal(components, n, None, None, None, None, bounds, f"too few jobs to fit: {why}")
    mean_error = float(np.sqrt(np.mean(((y - y.mean()) * n / (n - 1)) ** 2)))  # LOO of the mean
    rng = np.random.default_rng(seed)
    shuffles = np.column_stack([y, *[rng.permutation(y) for _ in range(PERMUTATIONS)]])
    form, penalty, least = _best_fit(basis, shares, shuffles)
    best = Ridge(basis.design(form, shares), y, penalty)
    p_value = (1 + int((least[1:] <= least[0]).sum())) / (1 + PERMUTATIONS)
    common = {"form": form, "p_value": p_value}
    if p_value > SIGNIFICANCE:
        return Proposal(
            components,
            n,
            best.loo,
            mean_error,
            None,
            None,
            bounds,
            f"no proposal: the shares do not explain the figure beyond noise (the best fit, {form}, has a "
            f"leave-one-out error of {best.loo:.4g} against the mean's {mean_error:.4g}; shuffling the figures "
            f"across the jobs does as well {p_value:.0%} of the time)",
            **common,
        )
    box = np.array([bounds[c] for c in components])
    candidates = _candidates(basis, shares, box, seed)
    if not len(candidates):
        candidates = shares
    predicted = best.predict(basis.design(form, candidates))
    chosen = _rounded(candidates[int(np.argmax(predicted) if maximize else np.argmin(predicted))])
    point = basis.design(form, chosen[None, :])
    value = float(best.predict(point)[0])
    refits = []
    for _ in range(BOOTSTRAPS):  # the chosen form and penalty refitted on jobs drawn with replacement
        pick = rng.integers(0, n, n)
        refits.append(float(Ridge(basis.design(form, shares[pick]), y[pick], penalty).predict(point)[0]))
    tail = (1 - INTERVAL_LEVEL) / 2
    low, high = (float(q) for q in np.quantile(refits, [tail, 1 - tail]))
    edges = {}
    for i, c in enumerate(components):
        lo, hi = bounds[c]
        width = max(hi - lo, 1e-9)
        if chosen[i] <= lo + EDGE * width:
            edges[c] = "smallest"
        elif chosen[i] >= hi - EDGE * width:
            edges[c] = "largest"
    best_job = int(np.argmax(y) if maximize else np.argmin(y))
    gain = (value - y[best_job]) * (1 if maximize else -1)
    beats = bool(gain > best.loo)
    said = [
        f"predicted {number(value, best.loo)} [{number(low, best.loo)}, {number(high, best.loo)}] "
        f"({INTERVAL_LEVEL:.0%} interval; leave-one-out error {best.loo:.2g} against the mean's "
        f"{mean_error:.2g}; {form} fit; permutation p = {p_value:.3f}) from {n} jobs, within the share "
        "ranges the sweep tried"
    ]
    if edges:
        way = "; ".join(
            f"{c} at the {side} share tried ({bounds[c][0 if side == 'smallest' else 1]:.3g})"
            for c, side in edges.items()
        )
        said.append(f"the best lies at the edge of the range tried: {way}; widen the range that way and sweep again")
    if not beats:
        said.append(
            f"it does not expect to beat the best job already run (job {best_job}: {number(float(y[best_job]), best.loo)}) "
            "by more than its error: run that job's mixture"
        )
    return Proposal(
        components,
        n,
        best.loo,
        mean_error,
        dict(zip(components, chosen.tolist(), strict=True)),
        value,
        bounds,
        ". ".join(said),
        low=low,
        high=high,
        edges=edges,
        best_job=best_job,
        beats_best=beats,
        **common,
    )
