import pytest

from keras_dctsparse.ops import kernel_choice as kc


def test_materialized_bound_is_on_n_times_m():
    assert kc.materialized_allowed(4096, 4096)
    assert not kc.materialized_allowed(4097, 4096)
    assert not kc.materialized_allowed(100_000, 100_000)


@pytest.mark.parametrize("batch", [1, 32, 256, None])
def test_huge_layers_never_materialize(batch):
    costs = kc.estimated_step_costs(100_000, 100_000, 10_000, batch or 1, native=True)
    assert "materialized" not in costs
    assert kc.choose_kernel(100_000, 100_000, 10_000, batch) in ("csr", "gather")
    assert kc.choose_kernel(100_000, 100_000, 10_000, batch, native=True) == "native"


def test_block_folding_bound_counts_bytes():
    # 10 MiB: 1600 x 1600 float32 fits, float64 does not.
    assert kc.block_is_folded(1600, 1600, "float32")
    assert not kc.block_is_folded(1600, 1600, "float64")
    assert not kc.block_is_folded(2048, 2048, "float32")


def test_sampled_value_gradient_only_at_low_density():
    assert kc.use_sampled_value_gradient(1000, 1000, 1000)
    assert not kc.use_sampled_value_gradient(1000, 1000, 100_000)
    # Small kernels read it from the dense dy^T x whatever their density.
    assert not kc.use_sampled_value_gradient(300, 100, 887)
    size = kc.SAMPLED_GRADIENT_MIN_ELEMENTS
    assert not kc.use_sampled_value_gradient(size, 1, 1)
    assert kc.use_sampled_value_gradient(size + 1, 1, 1)


def test_costs_grow_with_batch_and_nnz():
    for kernel in kc.KERNELS:
        small = kc.estimated_step_costs(1024, 1024, 10_000, 1, native=True)[kernel]
        assert kc.estimated_step_costs(1024, 1024, 10_000, 256, native=True)[kernel] > small
        assert kc.estimated_step_costs(1024, 1024, 100_000, 1, native=True)[kernel] > small


def test_float64_costs_more():
    for kernel in kc.KERNELS:
        assert (
            kc.estimated_step_costs(512, 512, 5000, 32, "float64", native=True)[kernel]
            > kc.estimated_step_costs(512, 512, 5000, 32, "float32", native=True)[kernel]
        )


def test_native_is_priced_only_where_it_may_run():
    assert "native" not in kc.estimated_step_costs(1024, 1024, 10_000, 32)
    assert "native" in kc.estimated_step_costs(1024, 1024, 10_000, 32, native=True)


def test_native_work_counts_tiles_of_rows():
    one_tile = kc.native_work(1024, 1024, 10_000, kc.NATIVE_TILE_ROWS)
    assert kc.native_work(1024, 1024, 10_000, 2) == one_tile
    assert kc.native_work(1024, 1024, 10_000, kc.NATIVE_TILE_ROWS + 1) == 2 * one_tile
    assert kc.native_work(1024, 1024, 10_000, 1) < one_tile


@pytest.mark.parametrize("batch", [1, 32, 256, None])
def test_with_native_allowed_it_replaces_csr_and_gather(batch):
    for shape in [(4096, 4096, 16_777), (1024, 1024, 10_000), (100_000, 100_000, 10_000)]:
        assert kc.choose_kernel(*shape, batch, native=True) == "native"


def test_with_native_allowed_full_density_stays_materialized():
    # At density 1 the values are S^T (a reshape): a dense matmul beats any product.
    for batch in (1, 32, 256):
        assert kc.choose_kernel(1024, 1024, 1024 * 1024, batch, native=True) == "materialized"


def test_xla_excludes_native():
    assert kc.choose_kernel(4096, 4096, 16_777, 256, xla=True, native=True) != "native"


def test_choice_is_the_cheapest_estimate():
    for shape in [(256, 256, 655, 1), (1024, 1024, 10_000, 32), (4096, 4096, 16_777, 256)]:
        costs = kc.estimated_step_costs(*shape)
        assert kc.choose_kernel(*shape) == min(costs, key=costs.get)


