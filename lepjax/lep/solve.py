"""The linear maps of LEP, solved in float64.

For one embedding module (input embeddings or LM head, rows = tokens), LEP sets
E_new(I) = E(D) · W with a d x d matrix W:

- swap:        W = identity.
- overlap:     W = argmin ||E_B[C] W - E_I[C]||², C = tokens present in both vocabularies (rows of
               the old-vocabulary matrices).
- conversion:  W = argmin ||T(E_B) W - T(E_I)||² over every new-vocabulary token, where T maps an
               old-vocabulary matrix to the new vocabulary by averaging each new token's old
               sub-token rows (the `mean` initialisation). The paper's best variant; the default.
"""

from __future__ import annotations

import numpy as np

METHODS = ("swap", "overlap", "conversion")


def least_squares(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """(W, relative residual ||xW - y|| / ||y||) for min ||xW - y||², in float64."""
    x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
    w, *_ = np.linalg.lstsq(x64, y64, rcond=None)
    residual = float(np.linalg.norm(x64 @ w - y64) / max(np.linalg.norm(y64), 1e-300))
    return w, residual


def fit(method: str, base: np.ndarray, instruct: np.ndarray, *, overlap_rows: np.ndarray | None = None,
        to_new=None) -> tuple[np.ndarray, float]:
    """The d x d matrix W of `method` and its fit's relative residual.

    base / instruct: old-vocabulary matrices [V_old, d] of B and I. `overlap_rows`: old ids of the
    tokens kept in the new vocabulary (overlap). `to_new(E)`: T, old matrix -> new-vocabulary
    matrix (conversion).
    """
    if method not in METHODS:
        raise ValueError(f"unknown LEP method {method!r}; choose one of {', '.join(METHODS)}")
    d = base.shape[1]
    if base.shape != instruct.shape:
        raise ValueError(f"base and instruct matrices differ in shape: {base.shape} vs "
                         f"{instruct.shape}; LEP needs siblings with the same vocabulary")
    if method == "swap":
        return np.eye(d), float(np.linalg.norm(np.asarray(base, np.float64) - instruct)
                                / max(np.linalg.norm(np.asarray(instruct, np.float64)), 1e-300))
    if method == "overlap":
        if overlap_rows is None or len(overlap_rows) < d:
            raise ValueError(f"overlap needs at least d={d} shared tokens, got "
                             f"{0 if overlap_rows is None else len(overlap_rows)}")
        return least_squares(base[overlap_rows], instruct[overlap_rows])
    return least_squares(to_new(base), to_new(instruct))


def apply(donor: np.ndarray, w: np.ndarray, dtype=None) -> np.ndarray:
    """E(D) · W in float64, cast to `dtype` (default: the donor's)."""
    out = np.asarray(donor, np.float64) @ w
    return out.astype(dtype or donor.dtype)
