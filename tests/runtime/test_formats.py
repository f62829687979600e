"""Float formats: limits, bit patterns, and quantize() bit-exact against torch's own casts."""

from __future__ import annotations

import math

import pytest

from flake8_amp.runtime.formats import FORMATS, FloatFormat, bits, get_format, limits_table, round_to_format

torch = pytest.importorskip("torch")
from flake8_amp.runtime.formats import quantize  # noqa: E402

TORCH_DTYPES = {
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}


def assert_bit_exact(x: "torch.Tensor", name: str) -> None:
    reference = x.to(TORCH_DTYPES[name]).to(torch.float32)
    simulated = quantize(x, name)
    assert simulated.dtype == torch.float32
    nan = torch.isnan(reference)
    assert torch.equal(nan, torch.isnan(simulated))
    mismatched = reference[~nan].view(torch.int32) != simulated[~nan].view(torch.int32)
    assert int(mismatched.sum()) == 0, x[~nan][mismatched][:10]


@pytest.mark.parametrize("name", sorted(TORCH_DTYPES))
def test_quantize_matches_torch_on_millions_of_random_bit_patterns(name):
    generator = torch.Generator().manual_seed(1234)
    patterns = torch.randint(-(2**31), 2**31 - 1, (3_000_000,), generator=generator, dtype=torch.int64)
    assert_bit_exact(patterns.to(torch.int32).view(torch.float32), name)  # every exponent, NaN, inf, subnormals


@pytest.mark.parametrize("name", sorted(TORCH_DTYPES))
def test_quantize_matches_torch_across_magnitudes(name):
    generator = torch.Generator().manual_seed(5)
    scales = torch.logspace(-12, 12, 49)
    x = (torch.randn(49, 20_000, generator=generator) * scales[:, None]).reshape(-1)
    assert_bit_exact(x, name)


def _edge_cases(fmt: FloatFormat) -> "torch.Tensor":
    m = fmt.mantissa_bits
    values = [0.0, -0.0, math.inf, -math.inf, math.nan, fmt.max, -fmt.max, fmt.smallest_normal, fmt.smallest_subnormal]
    values += [fmt.smallest_subnormal / 2, fmt.smallest_subnormal * 1.5, fmt.smallest_subnormal * 2.5]  # ties
    values += [fmt.smallest_normal * (1 - 2**-m / 2), fmt.smallest_normal * (1 - 2**-m)]  # subnormal boundary
    ulp_at_max = math.ldexp(1.0, fmt.max_exponent - m)
    values += [fmt.max + ulp_at_max / 2, fmt.max + ulp_at_max / 4, fmt.max + ulp_at_max, fmt.max * 4]
    values += [1 + 2**-m / 2, 1 + 3 * 2**-m / 2, 1 + 2**-m / 2 * 1.001, 2 - 2**-m / 2]  # halfway points
    values += [-(1 + 2**-m / 2), 65504.0, 65520.0, 1e-8, -1e9, 448.0, 464.0, 57344.0, 61440.0]
    return torch.tensor(values, dtype=torch.float32)


@pytest.mark.parametrize("name", sorted(TORCH_DTYPES))
def test_quantize_matches_torch_on_edge_cases(name):
    x = _edge_cases(get_format(name))
    assert_bit_exact(x, name)
    assert_bit_exact(-x, name)


@pytest.mark.parametrize("name", sorted(TORCH_DTYPES))
def test_scalar_rounding_agrees_with_quantize(name):
    x = torch.cat([_edge_cases(get_format(name)), torch.randn(2000) * 300])
    simulated = quantize(x, name).tolist()
    for value, expected in zip(x.tolist(), simulated):
        got = round_to_format(value, name)
        assert (math.isnan(got) and math.isnan(expected)) or (got == expected and math.copysign(1, got) == math.copysign(1, expected))


