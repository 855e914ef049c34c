"""Attention layers over (batch, time, features): multihead_attention, transformer_encoder and positional_embedding.

Parameter names and layouts are torch's (nn.MultiheadAttention, nn.TransformerEncoderLayer with batch_first=True),
so a state dict carries over either way. Padded positions (the input's `padding_mask`, True at padding) take no
part as keys: a right-padded sequence gives, at its real positions, what it gives alone.
"""

from __future__ import annotations

import math
from typing import Literal

from .. import backend
from .. import functional as F
from ..errors import ShapeError
from ..registry import PositiveFloat, PositiveInt, Probability, layers
from .core import LayerNorm, Linear
from .module import Module
from .recurrent import check_sequence_input


def _torch_linear(owner: Module, name: str, in_features: int, out_features: int, bias: bool = True,
                  zero_bias: bool = False) -> Linear:
    """A built Linear child `name` of `owner` with torch.nn.Linear's initialisation: weight and bias drawn from
    U(-1/sqrt(in_features), 1/sqrt(in_features)) (the bias zero with zero_bias, as nn.MultiheadAttention's out_proj)."""
    layer = Linear(out_features, bias=bias)
    layer.path = f"{owner.path}.{name}"
    layer.build((in_features,))
    bound = 1 / math.sqrt(in_features)
    rng = backend.host_rng()
    layer.weight.data[...] = rng.uniform(-bound, bound, layer.weight.shape)
    if layer.bias is not None:
        layer.bias.data[...] = 0 if zero_bias else rng.uniform(-bound, bound, layer.bias.shape)
    return layer


@layers.register("multihead_attention")
class MultiheadAttention(Module):
    """Self-attention with several heads, as torch.nn.MultiheadAttention(units, heads, batch_first=True) called with
    query = key = value = the input: (batch, time, features) -> (batch, time, units).

    Options:
        heads: the number of heads; it must divide units (each head attends with units / heads features).
        units: the size of the attention (and of the output); default: the input's features (torch's embed_dim).
        dropout: dropout on the attention weights in training.
        causal: each position attends only to itself and the positions before it.
        bias: the input and output projections have biases.

    Parameters as torch's: in_proj_weight (3 units, features) stacks the query, key and value projections,
    in_proj_bias (3 units), out_proj.weight (units, units), out_proj.bias (units). Padded positions of the input
    (its padding_mask) are masked as keys (torch's key_padding_mask); the output keeps the mask. A sequence that is
    all padding gives the output projection's bias (torch gives NaN).
    """

    def __init__(self, heads: PositiveInt, units: PositiveInt | None = None, dropout: Probability = 0.0,
                 causal: bool = False, bias: bool = True):
        super().__init__()
        self.heads, self.units, self.dropout, self.causal, self.use_bias = heads, units, dropout, causal, bias
        self.out_proj = None

    def children(self):
        return [("out_proj", self.out_proj)] if self.out_proj is not None else []

    def build_shape(self, input_shape):
        time, features = check_sequence_input(self, input_shape)
        self.embed_dim = self.units or features
        if self.embed_dim % self.heads:
            what = f"units ({self.embed_dim})" if self.units else f"units ({self.embed_dim}, the input's features)"
            raise ShapeError(f"{self.path}: heads ({self.heads}) must divide {what}; each head attends with "
                             f"units / heads features")
        shape = self.check_size((3 * self.embed_dim, features))
        bound = math.sqrt(6 / (features + 3 * self.embed_dim))  # torch: xavier_uniform_ of the stacked projection
        weight = backend.host_rng().uniform(-bound, bound, shape).astype(backend.default_dtype())
        self.in_proj_weight = self.add_parameter("in_proj_weight", weight)
        self.in_proj_bias = None
        if self.use_bias:
            self.in_proj_bias = self.add_parameter("in_proj_bias", backend.np.zeros(3 * self.embed_dim,
                                                                                     backend.default_dtype()),
                                                   decay=False)
        self.out_proj = _torch_linear(self, "out_proj", self.embed_dim, self.embed_dim, self.use_bias, zero_bias=True)
        return (time, self.embed_dim)

    def forward(self, x):
        return self.attend(x, x.padding_mask)

    def attend(self, x, key_padding_mask=None):
        """Self-attention of x (batch, time, features); key_padding_mask: None or boolean (batch, time), True at
        padded positions (they take no part as keys)."""
        n, time = x.shape[0], x.shape[1]
        e, h = self.embed_dim, self.heads
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (batch, time, 3 units)
        qkv = qkv.reshape(n, time, 3, h, e // h).transpose(2, 0, 3, 1, 4)  # (3, batch, heads, time, units / heads)
        allowed = None if key_padding_mask is None else (~key_padding_mask)[:, None, None, :]
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=allowed,
                                             dropout_p=self.dropout if self.training else 0.0, is_causal=self.causal)
        out = out.transpose(0, 2, 1, 3).reshape(n, time, e)
        return F.linear(out, self.out_proj.weight, self.out_proj.bias)

    def describe(self):
        parts = [f"heads={self.heads}"] + ([f"units={self.units}"] if self.units else [])
        parts += [f"dropout={self.dropout}"] if self.dropout else []
        parts += ["causal"] if self.causal else []
        return ", ".join(parts + ([] if self.use_bias else ["bias=False"]))


