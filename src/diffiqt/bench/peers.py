"""Classical peers of the bench: the thick-slice scan interpolated onto the model grid by SimpleITK.

They take the scan on its own grid (not the cubic condition the networks get) and resample it onto the
same isotropic grid as :func:`diffiqt.imaging.resample.to_isotropic`, with ITK's interpolators: a cubic B-spline
(ITK's prefiltered interpolating spline, as scipy's order 3 but with ITK's boundary handling), a
quintic B-spline, and a Lanczos windowed sinc (radius 3). Beyond the scan's first and last slice
centres the nearest value is kept, as the cubic baseline does. Nothing is trained. SimpleITK is an
optional dependency (``pip install 'diffiqt[bench]'``) imported only here and by registration; the
nearest-neighbour interpolator is listed for tests and comparisons, not as a bench method.
"""

from __future__ import annotations

import numpy as np

from diffiqt.errors import ConfigError
from diffiqt.imaging.io import Volume
from diffiqt.imaging.resample import isotropic_grid, to_sitk

# Network name in a budget -> SimpleITK interpolator constant.
PEERS = {
    "sitk-bspline": "sitkBSpline",
    "sitk-bspline5": "sitkBSpline5",
    "sitk-lanczos": "sitkLanczosWindowedSinc",
    "sitk-nearest": "sitkNearestNeighbor",
}


def interpolate(lf: Volume, voxel_mm: float, peer: str) -> Volume:
    """``lf`` resampled by SimpleITK's interpolator ``peer`` (a key of :data:`PEERS`) onto its ``voxel_mm`` grid."""
    try:
        import SimpleITK as sitk
    except ImportError:
        raise ConfigError("the SimpleITK peers need SimpleITK: pip install 'diffiqt[bench]'") from None
    if peer not in PEERS:
        raise ConfigError(f"unknown peer {peer!r}; choose from {', '.join(PEERS)}")
    affine, shape = isotropic_grid(lf, voxel_mm)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(n) for n in shape])
    resampler.SetOutputSpacing([float(s) for s in spacing])
    resampler.SetOutputOrigin([float(o) for o in affine[:3, 3]])
    resampler.SetOutputDirection([float(d) for d in (affine[:3, :3] / spacing).ravel()])
    resampler.SetInterpolator(getattr(sitk, PEERS[peer]))
    resampler.SetUseNearestNeighborExtrapolator(True)  # as the cubic baseline: edge values past the last slice
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    data = sitk.GetArrayFromImage(resampler.Execute(to_sitk(lf))).transpose(2, 1, 0)
    return Volume(np.ascontiguousarray(data), affine)
