"""Networks: DiffusionIQT with its cross-batch mechanism, and the baselines, picked by name.

``build_network(name, **overrides)`` builds one; ``list_networks()`` names them all. Every network has
``name``, ``needs_time``, ``in_channels``, ``cross_batch``, ``patch_size``, ``receptive_field`` and
``config`` (``build_network(**net.config)`` rebuilds it). See docs/networks.md.
"""

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
