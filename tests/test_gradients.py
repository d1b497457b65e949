"""Gradient core: per-token gradient capture and the streamed / structured projections."""
import hashlib
import subprocess
import sys

import pytest
import torch
from torch import nn

from segfungi.gradients import (
    COMPUTE_DTYPES,
    DENSE_KERNELS,
    AchlioptasProjection,
    OuterProductProjection,
    TokenGradients,
    capture_token_gradients,
    cpu_has_fast_bfloat16,
    fungi_concat,
    gradient_pass,
    l2_normalize,
    make_projection,
    resolve_compute_dtype,
)
from segfungi.infra.errors import ConfigError

DIN, DOUT, TOKENS, BATCH = 5, 4, 7, 3


class TokenMixer(nn.Module):
    """A tiny token model around the watched layer: tokens interact after it, so each δ_t
    depends on every token (as in attention), and each sample has its own loss."""

    def __init__(self, bias=True):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.pre = nn.Linear(DIN, DIN).double()
        self.layer = nn.Linear(DIN, DOUT, bias=bias).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))

    def per_sample_loss(self, x, layer_fn=None):
        y = (layer_fn or self.layer)(torch.tanh(self.pre(x)))  # B×T×Dout
        mixed = torch.softmax(y @ y.transpose(1, 2), dim=-1) @ y
        return (torch.sin(mixed) * torch.arange(1, DOUT + 1, dtype=y.dtype)).sum(dim=(1, 2))


