"""Speed benchmarks: ``diffiqt bench-speed`` (:mod:`diffiqt.bench.speed`) and the reference patch scheme
(:mod:`diffiqt.bench.schemes`) that whole-volume enhancement is measured against."""
