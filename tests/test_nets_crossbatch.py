"""The cross-batch mechanism is exact: 27 patches with cross-batch = one whole tensor; chunks = the whole volume."""

from __future__ import annotations

import pytest
import torch

from diffiqt.nets import block_to_patches, build_network, pad_to_multiple, patches_to_block
from diffiqt.nets.crossbatch import neighbourhood_linear_attention

# Narrow but complete: attention at every level, deep feature on, three levels on 32³ patches.
NARROW = {"widths": [8, 16, 32], "res_blocks": 1, "embed_dim": 32, "heads": 4, "deep_feature_width": 32, "time_dim": 16}
# The same on 16³ patches: an eighth of the voxels for the tests that need long volumes.
NARROW16 = {**NARROW, "patch_size": 16}


def randomized(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere, so that the zero-initialised branches (and their bugs) show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in net.parameters():
            fan_in = parameter[0].numel() if parameter.dim() > 1 else 1
            parameter.copy_(torch.randn(parameter.shape, generator=generator) / fan_in**0.5)
    return net.eval()


@pytest.fixture(scope="module")
def narrow_net():
    torch.manual_seed(0)
    return randomized(build_network("paper", **NARROW))


@pytest.fixture(scope="module")
def narrow16_net():
    return randomized(build_network("paper", **NARROW16), seed=1)


@pytest.fixture(scope="module")
def block():
    """One 96³ training block [1, 2, 96, 96, 96] ([LF, x_t]) and its log-SNR."""
    generator = torch.Generator().manual_seed(1)
    return torch.randn(1, 2, 96, 96, 96, generator=generator), torch.tensor([1.5])


@pytest.fixture(scope="module")
def whole_block_output(narrow_net, block):
    """The narrow network on the whole 96³ block as one tensor: [1, 1, 96, 96, 96]."""
    with torch.no_grad():
        return narrow_net(*block)


def test_block_patch_order_is_c_order_with_last_axis_fastest():
    block = torch.arange(2 * 6 * 6 * 6, dtype=torch.float32).reshape(1, 2, 6, 6, 6)
    patches = block_to_patches(block, 2)
    assert patches.shape == (27, 2, 2, 2, 2)
    for n, (i, j, k) in enumerate(torch.cartesian_prod(*[torch.arange(3)] * 3).tolist()):
        assert torch.equal(patches[n], block[0, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, 2 * k : 2 * k + 2])
    assert torch.equal(patches_to_block(patches), block)


def _efficient_attention(q, k, v, heads):
    """Reference: Shen et al.'s efficient attention over all tokens given, in float64. [E, N] -> [E, N]."""
    q, k, v = (t.double().reshape(heads, -1, t.shape[-1]) for t in (q, k, v))
    context = k.softmax(dim=2) @ v.transpose(1, 2)  # [h, d_k, d_v]
    return (context.transpose(1, 2) @ q.softmax(dim=1)).reshape(-1, q.shape[-1])


def test_neighbourhood_attention_is_efficient_attention_over_the_cell_neighbourhood():
    """Each cell's queries attend to exactly the tokens of its 3×3×3 cells, even with huge key logits."""
    generator = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 8, 6, 6, 6, generator=generator) for _ in range(3))
    k = 40 * k  # exp() of these overflows float32 without the log-sum-exp rescaling
    out = neighbourhood_linear_attention(q, k, v, heads=2, tokens_per_axis=2)
    assert torch.isfinite(out).all()

    def tokens(grid, span):  # [1, 8, 6, 6, 6] -> the [8, N] tokens of a cube of the grid
        return grid[0][:, span, span, span].reshape(8, -1)

    for cell, reach in ((slice(2, 4), slice(0, 6)), (slice(0, 2), slice(0, 4))):  # the centre and a corner cell
        expected = _efficient_attention(tokens(q, cell), tokens(k, reach), tokens(v, reach), heads=2)
        torch.testing.assert_close(tokens(out, cell).double(), expected, rtol=1e-4, atol=1e-5)


def test_cross_batch_patches_equal_the_whole_block(narrow_net, block, whole_block_output):
    """The 27 patches run with cross-batch, reassembled, give exactly the 96³ block run as one tensor."""
    x, logsnr = block
    with torch.no_grad():
        patches = narrow_net(block_to_patches(x, 32), logsnr.expand(27), layout="patches")
    assert whole_block_output.shape == (1, 1, 96, 96, 96)
    torch.testing.assert_close(patches_to_block(patches), whole_block_output, rtol=1e-5, atol=1e-5)


def test_without_cross_batch_patches_do_not_see_each_other(narrow_net, block, whole_block_output):
    """Companion: the same weights on independent patches differ from the whole block, so the test above can fail."""
    x, logsnr = block
    whole = whole_block_output
    ablation = build_network("paper", **{**NARROW, "cross_batch": False}).eval()
    ablation.load_state_dict(narrow_net.state_dict())
    with torch.no_grad():
        independent = patches_to_block(ablation(block_to_patches(x, 32), logsnr.expand(27), layout="patches"))
        ablation_volume = ablation(x, logsnr)
    assert (independent - whole).abs().max() > 1e-2
    # Without the mechanism a volume is processed as independent patches, in either layout.
    torch.testing.assert_close(ablation_volume, independent, rtol=1e-5, atol=1e-5)


def test_cross_batch_chunks_with_the_receptive_field_halo_equal_the_whole_volume(narrow16_net):
    """``receptive_field`` is a safe halo: input beyond it changes nothing, and a chunk carrying it is exact.

    A long 16×16×L volume stands in for a brain: the first 32 voxels along W are computed from the
    chunk that ends one halo (rounded up to whole cells) after them, and from the whole volume.
    """
    net, cell = narrow16_net, narrow16_net.patch_size
    halo, keep = net.receptive_field, 2 * cell
    chunk_end = -(-(keep + halo) // cell) * cell
    x = torch.randn(1, 2, cell, cell, chunk_end + 2 * cell, generator=torch.Generator().manual_seed(2))
    far_changed = x.clone()
    far_changed[..., keep + halo :] = torch.randn_like(far_changed[..., keep + halo :])
    logsnr = torch.tensor([-3.0])
    with torch.no_grad():
        whole = net(x, logsnr)
        chunk = net(x[..., :chunk_end], logsnr)
        changed = net(far_changed, logsnr)
    torch.testing.assert_close(chunk[..., :keep], whole[..., :keep], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(changed[..., :keep], whole[..., :keep], rtol=1e-5, atol=1e-5)
    assert (changed - whole).abs().max() > 1e-2  # the change does reach the voxels within its own halo


def test_patch_layout_rejects_a_block_with_mixed_logsnr(narrow_net, block):
    x, _ = block
    logsnr = torch.zeros(27)
    logsnr[5] = 1.0
    with pytest.raises(ValueError, match="share one logsnr"):
        narrow_net(block_to_patches(x, 32), logsnr, layout="patches")


def test_volumes_off_the_grid_are_zero_padded_at_the_far_end_and_cropped(narrow16_net):
    x = torch.randn(1, 2, 20, 17, 9, generator=torch.Generator().manual_seed(3))
    padded, crop = pad_to_multiple(x, 16)
    assert padded.shape == (1, 2, 32, 32, 16)
    assert torch.equal(padded[crop], x) and padded[:, :, 20:].abs().sum() == 0
    logsnr = torch.tensor([0.5])
    with torch.no_grad():
        out = narrow16_net(x, logsnr)
        reference = narrow16_net(padded, logsnr)[crop]
    assert out.shape == (1, 1, 20, 17, 9)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
