"""Facts about torch's public API that the rules share, kept as data.

The op lists follow the "Autocast Op Reference" of the torch.amp docs (torch 2.13); see
rule_docs/autocast-op-lists.md for the human-readable version.
"""

from __future__ import annotations

AUTOCAST_CONSTRUCTORS: dict[str, str | None] = {
    # qualified name -> the device it implies (None: the first argument says)
    "torch.autocast": None,
    "torch.amp.autocast": None,
    "torch.amp.autocast_mode.autocast": None,
    "torch.cuda.amp.autocast": "cuda",
    "torch.cuda.amp.autocast_mode.autocast": "cuda",
    "torch.cpu.amp.autocast": "cpu",
    "torch.cpu.amp.autocast_mode.autocast": "cpu",
}

# Classes of other libraries that build and own a GradScaler: timm's NativeScaler, the loss scaler of
# DeiT-style trainers (`loss_scaler = NativeScaler()` ... `loss_scaler(loss, optimizer)`), whose
# `state_dict()` is the GradScaler's.
GRAD_SCALER_OWNERS = frozenset({"timm.utils.NativeScaler", "timm.utils.cuda.NativeScaler"})

GRAD_SCALER_CONSTRUCTORS = frozenset(
    {
        "torch.amp.GradScaler",
        "torch.amp.grad_scaler.GradScaler",
        "torch.cuda.amp.GradScaler",
        "torch.cuda.amp.grad_scaler.GradScaler",
        "torch.cpu.amp.GradScaler",
        "torch.cpu.amp.grad_scaler.GradScaler",
        "torch.distributed.fsdp.sharded_grad_scaler.ShardedGradScaler",
    }
)

GRAD_DISABLING_CONTEXTS = frozenset({"torch.no_grad", "torch.inference_mode", "torch.autograd.grad_mode.no_grad"})

CUSTOM_FWD = frozenset({"torch.amp.custom_fwd", "torch.amp.autocast_mode.custom_fwd", "torch.cuda.amp.custom_fwd"})
CUSTOM_BWD = frozenset({"torch.amp.custom_bwd", "torch.amp.autocast_mode.custom_bwd", "torch.cuda.amp.custom_bwd"})

AUTOGRAD_FUNCTION_BASES = frozenset(
    {"torch.autograd.Function", "torch.autograd.function.Function", "torch.autograd.function.InplaceFunction"}
)

# Dtype spellings, by the canonical dtype name they denote.
DTYPE_NAMES: dict[str, str] = {
    "torch.float16": "float16",
    "torch.half": "float16",
    "torch.bfloat16": "bfloat16",
    "torch.float32": "float32",
    "torch.float": "float32",
    "torch.float64": "float64",
    "torch.double": "float64",
}
LOW_PRECISION_DTYPES = frozenset({"float16", "bfloat16"})

# Legacy tensor types accepted by Tensor.type(...), by the dtype they denote.
TENSOR_TYPE_DTYPES: dict[str, str] = {
    "torch.HalfTensor": "float16",
    "torch.cuda.HalfTensor": "float16",
    "torch.BFloat16Tensor": "bfloat16",
    "torch.cuda.BFloat16Tensor": "bfloat16",
}

LOSS_FUNCTIONS = frozenset(
    {
        "binary_cross_entropy",
        "binary_cross_entropy_with_logits",
        "cosine_embedding_loss",
        "cross_entropy",
        "ctc_loss",
        "gaussian_nll_loss",
        "hinge_embedding_loss",
        "huber_loss",
        "kl_div",
        "l1_loss",
        "margin_ranking_loss",
        "mse_loss",
        "multi_margin_loss",
        "multilabel_margin_loss",
        "multilabel_soft_margin_loss",
        "nll_loss",
        "poisson_nll_loss",
        "smooth_l1_loss",
        "soft_margin_loss",
        "triplet_margin_loss",
        "triplet_margin_with_distance_loss",
    }
)

# Ops that CUDA autocast runs in float16 (or the region's dtype) whatever their input.
AUTOCAST_LOWER_PRECISION_OPS = frozenset(
    {
        "matmul", "mm", "bmm", "addmm", "addbmm", "baddbmm", "addmv", "addr", "linear", "conv1d", "conv2d",
        "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "prelu", "chain_matmul",
        "multi_dot", "einsum", "scaled_dot_product_attention", "conv_tbc", "lstm_cell", "gru_cell", "rnn_tanh_cell",
        "rnn_relu_cell", "_convolution", "convolution",
    }
)

