"""What CUDA autocast does to each op: the table CUDA emulation applies on a CPU (pure Python, no torch).

Copied from the lists torch compiles into its ``AutocastCUDA`` kernels (``ATen/autocast_mode.h`` of torch
2.13: ``AT_FORALL_LOWER_PRECISION_FP``, ``AT_FORALL_FP32``, ``AT_FORALL_FP32_SET_OPT_DTYPE``,
``AT_FORALL_DIFFERENT_REDISPATCH_SIGNATURE``, ``AT_FORALL_PROMOTE``, and the CUDA-only registrations in
``autocast_mode.cpp``). Ops are ATen overloads, ``name`` or ``name.overload``. Tests hold the table to
the installed torch (every op with an ``AutocastCUDA`` kernel is here, and nothing else) and to
``rule_docs/autocast-op-lists.md``.

Policies, as ``autocast_mode.h`` names them:

* ``lower_precision_fp``: floating inputs (not float64) are cast to the region's dtype.
* ``fp32``: floating inputs (not float64) are cast to float32.
* ``fp32_set_opt_dtype``: when the first tensor argument is eligible and no ``dtype=`` was given, the op
  runs with ``dtype=torch.float32`` (``softmax``, ``sum``, ``cumsum`` ...).
* ``fp32_append_dtype``: ``norm`` runs with a float32 dtype appended.
* ``promote``: floating inputs are cast to the widest floating type among them.
* ``banned``: the op raises :data:`BANNED_MESSAGE` (``binary_cross_entropy``).
"""

from __future__ import annotations

LOWER_PRECISION_FP = "lower_precision_fp"
FP32 = "fp32"
FP32_SET_OPT_DTYPE = "fp32_set_opt_dtype"
FP32_APPEND_DTYPE = "fp32_append_dtype"
PROMOTE = "promote"
BANNED = "banned"

#: the RuntimeError CUDA autocast raises for a banned op (autocast_mode.cpp, torch 2.13)
BANNED_MESSAGE = (
    "torch.nn.functional.binary_cross_entropy and torch.nn.BCELoss are unsafe to autocast.\n"
    "Many models use a sigmoid layer right before the binary cross entropy layer.\n"
    "In this case, combine the two layers using torch.nn.functional.binary_cross_entropy_with_logits\n"
    "or torch.nn.BCEWithLogitsLoss.  binary_cross_entropy_with_logits and BCEWithLogits are\n"
    "safe to autocast."
)


def _ops(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_LOWER_PRECISION_FP_OPS = _ops(
    """
    _convolution.deprecated _convolution conv1d conv2d conv3d conv_tbc conv_transpose1d conv_transpose2d.input
    conv_transpose3d.input convolution prelu addmm addmv addr matmul einsum mm mv linalg_vecdot linear addbmm
    baddbmm bmm chain_matmul linalg_multi_dot _thnn_fused_lstm_cell _thnn_fused_gru_cell lstm_cell gru_cell
    rnn_tanh_cell rnn_relu_cell _scaled_dot_product_flash_attention scaled_dot_product_attention
    cudnn_convolution cudnn_convolution_transpose
    """
)
_FP32_OPS = _ops(
    """
    acos asin cosh erfinv exp expm1 log log10 log2 log1p reciprocal rsqrt sinh tan pow.Tensor_Scalar
    pow.Tensor_Tensor pow.Scalar softplus layer_norm native_layer_norm rms_norm group_norm frobenius_norm.dim
    nuclear_norm nuclear_norm.dim cosine_similarity poisson_nll_loss cosine_embedding_loss nll_loss nll_loss2d
    hinge_embedding_loss kl_div l1_loss smooth_l1_loss huber_loss mse_loss margin_ranking_loss
    multilabel_margin_loss soft_margin_loss triplet_margin_loss multi_margin_loss
    binary_cross_entropy_with_logits dist pdist cdist renorm logsumexp upsample_nearest1d
    _upsample_nearest_exact1d upsample_nearest2d _upsample_nearest_exact2d upsample_nearest3d
    _upsample_nearest_exact3d upsample_linear1d upsample_bilinear2d _upsample_bilinear2d_aa
    upsample_trilinear3d upsample_bicubic2d _upsample_bicubic2d_aa
    """
)
_FP32_SET_OPT_DTYPE_OPS = _ops(
    """
    prod prod.dim_int softmax.int log_softmax.int cumprod cumsum linalg_vector_norm linalg_matrix_norm
    linalg_matrix_norm.str_ord sum sum.dim_IntList
    """
)
_FP32_APPEND_DTYPE_OPS = _ops("norm.Scalar norm.ScalarOpt_dim")
_PROMOTE_OPS = _ops("addcdiv addcmul atan2 bilinear cross dot vdot grid_sampler index_put tensordot scatter_add")
_BANNED_OPS = _ops("binary_cross_entropy")

#: ATen overload ("mm", "softmax.int") -> policy, for every op CUDA autocast handles
CUDA_POLICY: dict[str, str] = {
    **dict.fromkeys(_LOWER_PRECISION_FP_OPS, LOWER_PRECISION_FP),
    **dict.fromkeys(_FP32_OPS, FP32),
    **dict.fromkeys(_FP32_SET_OPT_DTYPE_OPS, FP32_SET_OPT_DTYPE),
    **dict.fromkeys(_FP32_APPEND_DTYPE_OPS, FP32_APPEND_DTYPE),
    **dict.fromkeys(_PROMOTE_OPS, PROMOTE),
    **dict.fromkeys(_BANNED_OPS, BANNED),
}

#: CPU autocast's lower-precision ops (the torch 2.13 op reference); every other op with an AutocastCPU
#: kernel runs in float32 there. Emulation needs it for ``autocast("cpu")`` regions inside an emulated run.
CPU_LOWER_PRECISION_FP = frozenset(
    _ops(
        """
        conv1d conv1d.padding conv2d conv2d.padding conv3d conv3d.padding bmm mm linalg_vecdot baddbmm addmm
        addbmm linear _convolution _convolution.deprecated matmul conv_tbc mkldnn_rnn_layer conv_transpose1d
        conv_transpose2d.input conv_transpose3d.input prelu scaled_dot_product_attention
        _native_multi_head_attention _addmm_activation
        """
    )
)
#: CPU autocast's promote ops
CPU_PROMOTE = frozenset(_ops("cat stack index_copy"))


def ops_with(policy: str) -> list[str]:
    return [op for op, rule in CUDA_POLICY.items() if rule == policy]
