"""Benchmarks: ``diffiqt bench-speed`` (:mod:`diffiqt.bench.speed`: networks, and enhancement measured against
the authors' sliding windows of :mod:`diffiqt.inference.tiling`) and ``diffiqt bench`` (:mod:`diffiqt.bench.compare`)."""
