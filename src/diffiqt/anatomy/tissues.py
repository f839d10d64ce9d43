"""Three-class (CSF/GM/WM) tissue probability maps for T1w volumes without given maps.

Method: a 3-component Gaussian mixture on the intensities inside the mask
(scikit-learn's ``GaussianMixture``, full EM, fixed seed), fitted on a random
subsample of at most 200,000 voxels for speed; the per-voxel posterior
probabilities are the partial-volume maps, components ordered by mean intensity
as CSF < GM < WM (T1w contrast). Outside the mask all three maps are 0.
This is the intensity model behind FSL FAST without its Markov random field:
maps are noisier at tissue borders, which is acceptable for simulation.
"""

from __future__ import annotations

import numpy as np
from sklearn.mixture import GaussianMixture

MAX_FIT_VOXELS = 200_000


def gmm_tissue_maps(data: np.ndarray, mask: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Posterior CSF/GM/WM probabilities (float32, same shape as ``data``) inside ``mask``."""
    return tissue_mixture(data, mask, seed)[0]


def tissue_mixture(
    data: np.ndarray, mask: np.ndarray, seed: int = 0, start: GaussianMixture | None = None, tol: float = 1e-3
) -> tuple[dict[str, np.ndarray], GaussianMixture]:
    """The CSF/GM/WM maps of :func:`gmm_tissue_maps` and the fitted mixture.

    EM starts from the parameters of the fitted mixture ``start`` if given, else from means spread
    evenly between the 10th and 90th intensity percentiles; it stops when the mean log-likelihood
    gains less than ``tol`` in an iteration (scikit-learn's default 1e-3 is enough for simulation).
    """
    values = data[mask].astype(np.float64).reshape(-1, 1)
    rng = np.random.default_rng(seed)
    fit_on = values if len(values) <= MAX_FIT_VOXELS else values[rng.choice(len(values), MAX_FIT_VOXELS, replace=False)]
    if start is None:
        low, high = np.percentile(fit_on, [10, 90])
        initial = {"means_init": np.linspace(low, high, 3).reshape(-1, 1)}
    else:
        initial = {"means_init": start.means_, "weights_init": start.weights_, "precisions_init": start.precisions_}
    gmm = GaussianMixture(n_components=3, random_state=seed, max_iter=1000, tol=tol, **initial).fit(fit_on)
    order = np.argsort(gmm.means_.ravel())
    posteriors = gmm.predict_proba(values)[:, order]
    maps = {}
    for name, column in zip(("csf", "gm", "wm"), posteriors.T):
        full = np.zeros(data.shape, dtype=np.float32)
        full[mask] = column
        maps[name] = full
    return maps, gmm
