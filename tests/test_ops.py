"""Token clustering and reconstruction (hf_expedite.ops) against the spec's properties and the dense reference."""

import pytest
import torch
import torch.nn.functional as F

from hf_expedite.ops import TokenReconstruction, cluster_tokens, cluster_tokens_dense, home_cells
from hf_expedite.ops import reconstruction as reconstruction_module
from hf_expedite.ops.reconstruction import knn_reconstruction

# token grid, cluster grid, window: square, non-square, non-divisible, cluster grid with another aspect ratio
GRIDS = [
    ((12, 12), (8, 8), 5),
    ((10, 16), (6, 8), 3),
    ((13, 7), (5, 3), 3),
    ((22, 76), (16, 16), 5),
    ((30, 40), (28, 28), 5),
    ((12, 12), (8, 8), 11),
    ((9, 9), (9, 9), 1),
]


def _tokens(grid, channels=16, batch=2, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, grid[0] * grid[1], channels, generator=generator, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("grid,clusters,window", GRIDS)
def test_local_clustering_equals_dense_reference_float64(grid, clusters, window):
    tokens = _tokens(grid, dtype=torch.float64) * 3 + 1
    local = cluster_tokens(tokens, grid, clusters, iterations=5, temperature=2.0, window_size=window)
    dense = cluster_tokens_dense(tokens, grid, clusters, iterations=5, temperature=2.0, window_size=window)
    assert local.dtype == torch.float64
    torch.testing.assert_close(local, dense, rtol=0, atol=1e-10)


@pytest.mark.parametrize("grid,clusters,window", GRIDS)
def test_local_clustering_equals_dense_reference_float32(grid, clusters, window):
    tokens = _tokens(grid)
    local = cluster_tokens(tokens, grid, clusters, iterations=5, temperature=8.0, window_size=window)
    dense = cluster_tokens_dense(tokens, grid, clusters, iterations=5, temperature=8.0, window_size=window)
    torch.testing.assert_close(local, dense, rtol=0, atol=1e-5)


def test_zero_iterations_is_adaptive_average_pooling():
    grid, clusters = (13, 7), (5, 3)
    tokens = _tokens(grid)
    pooled = F.adaptive_avg_pool2d(tokens.transpose(1, 2).reshape(2, 16, *grid), clusters).flatten(2).transpose(1, 2)
    torch.testing.assert_close(cluster_tokens(tokens, grid, clusters, iterations=0), pooled, rtol=0, atol=1e-6)


def test_home_cells_follow_nearest_interpolation_in_int64():
    # 64 x 64 = 4096 clusters: more than float16 (2048) or bfloat16 (256) can label exactly.
    home = home_cells((128, 128), (64, 64))
    assert home.dtype == torch.int64
    rows, cols = torch.meshgrid(torch.arange(128), torch.arange(128), indexing="ij")
    assert torch.equal(home, ((rows // 2) * 64 + cols // 2).flatten())
    # 44 -> 26 is a size where nearest interpolation differs from (y * h) // H
    labels = F.interpolate(torch.arange(26.0).view(1, 1, 26, 1), size=(44, 1), mode="nearest").flatten().long()
    assert torch.equal(home_cells((44, 1), (26, 1)), labels)


def test_python_nearest_sources_equal_torch_interpolate():
    """The plain-Python home rule (constants for compile and export) is F.interpolate's on every size pair."""
    from hf_expedite.ops.clustering import nearest_sources

    for output_size in range(1, 140):
        labels = torch.arange(1, output_size + 1, dtype=torch.float32)  # the official code's labels: float32 maps
        for input_size in range(1, output_size + 1):
            map_ = labels[:input_size].view(1, 1, -1, 1)
            source = F.interpolate(map_, size=(output_size, 1), mode="nearest").view(-1).long() - 1
            assert nearest_sources(output_size, input_size) == source.tolist(), (output_size, input_size)


def test_identity_grid_reconstructs_the_input():
    grid = (6, 10)
    tokens = _tokens(grid, channels=8)
    centres = cluster_tokens(tokens, grid, grid, iterations=5, temperature=0.01, window_size=3)
    torch.testing.assert_close(centres, tokens, rtol=0, atol=1e-4)
    reconstruction = TokenReconstruction.from_clustering(tokens, centres, grid, grid, k=4, temperature=0.01)
    torch.testing.assert_close(reconstruction(centres), tokens, rtol=0, atol=1e-4)


def test_constant_map_reconstructs_to_the_constant_with_l1():
    grid = (8, 8)
    tokens = torch.full((1, 64, 5), 3.25)
    centres = cluster_tokens(tokens, grid, (3, 3), iterations=5, temperature=1.0, window_size=3)
    torch.testing.assert_close(centres, torch.full((1, 9, 5), 3.25))
    reconstruction = TokenReconstruction.from_clustering(tokens, centres, grid, (3, 3), k=5, normalization="l1")
    torch.testing.assert_close(reconstruction(centres), tokens)


def test_each_batch_item_equals_the_item_alone():
    grid, clusters = (10, 14), (5, 7)
    tokens = _tokens(grid, batch=3)
    batched = cluster_tokens(tokens, grid, clusters, temperature=4.0)
    weights = TokenReconstruction.from_clustering(tokens, batched, grid, clusters, k=6, temperature=4.0).dense_weights()
    for item in range(3):
        alone = cluster_tokens(tokens[item : item + 1], grid, clusters, temperature=4.0)
        torch.testing.assert_close(batched[item : item + 1], alone, rtol=0, atol=1e-6)
        alone_weights = TokenReconstruction.from_clustering(
            tokens[item : item + 1], alone, grid, clusters, k=6, temperature=4.0
        )
        torch.testing.assert_close(weights[item : item + 1], alone_weights.dense_weights(), rtol=0, atol=1e-6)


def test_knn_weights_keep_ties_and_normalise():
    # row 0: the 2nd and 3rd smallest distances tie, so k=2 keeps three entries (the official ">= k-th" rule)
    distances = torch.tensor([[[0.0, 1.0, 1.0, 5.0], [0.0, 2.0, 4.0, 8.0]]])
    l1 = knn_reconstruction(distances, k=2, temperature=1.0, normalization="l1").dense_weights()
    assert (l1[0, 0] > 0).tolist() == [True, True, True, False]
    assert (l1[0, 1] > 0).tolist() == [True, True, False, False]
    torch.testing.assert_close(l1.sum(-1), torch.ones(1, 2))
    expected = torch.tensor([1.0, torch.exp(torch.tensor(-2.0))])
    torch.testing.assert_close(l1[0, 1, :2], expected / expected.sum())
    l2 = knn_reconstruction(distances, k=2, temperature=1.0, normalization="l2").dense_weights()
    torch.testing.assert_close(l2.square().sum(-1), torch.ones(1, 2))


def _official_dense_weights(tokens, centres, k, temperature, normalization):
    """The dense ``(B, N, M)`` weights written out independently: exact pairwise squared distances, ``exp(-(d - min d)
    / t)``, every weight whose distance is within the k smallest (ties with the k-th kept), normalised."""
    distances = (tokens[:, :, None] - centres[:, None]).square().sum(-1)
    kth = distances.sort(-1).values[..., k - 1 : k]
    weights = torch.exp(-(distances - distances.amin(-1, keepdim=True)) / temperature) * (distances <= kth)
    if normalization == "l1":
        return weights / weights.sum(-1, keepdim=True)
    return weights / weights.norm(dim=-1, keepdim=True)


# token blocks: one for all 192 tokens, or 50 (token, centre) rows of 2 x 48 pairs each, so that the tokens with ties
# (5 and 77) lie in blocks of their own widths and the last blocks (no ties) are padded to the widest
BLOCKS = [None, 50 * 2 * 48]


@pytest.mark.parametrize("group", [8, 2])  # 2: the nearest centres are found through group minima (smallest)
@pytest.mark.parametrize("block_pairs", BLOCKS)
@pytest.mark.parametrize("normalization", ["l1", "l2"])
def test_sparse_weights_are_the_dense_ones_ties_included(normalization, block_pairs, group, monkeypatch):
    """Only the kept weights are stored, (B, N, W); they are the dense form's, including the tokens that keep more
    than k because identical centres tie with the k-th, whether the distances are computed for all tokens at once
    or block by block, and whether the nearest centres are searched in whole rows or through group minima."""
    if block_pairs:
        monkeypatch.setattr(reconstruction_module, "BLOCK_PAIRS", block_pairs)
    monkeypatch.setattr(reconstruction_module, "GROUP", group)
    grid, clusters, k = (12, 16), (6, 8), 5
    tokens = _tokens(grid, channels=24, dtype=torch.float64)
    centres = cluster_tokens(tokens, grid, clusters, iterations=2, temperature=4.0)
    centres[0, [3, 9, 17, 40]] = 0.0  # identical centres in item 0 (padding windows): exact ties
    tokens[0, [5, 77]] = 0.01  # tokens nearest to them: they keep all four ties, more than k - 1 = 4 others
    reconstruction = TokenReconstruction.from_clustering(
        tokens, centres, grid, clusters, k=k, temperature=4.0, normalization=normalization
    )
    expected = _official_dense_weights(tokens, centres, k, 4.0, normalization)
    assert reconstruction.weights.shape[:2] == (2, 192) and k < reconstruction.weights.shape[-1] < 4 + k
    torch.testing.assert_close(reconstruction.dense_weights(), expected, rtol=0, atol=1e-12)
    assert ((reconstruction.dense_weights()[0, [5, 77]][:, [3, 9, 17, 40]]) > 0).all()
    # item 1 has no tie: its tokens keep exactly k weights
    assert ((reconstruction.weights[1] > 0).sum(-1) == k).all()


@pytest.mark.parametrize(
    "columns, count",
    [(1024, 21), (784, 21), (2048, 21), (256, 21), (100, 6), (64, 64)],  # the first three narrowed by groups
)
def test_smallest_entries_equal_topk(columns, count):
    """The narrowing through group minima finds what ``topk`` finds: the same values in the same order, at the same
    columns (the values are distinct)."""
    key = torch.rand(3, 50, columns, generator=torch.Generator().manual_seed(columns), dtype=torch.float64)
    found, expected = reconstruction_module.smallest(key, count), key.topk(count, dim=-1, largest=False)
    assert torch.equal(found.values, expected.values) and torch.equal(found.indices, expected.indices)


def test_smallest_entries_with_ties():
    """Rows of few distinct values, which tie inside the smallest entries, between group minima and with entries left
    out: the values are still ``topk``'s, at 21 different columns that hold them."""
    generator = torch.Generator().manual_seed(0)
    for levels in (3, 40, 1000):
        key = torch.randint(0, levels, (2, 64, 1024), generator=generator).double()
        found = reconstruction_module.smallest(key, 21)
        assert torch.equal(found.values, key.topk(21, dim=-1, largest=False).values)
        assert torch.equal(key.gather(-1, found.indices), found.values)
        assert (found.indices.sort(-1).values.diff(dim=-1) > 0).all()  # 21 different columns


@pytest.mark.parametrize("block_pairs", [None, 100 * 2 * 192])
@pytest.mark.parametrize("mode", ["knn", "hard"])
def test_sparse_application_equals_the_dense_product(mode, block_pairs, monkeypatch):
    """Gather-and-weighted-sum (float32) against the dense (B, N, M) matrix product of the same weights: equal up to
    the order of the float32 sums (1e-6 on values of order one), with the distances computed at once or in blocks."""
    if block_pairs:
        monkeypatch.setattr(reconstruction_module, "BLOCK_PAIRS", block_pairs)
    grid, clusters = (24, 32), (12, 16)
    tokens = _tokens(grid, channels=32)
    centres = cluster_tokens(tokens, grid, clusters, temperature=8.0)
    reconstruction = TokenReconstruction.from_clustering(tokens, centres, grid, clusters, k=20, temperature=8.0,
                                                         mode=mode)  # fmt: skip
    assert reconstruction.weights.shape[-1] == (20 if mode == "knn" else 1)
    reduced = torch.randn(2, 12 * 16, 48, generator=torch.Generator().manual_seed(1))
    dense = reconstruction.dense_weights() @ reduced
    torch.testing.assert_close(reconstruction(reduced), dense, rtol=1e-6, atol=1e-6)
    if mode == "hard":
        nearest = reconstruction.indices[..., 0]
        assert torch.equal(reconstruction(reduced), reduced.gather(1, nearest[..., None].expand(-1, -1, 48)))


def test_compiled_graphs_get_the_same_weights_in_dense_form(monkeypatch):
    """Under torch.compile / torch.export (which cannot size a tensor by the data) the weights stay dense; they are
    the sparse form's (this emulates the tracing context; test_deployment.py compiles and exports for real)."""
    grid, clusters = (12, 16), (6, 8)
    tokens = _tokens(grid, channels=24)
    centres = cluster_tokens(tokens, grid, clusters, temperature=4.0)
    sparse = TokenReconstruction.from_clustering(tokens, centres, grid, clusters, k=6, temperature=4.0)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    dense = TokenReconstruction.from_clustering(tokens, centres, grid, clusters, k=6, temperature=4.0)
    assert dense.indices is None and dense.weights.shape == (2, 192, 48)
    torch.testing.assert_close(dense.weights, sparse.dense_weights(), rtol=1e-6, atol=1e-7)
    reduced = torch.randn(2, 48, 8, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(dense(reduced), sparse(reduced), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["knn", "hard"])
def test_residual_reconstruction_keeps_the_detail(mode):
    """With ``residual``, reconstructing the centres themselves gives the tokens back (the detail is what the centres
    miss), later reduced tensors get the same detail, and the identity grid stays exact."""
    grid, clusters = (12, 16), (6, 8)
    tokens = _tokens(grid, channels=24, dtype=torch.float64) * 2 + 1
    centres = cluster_tokens(tokens, grid, clusters, temperature=4.0)
    plain = TokenReconstruction.from_clustering(tokens, centres, grid, clusters, k=6, temperature=4.0, mode=mode)
    residual = TokenReconstruction.from_clustering(tokens, centres, grid, clusters, k=6, temperature=4.0, mode=mode,
                                                   residual=True)  # fmt: skip
    torch.testing.assert_close(residual(centres), tokens, rtol=0, atol=1e-12)
    assert (plain(centres) - tokens).abs().max() > 0.1  # what the clusters alone lose
    update = torch.randn(2, 48, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(residual(centres + update), tokens + plain(update), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="clustered tokens' width 24"):
        residual(update[..., :8])
    exact = TokenReconstruction.from_clustering(tokens.float(), tokens.float(), grid, grid, k=1, temperature=0.01,
                                                mode=mode, residual=True)  # fmt: skip
    assert torch.equal(exact.detail, torch.zeros_like(exact.detail))
    assert torch.equal(exact(tokens.float() * 3), tokens.float() * 3)


def test_hard_mode_copies_the_nearest_centre():
    tokens = torch.tensor([[[0.0, 0.0], [0.9, 1.0], [5.0, 5.0]]])
    centres = torch.tensor([[[1.0, 1.0], [5.0, 4.0]]])
    refined = torch.tensor([[[10.0], [20.0]]])
    reconstruction = TokenReconstruction.from_clustering(tokens, centres, (1, 3), (1, 2), mode="hard")
    assert reconstruction(refined).flatten().tolist() == [10.0, 10.0, 20.0]


def test_far_tokens_never_become_zero_vectors():
    # exp(-d / t) underflows for every cluster here; the official code would output zero tokens
    tokens = torch.tensor([[[1000.0, 0.0], [0.0, -1000.0]]])
    centres = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    reconstruction = TokenReconstruction.from_clustering(tokens, centres, (1, 2), (1, 2), k=2, temperature=0.01)
    assert torch.equal(reconstruction(centres), torch.tensor([[[1.0, 0.0], [1.0, 0.0]]]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_with_large_norms(dtype):
    grid, clusters = (16, 16), (10, 10)
    tokens = (_tokens(grid, channels=64, batch=1) * 40 + 200).to(dtype)  # |x|^2 ~ 3e6 overflows float16
    centres = cluster_tokens(tokens, grid, clusters, temperature=500.0)
    assert centres.dtype == dtype and torch.isfinite(centres).all()
    reference = cluster_tokens(tokens.float(), grid, clusters, temperature=500.0)
    torch.testing.assert_close(centres.float(), reference, rtol=1e-2, atol=0.5)
    reconstruction = TokenReconstruction.from_clustering(tokens, centres, grid, clusters, k=20, temperature=500.0)
    restored = reconstruction(centres)
    assert restored.dtype == dtype and restored.shape == tokens.shape and torch.isfinite(restored).all()
    expected = TokenReconstruction.from_clustering(
        tokens.float(), centres.float(), grid, clusters, k=20, temperature=500.0
    )
    torch.testing.assert_close(restored.float(), expected(centres.float()), rtol=1e-2, atol=0.5)


def test_gradients_flow_through_clustering_and_reconstruction():
    grid, clusters = (6, 6), (3, 3)
    tokens = _tokens(grid, dtype=torch.float64).requires_grad_()
    centres = cluster_tokens(tokens, grid, clusters, temperature=4.0)
    reconstruction = TokenReconstruction.from_clustering(tokens, centres, grid, clusters, k=4, temperature=4.0)
    (reconstruction(centres * 2) ** 2).sum().backward()
    assert tokens.grad is not None and torch.isfinite(tokens.grad).all() and tokens.grad.abs().sum() > 0
    # the local form's gradient is the dense reference's
    dense_tokens = tokens.detach().clone().requires_grad_()
    cluster_tokens_dense(dense_tokens, grid, clusters, temperature=4.0).sum().backward()
    local_tokens = tokens.detach().clone().requires_grad_()
    cluster_tokens(local_tokens, grid, clusters, temperature=4.0).sum().backward()
    torch.testing.assert_close(local_tokens.grad, dense_tokens.grad, rtol=0, atol=1e-10)
    with torch.no_grad():  # inference records nothing
        assert not cluster_tokens(tokens, grid, clusters).requires_grad


def test_layout_cached_under_inference_mode_serves_autograd():
    """The tiling is built once per sizes and reused; built first under ``torch.inference_mode``, it must still work
    where autograd records (inference tensors cannot be saved for backward)."""
    from hf_expedite.ops.clustering import _cached_local_layout

    grid, clusters = (11, 13), (5, 6)
    _cached_local_layout.cache_clear()
    tokens = _tokens(grid, dtype=torch.float64)
    with torch.inference_mode():
        inferred = cluster_tokens(tokens, grid, clusters, temperature=4.0)
    assert _cached_local_layout.cache_info().currsize == 1
    tokens.requires_grad_()
    centres = cluster_tokens(tokens, grid, clusters, temperature=4.0)
    centres.square().sum().backward()
    assert _cached_local_layout.cache_info().hits == 1
    assert torch.equal(centres.detach(), inferred) and torch.isfinite(tokens.grad).all()


def test_invalid_inputs_raise():
    tokens = _tokens((6, 6))
    with pytest.raises(ValueError, match="larger than the token grid"):
        cluster_tokens(tokens, (6, 6), (7, 3))
    with pytest.raises(ValueError, match="odd"):
        cluster_tokens(tokens, (6, 6), (3, 3), window_size=4)
    with pytest.raises(ValueError, match="reconstruction_k"):
        TokenReconstruction.from_clustering(tokens, tokens[:, :4], (6, 6), (2, 2), k=5)
    with pytest.raises(ValueError, match="reconstruction_mode"):
        TokenReconstruction.from_clustering(tokens, tokens[:, :4], (6, 6), (2, 2), k=2, mode="soft")


def _duplicated_patches(grid=(8, 12), channels=32, batch=2):
    """Tokens with a flat region (exactly duplicated patches) and near-duplicates that differ in the last bits."""
    tokens = _tokens(grid, channels=channels, batch=batch) * 4 + 30  # a large common component, as in real layers
    tokens[:, 10:40] = tokens[:, 9:10]  # a flat-colour region: 31 identical tokens in a row
    tokens[:, 50:60] = tokens[:, 49:50] * (1 + 1e-7)  # rounding-level neighbours
    return tokens


@pytest.mark.parametrize("threads", [1, None])
@pytest.mark.parametrize("mode", ["knn-l1", "knn-l2", "hard"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_identity_grid_is_exact_with_duplicated_patches(mode, dtype, threads):
    """Cluster grid == token grid, no iterations, top-1: every token returns bit for bit to its own place, even
    where patches are identical (a flat region) and distances tie exactly or at rounding level."""
    grid = (8, 12)
    tokens = _duplicated_patches(grid).to(dtype)
    refined = tokens * 3 + torch.arange(grid[0] * grid[1], dtype=dtype)[None, :, None]  # "blocks": tell places apart
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        centres = cluster_tokens(tokens, grid, grid, iterations=0)
        assert torch.equal(centres, tokens)
        normalization = "l2" if mode == "knn-l2" else "l1"
        reconstruction = TokenReconstruction.from_clustering(
            tokens, centres, grid, grid, k=1, temperature=0.01, normalization=normalization,
            mode="hard" if mode == "hard" else "knn",
        )
        assert torch.equal(reconstruction(refined), refined)
    finally:
        torch.set_num_threads(previous)


def test_home_centre_wins_only_rounding_level_ties():
    """Away from ties the nearest centre wins as in the official code, even when it is not the home centre."""
    tokens = torch.tensor([[[0.0, 0.0], [10.0, 10.0], [0.1, 0.0]]])  # token 2's home is centre 1, but 0 is nearer
    centres = torch.tensor([[[0.0, 0.0], [10.0, 10.0]]])
    reconstruction = TokenReconstruction.from_clustering(tokens, centres, (1, 3), (1, 2), mode="hard")
    assert reconstruction(torch.tensor([[[1.0], [2.0]]])).flatten().tolist() == [1.0, 2.0, 1.0]


def test_zero_mass_cluster_collapses_as_in_the_uncentred_formula():
    """A cluster that gets no assignment mass: the official centre sum(a * t) / max(sum(a), 1e-16) goes to 0, not to
    the token mean (which would then capture tokens in later iterations)."""
    grid, clusters = (4, 4), (2, 2)
    a, b, c = torch.tensor([0.0, 0.0, 0.0]), torch.tensor([8.0, 0.0, 0.0]), torch.tensor([4.0, 6.0, 0.0])
    tokens = c.repeat(16, 1).double()  # quadrant 3: c
    tokens[[0, 1, 2, 3, 6, 7]] = a.double()  # quadrant 1 and half of quadrant 0: a
    tokens[[4, 5, 8, 9, 12, 13]] = b.double()  # quadrant 2 and the other half of quadrant 0: b
    tokens = tokens[None]  # centre 0 starts at (a + b) / 2, farther from every token than centre 1 or 2
    local = cluster_tokens(tokens, grid, clusters, iterations=3, temperature=0.05, window_size=3)
    dense = cluster_tokens_dense(tokens, grid, clusters, iterations=3, temperature=0.05, window_size=3)
    torch.testing.assert_close(local, dense, rtol=0, atol=1e-10)
    # the official formula, uncentred (window 3 on a 2 x 2 grid: every cluster is a candidate of every token)
    centres = F.adaptive_avg_pool2d(tokens.transpose(1, 2).reshape(1, 3, 4, 4), clusters).flatten(2).transpose(1, 2)
    for _ in range(3):
        assign = torch.softmax(-torch.cdist(centres, tokens).square() / 0.05, dim=1)
        centres = assign @ tokens / assign.sum(-1, keepdim=True).clamp_min(1e-16)
    assert centres[0, 0].abs().max() < 1e-6  # the collapsed centre
    torch.testing.assert_close(local, centres, rtol=0, atol=1e-9)


def test_identical_centres_get_identical_weights():
    """Mostly-padding windows: several centres are exactly zero. The official code gives them exactly equal
    distances, so the ">= k-th" rule keeps all of them; so must we (a matrix product may round them apart)."""
    grid, clusters = (6, 6), (3, 3)
    tokens = _tokens(grid, channels=48, batch=2) * 3 + 20
    centres = cluster_tokens(tokens, grid, clusters, iterations=0)
    centres[:, [1, 4, 5, 7]] = 0.0  # identical centres in both items
    tokens[:, [0, 30]] = 0.05  # tokens near them (whose home centres are elsewhere)
    reconstruction = TokenReconstruction.from_clustering(tokens, centres, grid, clusters, k=2, temperature=1e3)
    weights = reconstruction.dense_weights()
    for item in range(2):
        for token in (0, 30):
            kept = weights[item, token, [1, 4, 5, 7]]
            assert torch.equal(kept, kept[:1].expand(4)) and (kept > 0).all()


def test_identical_centres_are_grouped_per_batch_item():
    from hf_expedite.ops.reconstruction import first_identical

    centres = torch.randn(2, 5, 3)
    assert first_identical(centres) is None  # nothing identical: the distances are used as computed
    centres[0, 3] = centres[0, 1]
    centres[1, 4] = centres[1, 2] = centres[1, 0]
    centres[1, 1] = centres[0, 1]  # identical to a centre of the other item only: not grouped
    assert first_identical(centres).tolist() == [[0, 1, 2, 1, 4], [0, 1, 0, 3, 0]]


def test_duplicate_centres_take_the_distances_of_their_first():
    """With ``canonical`` given, every duplicate centre's column of the ranking key is its first identical centre's,
    copied (whatever the matrix product rounded); the other columns are left as computed."""
    from hf_expedite.ops.reconstruction import home_first_keys

    tokens, centres = torch.randn(2, 6, 4), torch.randn(2, 5, 4)
    home = torch.zeros(6, dtype=torch.long)  # column 0 holds the home keys and is its own canonical centre
    canonical = torch.tensor([[0, 1, 2, 1, 4], [0, 1, 1, 3, 3]])
    key, _ = home_first_keys(tokens, centres, home, canonical=canonical)
    computed, _ = home_first_keys(tokens, centres, home)
    for item in range(2):
        assert torch.equal(key[item], computed[item][:, canonical[item]])


def test_clustering_and_reconstruction_ignore_the_callers_autocast():
    """Under CPU autocast (bfloat16) the distance products still run in float32: the same centres and reconstructions,
    bit for bit, as without autocast (a bfloat16 expanded-form distance would cancel catastrophically)."""
    from hf_expedite import ExpeditedViTConfig
    from hf_expedite.hourglass import cluster_with_settings

    grid = (12, 16)
    tokens = _tokens(grid, channels=32) * 4 + 30
    config = ExpeditedViTConfig(clustering_location=1, num_clusters=[6, 8], clustering_temperature=4.0,
                                reconstruction_temperature=4.0, reconstruction_residual=True)  # fmt: skip
    centres, reconstruction = cluster_with_settings(tokens, grid, config)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_centres, autocast_reconstruction = cluster_with_settings(tokens, grid, config)
        restored = autocast_reconstruction(centres * 2)
    assert torch.equal(autocast_centres, centres)
    assert restored.dtype == torch.float32 and torch.equal(restored, reconstruction(centres * 2))