@layers.register("transformer_encoder")
class TransformerEncoder(Module):
    """One transformer encoder layer: self-attention and a feed-forward network, each with a residual connection and
    a layer normalization; torch.nn.TransformerEncoderLayer(features, heads, ff_units, dropout, activation, eps,
    batch_first=True, norm_first) with the same weights gives the same outputs. (batch, time, features) in and out.

    Options:
        heads: attention heads; they must divide the input's features.
        ff_units: the feed-forward network's hidden size (torch's dim_feedforward, 2048).
        dropout: after the attention, inside and after the feed-forward network, and on the attention weights.
        activation: relu or gelu (exact), the feed-forward network's.
        norm_first: normalize before each block (x + block(norm(x))) instead of after (norm(x + block(x))).
        eps: the layer normalizations' eps.
        causal: each position attends only to itself and the positions before it (torch's is_causal with a causal
            src_mask).

    Parameters as torch's: self_attn.in_proj_weight, self_attn.in_proj_bias, self_attn.out_proj.weight,
    self_attn.out_proj.bias, linear1.weight, linear1.bias, linear2.weight, linear2.bias, norm1.weight, norm1.bias,
    norm2.weight, norm2.bias. Padded positions (the input's padding_mask) are masked as keys (torch's
    src_key_padding_mask); the output keeps the mask. A sequence that is all padding gives finite values (its
    attention block gives the output projection's bias; torch gives NaN), which the layers after it leave out.
    """

    def __init__(self, heads: PositiveInt, ff_units: PositiveInt = 2048, dropout: Probability = 0.1,
                 activation: Literal["relu", "gelu"] = "relu", norm_first: bool = False, eps: PositiveFloat = 1e-5,
                 causal: bool = False):
        super().__init__()
        self.heads, self.ff_units, self.dropout, self.activation = heads, ff_units, dropout, activation
        self.norm_first, self.eps, self.causal = norm_first, eps, causal
        self.self_attn = MultiheadAttention(heads, dropout=dropout, causal=causal)
        self.norm1, self.norm2 = LayerNorm(eps), LayerNorm(eps)
        self.linear1 = self.linear2 = None

    def children(self):
        named = [("self_attn", self.self_attn), ("linear1", self.linear1), ("linear2", self.linear2),
                 ("norm1", self.norm1), ("norm2", self.norm2)]
        return [(name, child) for name, child in named if child is not None]

    def build_shape(self, input_shape):
        _, features = check_sequence_input(self, input_shape)
        if features % self.heads:
            raise ShapeError(f"{self.path}: heads ({self.heads}) must divide the input's features ({features}); "
                             f"each head attends with features / heads of them")
        for name in ("self_attn", "norm1", "norm2"):
            getattr(self, name).path = f"{self.path}.{name}"
        self.self_attn.build(input_shape)
        self.linear1 = _torch_linear(self, "linear1", features, self.ff_units)
        self.linear2 = _torch_linear(self, "linear2", self.ff_units, features)
        self.norm1.build(input_shape)
        self.norm2.build(input_shape)
        return tuple(input_shape)

    def _attention_block(self, x, mask):
        return F.dropout(self.self_attn.attend(x, mask), self.dropout, self.training)

    def _feed_forward_block(self, x):
        if self.activation == "relu":
            hidden = F.linear(x, self.linear1.weight, self.linear1.bias, activation="relu")
        else:
            hidden = F.gelu(F.linear(x, self.linear1.weight, self.linear1.bias))
        hidden = F.dropout(hidden, self.dropout, self.training)
        return F.dropout(F.linear(hidden, self.linear2.weight, self.linear2.bias), self.dropout, self.training)

    def forward(self, x):
        mask = x.padding_mask
        if self.norm_first:
            x = x + self._attention_block(self.norm1(x), mask)
            return x + self._feed_forward_block(self.norm2(x))
        x = self.norm1(x + self._attention_block(x, mask))
        return self.norm2(x + self._feed_forward_block(x))

    def describe(self):
        parts = [f"heads={self.heads}", f"ff_units={self.ff_units}", f"dropout={self.dropout}"]
        parts += [f"activation={self.activation}"] if self.activation != "relu" else []
        parts += ["norm_first"] if self.norm_first else []
        return ", ".join(parts + (["causal"] if self.causal else []))