def _inputs(seed=1):
    return torch.randn(BATCH, TOKENS, DIN, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _captured(model, x, params_need_grad=False):
    model.requires_grad_(params_need_grad)
    with capture_token_gradients(model.layer) as rec:
        model.per_sample_loss(x).sum().backward()
    return rec.result()


@pytest.mark.parametrize("bias", [True, False])
def test_token_gradients_sum_to_autograd_weight_and_bias_grads(bias):
    model = TokenMixer(bias=bias)
    tg = _captured(model, _inputs(), params_need_grad=True)
    total = tg.materialize().sum(dim=(0, 1))  # Σ over samples and tokens: Dout×(Din[+1])
    torch.testing.assert_close(total[:, :DIN], model.layer.weight.grad, rtol=1e-12, atol=1e-12)
    if bias:
        torch.testing.assert_close(total[:, DIN], model.layer.bias.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tg.summed().sum(0), total, rtol=1e-12, atol=1e-12)


def test_each_token_gradient_matches_brute_force_autograd():
    """Give every (sample, token) its own copy of W and b: autograd's gradient of each copy
    is by definition that token's gradient."""
    model = TokenMixer()
    x = _inputs()
    tg = _captured(model, x)  # params frozen: the hook makes the output a leaf
    w = model.layer.weight.detach().expand(BATCH, TOKENS, DOUT, DIN).clone().requires_grad_(True)
    b = model.layer.bias.detach().expand(BATCH, TOKENS, DOUT).clone().requires_grad_(True)
    per_token_layer = lambda a: torch.einsum("btoi,bti->bto", w, a) + b  # noqa: E731
    model.per_sample_loss(x, layer_fn=per_token_layer).sum().backward()
    per_token = tg.materialize()
    torch.testing.assert_close(per_token[..., :DIN], w.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(per_token[..., DIN], b.grad, rtol=1e-12, atol=1e-12)


def test_capture_leaves_frozen_parameters_without_grad_and_sample_losses_independent():
    model = TokenMixer()
    x = _inputs()
    batched = _captured(model, x)
    assert model.layer.weight.grad is None and model.pre.weight.grad is None
    single = _captured(model, x[1:2])
    torch.testing.assert_close(batched.delta[1:2], single.delta, rtol=1e-12, atol=1e-14)


def test_recorder_errors_and_multiple_calls():
    model = TokenMixer().requires_grad_(False)
    x = _inputs()
    with capture_token_gradients(model.layer) as rec:
        model.per_sample_loss(x)
    with pytest.raises(RuntimeError, match="backward"):
        rec.result()
    with capture_token_gradients(model.layer) as rec:
        (model.per_sample_loss(x[:1]) + model.per_sample_loss(x[1:2])).sum().backward()
    with pytest.raises(RuntimeError, match="2 times"):
        rec.result()
    first, second = rec.results()
    torch.testing.assert_close(first.delta, _captured(model, x[:1]).delta)
    torch.testing.assert_close(second.delta, _captured(model, x[1:2]).delta)
    # the hook is removed on exit
    assert not model.layer._forward_hooks
    with pytest.raises(TypeError):
        with capture_token_gradients(nn.Conv2d(1, 1, 1)):
            pass


def test_gradient_pass_is_the_capture_and_one_backward_of_the_summed_losses():
    model = TokenMixer().requires_grad_(False)
    x = _inputs()
    hidden = lambda: torch.tanh(model.pre(x))  # noqa: E731  the part before the watched layer

    def loss(h):
        y = model.layer(h)
        mixed = torch.softmax(y @ y.transpose(1, 2), dim=-1) @ y
        return (torch.sin(mixed) * torch.arange(1, DOUT + 1, dtype=y.dtype)).sum(dim=(1, 2))

    with torch.no_grad():  # the pass turns autograd on for itself
        grads, output, losses = gradient_pass(model.layer, hidden, loss)
    reference = _captured(model, x)
    assert torch.equal(grads.delta, reference.delta) and torch.equal(grads.inputs, reference.inputs)
    torch.testing.assert_close(output, torch.tanh(model.pre(x)), rtol=0, atol=0)
    torch.testing.assert_close(losses, model.per_sample_loss(x), rtol=0, atol=0)
    assert not losses.requires_grad and not model.layer._forward_hooks


# --------------------------------------------------------------------------- projections


def _reference(projection, tg, token_index=None):
    """dense_matrix() @ vec(materialised per-token gradients)."""
    grads = tg.materialize()
    if token_index is not None:
        grads = grads[:, token_index]
    return grads.reshape(*grads.shape[:2], -1) @ projection.dense_matrix().T


# 16 rows × 24 entries: int8 cache needs 384 bytes, the bit-packed one 48, the lookup
# kernel's codes 64 (16 rows × Dout 4 × one group of 8 columns).
CACHES = {"int8": 1 << 20, "bits": 100, "none": 0}
LOOKUP_CACHES = {"int8": "codes", "bits": "codes", "none": "none"}


@pytest.mark.parametrize("chunk_rows", [1, 3, 7, 16, None])
@pytest.mark.parametrize("cache", list(CACHES))
@pytest.mark.parametrize("kernel", ["lookup", "gemm"])
def test_streamed_dense_projection_equals_explicit_matmul(chunk_rows, cache, kernel):
    tg = _captured(TokenMixer(), _inputs())
    proj = AchlioptasProjection(DIN, DOUT, dim=16, seed=11, chunk_rows=chunk_rows,
                                max_cache_bytes=CACHES[cache], token_block=4, kernel=kernel)
    assert proj.cache == cache and proj.lookup_cache == LOOKUP_CACHES[cache]
    torch.testing.assert_close(proj.project(tg), _reference(proj, tg), rtol=1e-12, atol=1e-12)
    index = torch.tensor([6, 0, 3])
    torch.testing.assert_close(proj.project(tg, token_index=index), _reference(proj, tg, index), rtol=1e-12, atol=1e-12)
    summed = tg.materialize().sum(1).reshape(BATCH, -1) @ proj.dense_matrix().T
    torch.testing.assert_close(proj.project(tg, reduce="sum"), summed, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("din,dout", [(DIN, DOUT), (4, 3)])  # m = 24 and m = 15 (not whole bytes)
def test_dense_matrix_does_not_depend_on_chunking_or_cache(din, dout):
    matrices = [
        AchlioptasProjection(din, dout, dim=9, seed=5, chunk_rows=c, max_cache_bytes=m).dense_matrix()
        for c in (1, 2, 9) for m in (0, 50, 1 << 20)  # no cache, bits, int8
    ]
    for other in matrices[1:]:
        assert torch.equal(matrices[0], other)


def test_dense_matrix_is_fair_signs_and_golden():
    big = AchlioptasProjection(40, 30, dim=50, seed=0).dense_matrix()
    assert set(big.unique().tolist()) == {-1.0, 1.0}
    assert abs(big.mean().item()) < 0.01  # 61,500 fair coins: std of the mean ≈ 0.004
    # Pinned values: the matrix must not change across versions or machines (banks depend on it).
    small = AchlioptasProjection(3, 2, dim=4, seed=0).dense_matrix().int().tolist()
    assert small == [
        [1, 1, -1, 1, 1, -1, -1, 1],
        [-1, 1, 1, -1, 1, 1, 1, -1],
        [-1, -1, -1, -1, -1, -1, -1, -1],
        [1, 1, -1, -1, 1, -1, -1, 1],
    ]


def _matrix_digest(kind, seed):
    proj = make_projection(kind, in_features=6, out_features=5, dim=8, seed=seed)
    return hashlib.sha256(proj.dense_matrix().numpy().tobytes()).hexdigest()


def test_same_seed_same_matrix_in_fresh_process_and_seeds_differ():
    code = (
        "import hashlib; from segfungi.gradients import make_projection\n"
        "for kind in ('dense', 'structured'):\n"
        "    p = make_projection(kind, in_features=6, out_features=5, dim=8, seed=123)\n"
        "    print(hashlib.sha256(p.dense_matrix().numpy().tobytes()).hexdigest())"
    )
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert fresh == [_matrix_digest("dense", 123), _matrix_digest("structured", 123)]
    for kind in ("dense", "structured"):
        assert _matrix_digest(kind, 124) != _matrix_digest(kind, 123)


def test_projected_features_reproducible_across_instances():
    tg = _captured(TokenMixer(), _inputs())
    first = AchlioptasProjection(DIN, DOUT, dim=8, seed=3, chunk_rows=2).project(tg)
    second = AchlioptasProjection(DIN, DOUT, dim=8, seed=3, chunk_rows=5, max_cache_bytes=0).project(tg)
    torch.testing.assert_close(first, second, rtol=1e-12, atol=1e-12)
    other = AchlioptasProjection(DIN, DOUT, dim=8, seed=4).project(tg)
    assert not torch.allclose(first, other)


def test_structured_projection_equals_its_explicit_reference():
    tg = _captured(TokenMixer(), _inputs())
    proj = OuterProductProjection(DIN, DOUT, dim=12, seed=2)
    matrix = proj.dense_matrix()
    u, v = proj._u, proj._v
    # rows are vec(u_k v_kᵀ), built independently here
    explicit = torch.stack([torch.outer(u[k], v[k]).reshape(-1) for k in range(12)])
    assert torch.equal(matrix, explicit)
    assert set(matrix.unique().tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(proj.project(tg), _reference(proj, tg), rtol=1e-12, atol=1e-12)
    summed = tg.materialize().sum(1).reshape(BATCH, -1) @ matrix.T
    torch.testing.assert_close(proj.project(tg, reduce="sum"), summed, rtol=1e-12, atol=1e-12)
    assert OuterProductProjection(3, 2, dim=4, seed=0)._u.int().tolist() == [[-1, -1], [-1, -1], [1, -1], [-1, -1]]


def test_projection_without_bias():
    tg = _captured(TokenMixer(bias=False), _inputs())
    for kind in ("dense", "structured"):
        proj = make_projection(kind, in_features=DIN, out_features=DOUT, dim=6, seed=1, bias=False)
        assert proj.num_entries == DOUT * DIN
        torch.testing.assert_close(proj.project(tg), _reference(proj, tg), rtol=1e-12, atol=1e-12)


def test_projection_validates_inputs_and_identity():
    tg = _captured(TokenMixer(), _inputs())
    proj = make_projection("dense", in_features=DIN, out_features=DOUT, dim=6, seed=9)
    with pytest.raises(ValueError, match="reduce"):
        proj.project(tg, reduce="mean")
    with pytest.raises(ValueError, match="built for"):
        make_projection(in_features=DIN + 1, out_features=DOUT, dim=6, seed=9).project(tg)
    with pytest.raises(ValueError, match="bias"):
        make_projection(in_features=DIN, out_features=DOUT, dim=6, seed=9, bias=False).project(tg)
    with pytest.raises(ConfigError, match="unknown projection 'gaussian'"):
        make_projection("gaussian", in_features=DIN, out_features=DOUT, dim=6, seed=9)
    with pytest.raises(ValueError, match="seed"):
        AchlioptasProjection(DIN, DOUT, dim=6, seed=-1)
    ident = proj.identity()
    assert ident["kind"] == "dense" and ident["seed"] == 9 and ident["dim"] == 6 and ident["rng"]
    structured = make_projection("structured", in_features=DIN, out_features=DOUT, dim=6, seed=9)
    assert structured.identity()["kind"] == "structured"
    empty = TokenGradients(tg.delta[:, :0], tg.inputs[:, :0], True)
    assert proj.project(empty).shape == (BATCH, 0, 6)


def test_float32_projection_close_to_float64():
    tg = _captured(TokenMixer(), _inputs())
    proj = AchlioptasProjection(DIN, DOUT, dim=10, seed=0)
    single = TokenGradients(tg.delta.float(), tg.inputs.float(), True)
    assert proj.project(single).dtype == torch.float32
    torch.testing.assert_close(proj.project(single).double(), proj.project(tg), rtol=1e-5, atol=1e-5)


def test_l2_normalize_and_fungi_concat():
    g1, g2, emb = torch.randn(4, 3), torch.randn(4, 5), torch.randn(4, 6) * 10
    out = fungi_concat([g1, g2], emb)
    assert out.shape == (4, 14)
    torch.testing.assert_close(out[:, :3], g1 / g1.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(out[:, 8:], emb / emb.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(out.norm(dim=-1), torch.full((4,), 3.0).sqrt())
    assert torch.equal(l2_normalize(torch.zeros(2, 3)), torch.zeros(2, 3))


@pytest.mark.parametrize("kind", ["dense", "structured"])
def test_bfloat16_projection_within_1e2_of_float64_and_named_in_identity(kind):
    # ViT-sized rows would be slow here; 48→40 with 2000 tokens keeps many GEMM terms.
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(2000, 40, generator=gen, dtype=torch.float64)
    inputs = torch.randn(2000, 48, generator=gen, dtype=torch.float64) * 3
    options = {"terms": 4} if kind == "structured" else {"chunk_rows": 5}
    exact = make_projection(kind, in_features=48, out_features=40, dim=24, seed=3, **options)
    low = make_projection(kind, in_features=48, out_features=40, dim=24, seed=3, compute_dtype="bfloat16", **options)
    reference = exact.project_tokens(delta, inputs)  # float64 operands stay float64
    fast = low.project_tokens(delta.float(), inputs.float())
    assert fast.dtype == torch.float32
    relative = (fast.double() - reference).norm(dim=1) / reference.norm(dim=1)
    assert relative.max() < 1e-2
    assert relative.mean() > 1e-5, "bfloat16 path did not run in bfloat16"
    grads = torch.randn(6, 40, 49, generator=gen, dtype=torch.float64)
    whole = low.project_gradients(grads.float()).double()
    whole_ref = exact.project_gradients(grads)
    assert ((whole - whole_ref).norm(dim=1) / whole_ref.norm(dim=1)).max() < 1e-2
    # Same projection at another precision: float32 identity unchanged (bank hashes kept).
    assert "compute_dtype" not in exact.identity()
    assert low.identity() == {**exact.identity(), "compute_dtype": "bfloat16"}
    with pytest.raises(ValueError, match="compute_dtype"):
        make_projection(kind, in_features=48, out_features=40, dim=24, seed=3, compute_dtype="auto")


def test_compute_dtype_resolution_records_what_runs(monkeypatch):
    assert cpu_has_fast_bfloat16("processor: 0\nflags\t: fpu avx2 amx_bf16 amx_tile\n")
    assert cpu_has_fast_bfloat16("flags : avx512f avx512_bf16\n")
    assert not cpu_has_fast_bfloat16("flags : avx2 f16c fma\nbugs : avx512_bf16_fake\n")
    assert resolve_compute_dtype("float32") == "float32"
    assert resolve_compute_dtype("bfloat16", "cpu") == "bfloat16"
    monkeypatch.setattr("segfungi.gradients._compute_dtype.cpu_has_fast_bfloat16", lambda: True)
    assert resolve_compute_dtype("auto", "cpu") == "bfloat16"
    monkeypatch.setattr("segfungi.gradients._compute_dtype.cpu_has_fast_bfloat16", lambda: False)
    assert resolve_compute_dtype("auto", "cpu") == "float32"
    with pytest.raises(ValueError, match="auto, float32 or bfloat16"):
        resolve_compute_dtype("float16")


def test_dense_projection_on_a_non_cpu_device_keeps_its_chunks_resident():
    # The meta device runs the accelerator code path (shapes only) on any machine; the
    # values of that path are the CPU path's: the same chunks of the same ±1 matrix.
    proj = AchlioptasProjection(DIN, DOUT, dim=10, seed=0, chunk_rows=3)
    delta, inputs = torch.randn(7, DOUT, device="meta"), torch.randn(7, DIN, device="meta")
    assert proj.project_tokens(delta, inputs).shape == (7, 10)
    first = proj._device_cache
    assert [len(rows) for rows, _ in first] == [3, 3, 3, 1] and first[0][1].device.type == "meta"
    proj.project_tokens(delta, inputs)
    assert proj._device_cache is first  # not rebuilt per call
    cpu_chunks = [chunk for _, chunk in proj._chunks(torch.float32, torch.device("cpu"))]
    assert [c.shape for c in cpu_chunks] == [c.shape for _, c in first]


# ---------------------------------------------------------------- the registry of projections


class GaussianProjection:
    """A toy projection: an explicit Gaussian matrix. Registering it is all it takes to use it."""

    kind = "toy-gaussian"

    def __init__(self, in_features, out_features, dim, seed, *, bias=True, compute_dtype="float32", scale=1.0):
        self.in_features, self.out_features, self.dim, self.seed, self.bias = in_features, out_features, dim, seed, bias
        self.scale = scale
        width = in_features + int(bias)
        gen = torch.Generator().manual_seed(seed)
        self.matrix = scale * torch.randn(dim, out_features * width, generator=gen, dtype=torch.float64)

    def project_tokens(self, delta, inputs):
        if self.bias:
            inputs = torch.cat([inputs, torch.ones_like(inputs[:, :1])], dim=1)
        flat = (delta[:, :, None] * inputs[:, None, :]).reshape(len(delta), -1)
        return (flat.double() @ self.matrix.T).to(delta.dtype)

    def identity(self):
        return {"kind": self.kind, "seed": self.seed, "dim": self.dim, "scale": self.scale}


@pytest.fixture
def toy_projection():
    from segfungi.gradients import register_projection, unregister_projection

    register_projection(GaussianProjection.kind, GaussianProjection,
                        options_from_settings=lambda fungi: {"scale": float(fungi["toy_scale"])})
    yield GaussianProjection.kind
    unregister_projection(GaussianProjection.kind)


def test_a_registered_projection_is_usable_through_make_projection(toy_projection):
    from segfungi.gradients import projection_names, projection_options

    assert toy_projection in projection_names()
    options = projection_options(toy_projection, {"toy_scale": 2})
    proj = make_projection(toy_projection, in_features=DIN, out_features=DOUT, dim=8, seed=1, **options)
    assert isinstance(proj, GaussianProjection) and proj.scale == 2.0
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(6, DOUT, generator=gen, dtype=torch.float64)
    inputs = torch.randn(6, DIN, generator=gen, dtype=torch.float64)
    # vec(δ [a; 1]ᵀ) row-major, then the matrix: the gradient of each token, projected.
    expected = torch.stack([proj.matrix @ torch.cat([torch.outer(d, a), d[:, None]], 1).reshape(-1)
                            for d, a in zip(delta, inputs)])
    torch.testing.assert_close(proj.project_tokens(delta, inputs), expected)


def test_a_registered_projection_is_a_fungi_projection_setting_until_unregistered():
    from segfungi.config import load_config
    from segfungi.gradients import register_projection, unregister_projection

    message = r"'fungi\.projection' must be one of dense, structured, got 'toy-gaussian'"
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=["fungi.projection=toy-gaussian"])
    register_projection("toy-gaussian", GaussianProjection)
    try:
        assert load_config(overrides=["fungi.projection=toy-gaussian"])["fungi"]["projection"] == "toy-gaussian"
    finally:
        unregister_projection("toy-gaussian")
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=["fungi.projection=toy-gaussian"])


def test_an_unknown_projection_is_refused_with_the_registered_ones():
    from segfungi.gradients import projection_options, register_projection

    with pytest.raises(ConfigError, match=r"unknown projection 'toy-gaussian' \(choose from dense, structured\)"):
        make_projection("toy-gaussian", in_features=DIN, out_features=DOUT, dim=8, seed=1)
    with pytest.raises(ConfigError, match="unknown projection"):
        projection_options("toy-gaussian", {})
    with pytest.raises(ValueError, match="already registered"):
        register_projection("dense", GaussianProjection)
    assert projection_options("structured", {"structured_terms": 3}) == {"terms": 3}
    assert projection_options("dense", {"projection_kernel": "gemm", "structured_terms": 3}) == {"kernel": "gemm"}


def test_schema_lists_the_compute_dtypes_and_the_dense_kernels():
    from segfungi.settings_schema import keys

    assert set(keys()["fungi.projection_dtype"].choices) == {"auto", *COMPUTE_DTYPES}
    assert keys()["fungi.projection_kernel"].choices == DENSE_KERNELS