def test_expected_regimes():
    # Full density: a dense matmul beats any sparse kernel.
    assert kc.choose_kernel(1024, 1024, 1024 * 1024, 32) == "materialized"
    # Large batch, low density: CSR.
    assert kc.choose_kernel(4096, 4096, 16_777, 256) == "csr"
    # Batch 1, low density: gather.
    assert kc.choose_kernel(4096, 4096, 16_777, 1) == "gather"
    # Batch 1, density 0.3 and 0.1 (benchmarks/dense_layer.py --batches 1, train step
    # over Dense: materialized 2.1x / 1.8x, gather 3.1x / 1.2x at 4096 x 4096).
    assert kc.choose_kernel(4096, 4096, int(0.3 * 4096 * 4096), 1) == "materialized"
    assert kc.choose_kernel(4096, 4096, int(0.1 * 4096 * 4096), 1) == "gather"


def test_xla_excludes_csr():
    assert kc.choose_kernel(4096, 4096, 16_777, 256, xla=True) != "csr"


def test_unknown_batch_uses_assumed_batch():
    assert kc.choose_kernel(2000, 1000, 20_000, None) == kc.choose_kernel(
        2000, 1000, 20_000, kc.ASSUMED_BATCH
    )


def test_folded_block_only_when_foldable_and_cheaper_than_the_fft():
    assert kc.use_folded_block(256, 256, 32)
    # Foldable, but adding 1M entries costs more than the DCT of 32 rows.
    assert kc.block_is_folded(1024, 1024) and not kc.use_folded_block(1024, 1024, 32)
    assert not kc.use_folded_block(2048, 2048, 4096)  # not foldable
    assert kc.use_folded_block(256, 256, None) == kc.use_folded_block(256, 256, kc.ASSUMED_BATCH)


def test_folded_block_against_the_native_dct():
    # The native DCT is cheaper than tf.signal's: at 256 x 256 and batch 32 it beats
    # adding the block, at batch 256 (16 tiles) it does not.
    assert kc.use_folded_block(256, 256, 32) and not kc.use_folded_block(256, 256, 32, native=True)
    assert kc.use_folded_block(256, 256, 256, native=True)
    assert not kc.use_folded_block(2048, 2048, 4096, native=True)  # not foldable
    # Tiles of 16 rows: batches 17 to 32 cost the same, batch 1 runs one row.
    assert kc.native_fft_cost(512, 512, 17) == kc.native_fft_cost(512, 512, 32)
    assert kc.native_fft_cost(512, 512, 1) < kc.native_fft_cost(512, 512, 2)
    assert kc.native_fft_cost(512, 512, 256) < kc._fft_cost(512, 512, 256)


def test_product_form_by_kernel_size_batch_and_cpu():
    small = kc.TRANSPOSED_PRODUCT_MIN_ELEMENTS - 1
    large = kc.TRANSPOSED_PRODUCT_MIN_ELEMENTS
    threshold = kc.BATCHED_PRODUCT_MIN_BATCH
    for avx512 in (False, True):
        for batch in (1, threshold, None):
            assert kc.product_form(small, 1, batch, avx512=avx512) == "transpose_b"
        assert kc.product_form(large, 1, threshold - 1, avx512=avx512) == "transposed"
    # The batched form and the tf.cond between forms only where oneDNN has AVX-512.
    assert kc.product_form(large, 1, threshold, avx512=True) == "batched"
    assert kc.product_form(1, large, None, avx512=True) == "by_batch"
    for batch in (threshold, 4096, None):
        assert kc.product_form(large, 1, batch) == "transposed"
    assert set(kc.PRODUCT_FORMS) == {"transpose_b", "transposed", "batched",
                                                "by_batch"}


def test_forward_only_calls_take_the_native_kernel_up_to_a_third():
    n = m = 256
    third = int(kc.NATIVE_FORWARD_MAX_DENSITY * n * m)
    # A training step at 30%, batch 256, takes the materialized kernel; a forward-only
    # call the native one (its forward reads fewer bytes than building the kernel).
    assert kc.choose_kernel(n, m, third, 256, native=True) == "materialized"
    assert kc.choose_kernel(n, m, third, 256, native=True, forward_only=True) == "native"
    assert kc.choose_kernel(n, m, third + 1, 256, native=True, forward_only=True) == "materialized"
    # Also once the nonzeros outgrow the caches (groups of tiles read them once), where
    # the training step takes the materialized kernel.
    big = 4096
    assert kc.choose_kernel(big, big, int(0.3 * big * big), 256, native=True) == "materialized"
    assert kc.choose_kernel(big, big, int(0.3 * big * big), 256, native=True,
                            forward_only=True) == "native"
    # Only where native ops may run, and never under XLA.
    assert kc.choose_kernel(n, m, third, 256, forward_only=True) == kc.choose_kernel(n, m, third, 256)
    assert kc.choose_kernel(n, m, third, 256, xla=True, forward_only=True) != "native"