def sinusoidal_table(length: int, features: int):
    """"Attention is all you need": PE[pos, 2i] = sin(pos / 10000^(2i / features)), PE[pos, 2i+1] = cos(same),
    a float64 host array (length, features)."""
    np = backend.np
    position = np.arange(length, dtype=np.float64)[:, None]
    frequency = np.exp(np.arange(0, features, 2, dtype=np.float64) * (-math.log(10000.0) / features))
    table = np.zeros((length, features), dtype=np.float64)
    table[:, 0::2] = np.sin(position * frequency)
    table[:, 1::2] = np.cos(position * frequency[:features // 2])
    return table


@layers.register("positional_embedding")
class PositionalEmbedding(Module):
    """Adds a vector per position to (batch, time, features), so that attention, which is blind to order, sees it.

    Options:
        kind: learned (a trained table `weight` (max_length, features), drawn from N(0, 1) as torch.nn.Embedding
            and as dltrain's embedding, so positions start at the tokens' scale) or sinusoidal (the fixed table of
            "Attention is all you need": sin and cos of position / 10000^(2i / features); no parameters).
        max_length: the most positions; default: the input's time length.

    Padded steps get their positions too (the output keeps the mask; the layers that read time steps skip them).
    """

    def __init__(self, kind: Literal["learned", "sinusoidal"] = "learned", max_length: PositiveInt | None = None):
        super().__init__()
        self.kind, self.max_length = kind, max_length
        self._tables: dict = {}  # the sinusoidal table per (array module, dtype)

    def build_shape(self, input_shape):
        time, features = check_sequence_input(self, input_shape)
        self.length = self.max_length or time
        if time > self.length:
            raise self.shape_error(f"at most max_length = {self.length} time steps", f"{time}")
        if self.kind == "learned":
            shape = self.check_size((self.length, features))
            table = backend.host_rng().standard_normal(shape).astype(backend.default_dtype())
            self.weight = self.add_parameter("weight", table, decay=False)
        else:
            self.weight = None
            self._tables = {}
        return tuple(input_shape)

    def table(self):
        """The table added to the input (length, features): the learned weight's values or the sinusoids (host)."""
        if self.weight is not None:
            return backend.to_numpy(self.weight.data)
        return sinusoidal_table(self.length, self.input_shape[1])

    def forward(self, x):
        time = x.shape[1]
        if time > self.length:
            raise self.shape_error(f"at most max_length = {self.length} time steps", f"{time}")
        if self.weight is not None:
            return x + self.weight[:time]
        xp = backend.array_module(x.data)
        key = (id(xp), x.dtype.str)
        if key not in self._tables:
            self._tables[key] = xp.asarray(sinusoidal_table(self.length, self.input_shape[1]).astype(x.dtype))
        return x + self._tables[key][:time]

    def describe(self):
        return f"kind={self.kind}" + (f", max_length={self.max_length}" if self.max_length else "")