def test_quantize_keeps_shape_float64_and_signed_zero():
    x = torch.tensor([[1e-30, -0.0], [3.0, 70000.0]], dtype=torch.float64)
    q = quantize(x, "fp16")
    assert q.shape == (2, 2) and q.dtype == torch.float64
    assert q[0, 0] == 0 and math.copysign(1, q[0, 1].item()) == -1 and math.isinf(q[1, 1].item())
    with pytest.raises(TypeError, match="floating-point"):
        quantize(torch.arange(3), "fp16")


@pytest.mark.parametrize(
    "name, expected",
    [
        ("fp32", (3.4028234663852886e38, 2**-126, 2**-149, 2**-23)),
        ("fp16", (65504.0, 2**-14, 2**-24, 2**-10)),
        ("bf16", (3.3895313892515355e38, 2**-126, 2**-133, 2**-7)),
        ("fp8_e4m3fn", (448.0, 2**-6, 2**-9, 0.125)),
        ("fp8_e5m2", (57344.0, 2**-14, 2**-16, 0.25)),
    ],
)
def test_builtin_limits(name, expected):
    fmt = FORMATS[name]
    assert (fmt.max, fmt.smallest_normal, fmt.smallest_subnormal, fmt.eps) == expected
    assert fmt.limits()["max"] == expected[0]
    assert (fmt.max, fmt.smallest_normal, fmt.smallest_subnormal) == (
        float(torch.finfo(TORCH_DTYPES.get(name, torch.float32)).max),
        float(torch.finfo(TORCH_DTYPES.get(name, torch.float32)).tiny),
        float(torch.finfo(TORCH_DTYPES.get(name, torch.float32)).smallest_normal) * 2.0**-fmt.mantissa_bits,
    )


def test_custom_format_1_6_17():
    fmt = FloatFormat("e6m17", 6, 17)
    assert fmt.bits == 24 and fmt.bias == 31
    assert fmt.max == (2 - 2**-17) * 2.0**31
    assert fmt.smallest_normal == 2.0**-30 and fmt.smallest_subnormal == 2.0**-47 and fmt.eps == 2.0**-17
    assert fmt.decimal_digits == pytest.approx(18 * math.log10(2))
    assert fmt.dynamic_range == pytest.approx(math.log2(fmt.max) + 47)
    q = quantize(torch.tensor([1 + 2**-18, 1 + 3 * 2**-18, 2.0**32, 2.0**-48]), fmt)
    assert q.tolist() == [1.0, 1 + 2**-16, math.inf, 0.0]  # ties to even; overflow; underflow


def test_bits_of_known_values():
    pattern = bits(12345.67, "fp16")
    assert (pattern.sign, pattern.exponent, pattern.mantissa) == ("0", "11100", "1000000111")
    assert pattern.stored == 12344.0 and pattern.relative_error == pytest.approx(1.3530e-4, rel=1e-3)
    assert (bits(-2.0, "bf16").sign, bits(-2.0, "bf16").exponent, bits(-2.0, "bf16").mantissa) == ("1", "10000000", "0000000")
    assert bits(1e-8, "fp16").stored == 0.0
    assert bits(2**-24, "fp16").exponent == "00000" and bits(2**-24, "fp16").mantissa == "0000000001"
    assert bits(1e9, "fp16").exponent == "11111" and math.isinf(bits(1e9, "fp16").stored)
    assert bits(500.0, "fp8_e4m3fn").stored == 448.0 and bits(500.0, "fp8_e4m3fn").mantissa == "110"
    assert "0 | 11100 | 1000000111 = 12344.0" in str(pattern)


def test_get_format_spellings_and_errors():
    assert get_format("half") is get_format(torch.float16) is FORMATS["fp16"]
    assert get_format("bfloat16") is FORMATS["bf16"] and get_format("e4m3") is FORMATS["fp8_e4m3fn"]
    with pytest.raises(ValueError, match="unknown float format 'fp7'.*fp16"):
        get_format("fp7")
    with pytest.raises(ValueError, match="exponent_bits"):
        FloatFormat("bad", 1, 3)


def test_limits_table_lists_every_format():
    table = limits_table()
    assert [line.split()[0] for line in table.splitlines()[1:]] == list(FORMATS)
    assert "65504" in table and "448" in table
