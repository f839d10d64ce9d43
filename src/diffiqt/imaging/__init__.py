"""Images on disk and on grids: :class:`~diffiqt.imaging.io.Volume` and NIfTI/MGZ input and output, resampling,
and the layout of BIDS datasets."""
