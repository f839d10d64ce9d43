"""Networks: DiffusionIQT with its cross-batch mechanism, and the baselines, picked by name.

``build_network(name, **overrides)`` builds one; ``list_networks()`` names them all. Every network is a
:class:`Network`: it has ``name``, ``config`` (``build_network(**net.config)`` rebuilds it), ``in_channels``,
``needs_time``, ``cross_batch``, ``patch_size``, ``slice_fold``, ``receptive_field`` and ``cell_shape``.
See docs/networks.md and docs/design.md.
"""

from diffiqt.nets.base import Network
from diffiqt.nets.crossbatch import block_to_patches, pad_to_multiple, patches_to_block
from diffiqt.nets.registry import (
    build_network,
    count_flops,
    count_parameters,
    list_networks,
    network_config,
    network_summary,
    paper_parameters_m,
)

__all__ = [
    "Network",
    "block_to_patches",
    "build_network",
    "count_flops",
    "count_parameters",
    "list_networks",
    "network_config",
    "network_summary",
    "paper_parameters_m",
    "pad_to_multiple",
    "patches_to_block",
]
