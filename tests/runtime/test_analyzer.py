"""analyze_tensor, the range explorer and the format commands."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from flake8_amp.runtime import analyze_tensor, plot_precision_table, precision_table  # noqa: E402


def seed_case() -> "torch.Tensor":
    generator = torch.Generator().manual_seed(0)
    t = torch.empty(1000, 2)
    t[:, 0] = torch.rand(1000, generator=generator) * 2200 - 1000
    t[:, 1] = torch.rand(1000, generator=generator) * 2.3 - 1.5
    return t


def test_seed_case_is_high_risk_and_suggests_a_float32_reduction():
    report = analyze_tensor(seed_case(), name="features")
    assert report.risk == "HIGH"
    assert report.dimensions.widest == 0 and report.dimensions.narrowest == 1
    assert 900 < report.dimensions.range_ratio < 1000
    assert any("dimension 1 spans" in s and "reduce in float32" in s for s in report.suggestions)
    assert "risk: HIGH" in str(report) and "features" in str(report)


def test_counts_and_percentages_on_a_constructed_tensor():
    x = torch.tensor([1e5, -7e4, 1e-8, 3e-8, 1e-6, 1.0, 0.0, float("nan"), float("inf"), 2.0])
    report = analyze_tensor(x, formats=("fp16", "bf16", "fp8_e4m3fn"))
    assert (report.nan_count, report.inf_count, report.numel) == (1, 1, 10)
    assert report.min == -7e4 and report.max == 1e5 and report.min_nonzero_magnitude == pytest.approx(1e-8)
    fp16 = report.formats["fp16"]
    # 8 finite values; 7 non-zero: 1e5 and -7e4 overflow; 1e-8 and 3e-8 become 0 (3e-8 < 2**-25 ... rounds to 2**-24?)
    assert fp16.overflow_pct == pytest.approx(100 * 2 / 8)
    expected_underflow = sum(1 for v in (1e5, -7e4, 1e-8, 3e-8, 1e-6, 1.0, 2.0) if abs(v) < 2**-25)
    assert fp16.underflow_pct == pytest.approx(100 * expected_underflow / 7)
    assert fp16.subnormal_pct > 0  # 1e-6 (and 3e-8 if it survives)
    assert report.formats["bf16"].overflow_pct == 0 and report.formats["bf16"].underflow_pct == 0
    assert report.formats["fp8_e4m3fn"].overflow_pct == pytest.approx(100 * 2 / 8)  # saturated to 448
    assert report.risk == "HIGH"
    assert report.dynamic_range == pytest.approx(math.log2(1e5) - math.log2(1e-8), rel=1e-6)


def test_relative_errors_match_quantize():
    from flake8_amp.runtime import quantize

    x = torch.randn(10_000, generator=torch.Generator().manual_seed(3))
    stats = analyze_tensor(x, formats=("bf16",)).formats["bf16"]
    q = quantize(x, "bf16").double()
    errors = ((q - x.double()).abs() / x.double().abs())
    # the analyzer computes errors in the tensor's float32: agreement to float32 rounding
    assert stats.mean_relative_error == pytest.approx(errors.mean().item(), rel=1e-6)
    assert stats.max_relative_error == pytest.approx(errors.max().item(), rel=1e-6)
    assert stats.max_relative_error <= 2**-8


def test_a_well_scaled_tensor_is_low_risk():
    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(1))
    report = analyze_tensor(x)
    assert report.risk == "LOW" and report.suggestions == []


def test_report_converts_to_json_and_dict():
    report = analyze_tensor(torch.tensor([[1.0, float("inf")], [2.0, 3.0]]))
    data = json.loads(report.to_json())
    assert data["shape"] == [2, 2] and data["inf_count"] == 1
    assert set(data["formats"]) == {"fp16", "bf16"} and "range" in data["dimensions"]
    assert report.to_dict() == data


def test_inputs_that_are_not_float_tensors():
    assert analyze_tensor([[1.0, 2.0], [3.0, 4.0]]).shape == [2, 2]  # lists become tensors
    empty = analyze_tensor(torch.empty(0, 3))
    assert empty.numel == 0 and empty.min is None and "empty" in str(empty)
    with pytest.raises(TypeError, match="floating-point tensor, got torch.int64: use t.float"):
        analyze_tensor(torch.arange(4))
    with pytest.raises(TypeError, match="floating-point tensor, got torch.bool"):
        analyze_tensor(torch.ones(2, dtype=torch.bool))
    with pytest.raises(TypeError, match="real floating-point"):
        analyze_tensor(torch.ones(2, dtype=torch.complex64))
    with pytest.raises(TypeError, match="needs a tensor"):
        analyze_tensor("not a tensor")
    with pytest.raises(ValueError, match="unknown float format"):
        analyze_tensor(torch.ones(2), formats=("fp7",))


def test_large_tensors_are_processed_in_chunks(monkeypatch):
    import flake8_amp.runtime.analyzer as analyzer

    monkeypatch.setattr(analyzer, "_CHUNK", 1000)
    x = torch.randn(10_001, 3, generator=torch.Generator().manual_seed(2))
    x[5000, 1] = 1e6
    chunked = analyze_tensor(x)
    monkeypatch.setattr(analyzer, "_CHUNK", 1 << 20)
    whole = analyze_tensor(x)
    assert chunked.formats["fp16"].overflow_pct == whole.formats["fp16"].overflow_pct > 0
    assert chunked.dimensions.max == whole.dimensions.max
    assert chunked.mean == pytest.approx(whole.mean)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_are_analyzed_on_the_device():
    x = seed_case().cuda()
    report = analyze_tensor(x)
    assert report.risk == "HIGH" and report.dimensions.narrowest == 1


def test_precision_table_rows_and_printing():
    table = precision_table(values=[1e-8, 1.0, 1e5], formats=("fp16", "bf16"))
    assert [row["fp16"].status for row in table.rows] == ["underflow", "ok", "overflow"]
    assert table.rows[2]["bf16"].status == "ok" and table.rows[2]["bf16"].relative_error < 2**-8
    text = str(table)
    assert "overflow" in text and "underflow" in text and text.splitlines()[0].split() == ["value", "fp16", "bf16"]
    assert json.dumps(table.to_dict())
    default = precision_table()
    assert len(default.values) == 21 and default.values[0] == 1e-10 and default.values[-1] == 1e10


def test_plot_precision_table_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = plot_precision_table(tmp_path / "formats.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot_precision_table(tmp_path / "x.png")


def test_formats_and_bits_commands():
    formats = subprocess.run([sys.executable, "-m", "flake8_amp.cli", "formats", "--json"], capture_output=True, text=True)
    rows = json.loads(formats.stdout)
    assert [r["name"] for r in rows] == ["fp32", "fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2"]
    shown = subprocess.run(
        [sys.executable, "-m", "flake8_amp.cli", "bits", "12345.67", "--format", "fp16"], capture_output=True, text=True
    )
    assert shown.returncode == 0 and "0 | 11100 | 1000000111 = 12344.0" in shown.stdout
    bad = subprocess.run([sys.executable, "-m", "flake8_amp.cli", "bits", "x"], capture_output=True, text=True)
    assert bad.returncode == 2 and "not a number" in bad.stderr and "Traceback" not in bad.stderr
    no_torch = subprocess.run(
        [sys.executable, "-c", "import sys; from flake8_amp.cli import main; main(['formats']); print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
    )
    assert no_torch.stdout.strip().endswith("False")


# ---------------------------------------------------------------- issue 14: any axis, the seed's spelling, clear errors
def test_any_axis_and_a_transposed_input_give_the_same_statistics():
    torch.manual_seed(0)
    t = torch.randn(300, 7) * torch.logspace(-3, 3, 7)
    along_columns = analyze_tensor(t)
    along_rows_of_transpose = analyze_tensor(t.t(), dim=0)  # a non-contiguous view
    assert along_rows_of_transpose.dimensions.axis == 0
    for key in ("min", "max", "mean", "range", "widest", "narrowest", "range_ratio"):
        assert getattr(along_rows_of_transpose.dimensions, key) == pytest.approx(getattr(along_columns.dimensions, key))
    assert analyze_tensor(t, dim=0).dimensions.range_ratio != along_columns.dimensions.range_ratio
    assert "axis 0: 300 dimensions" in str(analyze_tensor(t, dim=0))
    with pytest.raises(IndexError, match="dim 2 is out of range for a 2-d tensor"):
        analyze_tensor(t, dim=2)


def test_a_very_long_axis_keeps_its_summary_not_a_list_per_index():
    from flake8_amp.runtime.analyzer import MAX_LISTED_INDICES

    t = torch.ones(2, MAX_LISTED_INDICES + 1)
    t[:, 5] = torch.tensor([0.0, 1e4])
    dims = analyze_tensor(t).dimensions
    assert dims.min == dims.max == dims.mean == dims.range == []
    assert (dims.widest, dims.widest_range) == (5, 1e4)


def test_the_seed_spelling_reads_the_report():
    t = torch.tensor([[1e-3, 5e4], [2e-3, 6e4]])
    report = analyze_tensor(t, formats="fp16")  # one name
    assert list(report.formats) == ["fp16"]
    assert report["risk_level"] == report.risk
    assert report["dim_stats"] == {0: {"min": pytest.approx(1e-3), "max": pytest.approx(2e-3),
                                       "mean": pytest.approx(1.5e-3)},
                                   1: {"min": 5e4, "max": 6e4, "mean": 5.5e4}}
    assert report["dim_ratio"] == pytest.approx(1e4 / 1e-3)
    assert report["suggestion"] == " ".join(report.suggestions)
    assert report["risk"] == report.risk  # a field by its own name too
    with pytest.raises(KeyError, match="'risks': a report has risk_level, dim_stats, dim_ratio, suggestion, name"):
        report["risks"]


def test_meta_and_sparse_tensors_get_a_clear_error():
    with pytest.raises(TypeError, match="a meta tensor has none"):
        analyze_tensor(torch.empty(3, 3, device="meta"))
    with pytest.raises(TypeError, match="needs a dense tensor, got layout torch.sparse_coo: analyze t.to_dense()"):
        analyze_tensor(torch.eye(3).to_sparse())


def test_a_format_named_by_its_bits_alone():
    from flake8_amp.runtime import FloatFormat

    fmt = FloatFormat(exponent_bits=6, mantissa_bits=17)
    assert fmt.name == "e6m17" and fmt.bits == 24
    assert analyze_tensor(torch.ones(4), formats=fmt).formats["e6m17"].overflow_pct == 0
    with pytest.raises(ValueError, match="exponent_bits must be 2..11"):
        FloatFormat(mantissa_bits=3)