# Tensor methods and torch functions that autocast leaves alone: their result has their input's dtype
# (shape and indexing ops, elementwise math, comparisons' masks ...). Inside an autocast region a float32
# tensor stays float32 through them.
DTYPE_KEEPING_OPS = frozenset(
    {
        "view", "view_as", "reshape", "reshape_as", "transpose", "permute", "expand", "expand_as", "contiguous",
        "flatten", "unflatten", "squeeze", "unsqueeze", "repeat", "repeat_interleave", "tile", "flip", "roll",
        "narrow", "chunk", "split", "unbind", "gather", "index_select", "masked_select", "take", "clone", "detach",
        "masked_fill", "masked_fill_", "fill_", "zero_", "clamp", "clamp_", "clip", "abs", "neg", "sign", "relu",
        "relu_", "gelu", "silu", "sigmoid", "tanh", "sin", "cos", "sqrt", "mul", "mul_", "add", "add_", "sub",
        "sub_", "div", "div_", "where", "cat", "stack", "t", "movedim", "diagonal", "triu", "tril", "type_as",
        "new_zeros", "new_ones", "new_full", "new_empty", "new_tensor", "zeros_like", "ones_like", "full_like",
        "empty_like", "rand_like", "randn_like", "maximum", "minimum", "max", "min", "amax", "amin", "round",
        "floor", "ceil", "trunc", "frac", "square", "rsub", "lerp", "dropout", "pad", "interpolate", "unfold",
    }
)

# Ops that CUDA autocast runs in float32 whatever their input (torch and Tensor-method names).
CUDA_FLOAT32_OPS = frozenset(
    {
        "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal",
        "rsqrt", "sinh", "tan", "pow", "softplus", "layer_norm", "group_norm", "norm", "nuclear_norm",
        "frobenius_norm", "cosine_similarity", "poisson_nll_loss", "cosine_embedding_loss", "nll_loss",
        "nll_loss2d", "hinge_embedding_loss", "kl_div", "l1_loss", "smooth_l1_loss", "huber_loss",
        "mse_loss", "margin_ranking_loss", "multilabel_margin_loss", "soft_margin_loss",
        "triplet_margin_loss", "multi_margin_loss", "binary_cross_entropy_with_logits", "dist", "pdist",
        "cdist", "renorm", "logsumexp", "softmax", "log_softmax", "softmin", "sum", "prod", "cumsum",
        "cumprod", "normalize", "cross_entropy",
    }
)

# Ops that CPU autocast runs in float32 (a much shorter list: no softmax, layer_norm, sum or exp).
CPU_FLOAT32_OPS = frozenset(
    {
        "avg_pool3d", "binary_cross_entropy", "grid_sampler", "polar", "prod", "quantile", "nanquantile",
        "stft", "cdist", "trace", "view_as_complex", "cholesky", "cholesky_inverse", "cholesky_solve",
        "inverse", "lu_solve", "orgqr", "ormqr", "pinverse", "max_pool3d", "max_unpool2d", "max_unpool3d",
        "adaptive_avg_pool3d", "reflection_pad1d", "reflection_pad2d", "replication_pad1d",
        "replication_pad2d", "replication_pad3d", "mse_loss", "cosine_embedding_loss", "nll_loss",
        "nll_loss2d", "hinge_embedding_loss", "poisson_nll_loss", "smooth_l1_loss", "cross_entropy",
        "cross_entropy_loss", "l1_loss", "huber_loss", "margin_ranking_loss", "soft_margin_loss",
        "triplet_margin_loss", "multi_margin_loss", "ctc_loss", "kl_div", "multilabel_margin_loss",
        "binary_cross_entropy_with_logits", "fft_fft", "fft_ifft", "fft_rfft", "fft_irfft",
    }
)

# Tensor methods and torch functions whose result is not a floating-point tensor (or not a tensor):
# a low-precision input does not make their result low precision.
NON_FLOAT_RESULTS = frozenset(
    {
        "argmax", "argmin", "argsort", "item", "tolist", "size", "dim", "numel", "nelement", "eq", "ne",
        "gt", "lt", "ge", "le", "isnan", "isinf", "isfinite", "isneginf", "isposinf", "long", "int",
        "bool", "byte", "short", "nonzero", "numpy", "all", "any", "equal", "allclose", "count_nonzero",
        "data_ptr", "stride", "is_contiguous", "element_size", "get_device", "bincount", "searchsorted",
    }
)

# Methods and functions that bring a value back to full precision.
FLOAT32_CASTS = frozenset({"float", "double"})
