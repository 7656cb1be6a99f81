"""TernaryMultiheadAttention: torch.nn.MultiheadAttention with ternary projections, for
anacuda.convert's transformer recipes; and `disable_fast_path`, which keeps torch's fused
encoder kernels from reading a converted layer's float weights."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from .ternary import LearnedScaleANA, TernaryLinear


class _Projection(nn.Module):
    """The quantisers of a projection whose weight is held elsewhere (MultiheadAttention's
    in_proj_weight): `norm` and `input_quant` for its input, `weight_quant` for its weight, taken
    from a TernaryLinear (or BitLinear) built with the same options, so that they are the layer's."""

    def __init__(self, layer: TernaryLinear):
        super().__init__()
        self.norm, self.input_quant, self.weight_quant = layer.norm, layer.input_quant, layer.weight_quant

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            x = self.norm(x)
        return x if self.input_quant is None else self.input_quant(x)


class TernaryMultiheadAttention(nn.MultiheadAttention):
    """torch.nn.MultiheadAttention whose in-projection and output projection are ternary layers
    (TernaryLinear, or BitLinear with ``linear=BitLinear``): their inputs quantised per token
    (8 bits by default), their weights ternary. The attention maths is torch's own
    (``F.multi_head_attention_forward``: masks, dropout, bias_k / bias_v, add_zero_attn,
    need_weights), with the quantised in-projection weight; torch's fused fast path is never
    taken, so nothing runs in float.

    - ``in_proj_weight`` (or q/k/v_proj_weight when kdim / vdim differ from embed_dim) and
      ``in_proj_bias`` stay the float parameters that are trained; ``in_proj_quant`` (or
      ``q_proj_quant``, ``k_proj_quant``, ``v_proj_quant``) quantises them and their inputs on
      every forward (the packed weight has one scale, as a fused qkv Linear such as GPT-2's has).
    - ``out_proj`` is a TernaryLinear / BitLinear. F.multi_head_attention_forward applies its
      output projection itself, so it gets the identity (each output is the input times 1 plus
      zeros: exact, unless float32 matmuls run in TF32), and out_proj is applied after it, so that
      its input is quantised per token as BitNet quantises o_proj's.

    ``linear`` and ``linear_options``: the layer class and its keyword arguments (noise,
    strategy, sigma, weight_scale, activation_bits, norm, ...).
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False, add_zero_attn=False,
                 kdim=None, vdim=None, batch_first=False, device=None, dtype=None, *, linear=TernaryLinear,
                 **linear_options):
        if not (isinstance(linear, type) and issubclass(linear, TernaryLinear)):
            raise TypeError(f"anacuda.TernaryMultiheadAttention: linear must be TernaryLinear or a subclass, got "
                            f"{linear!r}")
        super().__init__(embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim, vdim, batch_first,
                         device, dtype)

        def make(n_in, n_out, with_bias=False):
            return linear(n_in, n_out, with_bias, device, dtype, **linear_options)

        if self._qkv_same_embed_dim:
            self.in_proj_quant = _Projection(make(embed_dim, 3 * embed_dim))
        else:
            self.q_proj_quant = _Projection(make(embed_dim, embed_dim))
            self.k_proj_quant = _Projection(make(self.kdim, embed_dim))
            self.v_proj_quant = _Projection(make(self.vdim, embed_dim))
        self.out_proj = make(embed_dim, embed_dim, bias)
        self._init_learned_scales()

    @classmethod
    def from_float(cls, mha: nn.MultiheadAttention, linear=TernaryLinear, **linear_options):
        """The quantised twin of `mha`, sharing its parameters (the same Parameter objects: weights
        and biases exactly, ties kept), in its training mode."""
        if type(mha).forward is not nn.MultiheadAttention.forward:
            raise TypeError(f"anacuda.TernaryMultiheadAttention.from_float: {type(mha).__name__} overrides "
                            "MultiheadAttention.forward; its own forward cannot be kept")
        w = mha.out_proj.weight
        new = cls(mha.embed_dim, mha.num_heads, mha.dropout, mha.in_proj_bias is not None, mha.bias_k is not None,
                  mha.add_zero_attn, mha.kdim, mha.vdim, mha.batch_first, w.device, w.dtype, linear=linear,
                  **linear_options)
        for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias", "bias_k",
                     "bias_v"):
            if getattr(mha, name) is not None:
                setattr(new, name, getattr(mha, name))
        new.out_proj.weight = mha.out_proj.weight
        if mha.out_proj.bias is not None:
            new.out_proj.bias = mha.out_proj.bias
        new._init_learned_scales()
        return new.train(mha.training)

    def _init_learned_scales(self):
        """Learned weight scales (weight_scale="learned"...) from this attention's own weights, not
        from the placeholder layers whose quantisers the projections took."""
        for quant, weight in self._weight_quantisers():
            if isinstance(quant, LearnedScaleANA):
                quant.init_scale(weight)

    def _weight_quantisers(self):
        """(weight quantiser, the weight it quantises) of every projection."""
        if self._qkv_same_embed_dim:
            pairs = [(self.in_proj_quant.weight_quant, self.in_proj_weight)]
        else:
            pairs = [(self.q_proj_quant.weight_quant, self.q_proj_weight),
                     (self.k_proj_quant.weight_quant, self.k_proj_weight),
                     (self.v_proj_quant.weight_quant, self.v_proj_weight)]
        return pairs + [(self.out_proj.weight_quant, self.out_proj.weight)]

    def forward(self, query, key, value, key_padding_mask: Optional[torch.Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[torch.Tensor] = None, average_attn_weights: bool = True, is_causal: bool = False):
        # torch's MultiheadAttention.forward without its fast path.
        key_padding_mask = F._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask",
                                             other_type=F._none_or_dtype(attn_mask), other_name="attn_mask",
                                             target_type=query.dtype)
        attn_mask = F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="",
                                      target_type=query.dtype, check_other=False)
        if query.is_nested or key.is_nested or value.is_nested:
            raise ValueError("anacuda.TernaryMultiheadAttention: nested tensors are not supported (torch's "
                             "MultiheadAttention takes them only on its fused fast path, which reads float weights)")
        # Quantise each distinct input once, keeping `query is key is value` (the packed projection).
        packed = self._qkv_same_embed_dim
        pq, pk, pv = (self.in_proj_quant,) * 3 if packed else (self.q_proj_quant, self.k_proj_quant, self.v_proj_quant)
        q = pq.inputs(query)
        k = q if (key is query and pk is pq) else pk.inputs(key)
        if value is key and pv is pk:
            v = k
        elif value is query and pv is pq:
            v = q
        else:
            v = pv.inputs(value)
        is_batched = query.dim() == 3
        if self.batch_first and is_batched:
            if k is v:
                if q is k:
                    q = k = v = q.transpose(1, 0)
                else:
                    q, k = (t.transpose(1, 0) for t in (q, k))
                    v = k
            else:
                q, k, v = (t.transpose(1, 0) for t in (q, k, v))

        identity = torch.eye(self.embed_dim, dtype=q.dtype, device=q.device)
        if packed:
            weights = dict(in_proj_weight=self.in_proj_quant.weight_quant(self.in_proj_weight))
        else:
            weights = dict(in_proj_weight=None, use_separate_proj_weight=True,
                           q_proj_weight=self.q_proj_quant.weight_quant(self.q_proj_weight),
                           k_proj_weight=self.k_proj_quant.weight_quant(self.k_proj_weight),
                           v_proj_weight=self.v_proj_quant.weight_quant(self.v_proj_weight))
        out, attn_weights = F.multi_head_attention_forward(
            q, k, v, self.embed_dim, self.num_heads, in_proj_bias=self.in_proj_bias, bias_k=self.bias_k,
            bias_v=self.bias_v, add_zero_attn=self.add_zero_attn, dropout_p=self.dropout, out_proj_weight=identity,
            out_proj_bias=None, training=self.training, key_padding_mask=key_padding_mask,
            need_weights=need_weights, attn_mask=attn_mask, average_attn_weights=average_attn_weights,
            is_causal=is_causal, **weights)
        out = self.out_proj(out)
        if self.batch_first and is_batched:
            out = out.transpose(1, 0)
        return out, attn_weights


def disable_fast_path(layer: nn.Module) -> None:
    """Keeps torch's fused kernels (``torch._transformer_encoder_layer_fwd`` and the nested-tensor
    path of TransformerEncoder) from running `layer`: in eval mode under no_grad they read
    linear1.weight, self_attn.in_proj_weight, ... directly, in float. Both are taken only when
    these attributes say so (torch checks them before anything else it reads)."""
    if isinstance(layer, nn.TransformerEncoderLayer):
        layer.activation_relu_or_gelu = 0  # "activation_relu_or_gelu was not True": the layer's slow path
    elif isinstance(layer, nn.TransformerEncoder):
        layer.use_nested_tensor = False  # "self.use_nested_tensor was not True"
