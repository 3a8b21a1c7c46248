"""The avx2 level's AVX-VNNI integer decode: scores and PV (csrc/attn/qk_vnni256.h).

This machine has AVX512-VNNI but no AVX-VNNI, so the test runs the kernels'
EVEX twin -- the same source, the same instructions in their AVX512-VNNI/VL
encoding -- which SAGECORE_AVXVNNI=evex selects at process start (the CPU
detection reads it once, hence the subprocesses). What only the VEX build
would add is its encoding, which the assembler produces from `{vex}`.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sagecore import _cpu

SCRIPT = r"""
import json, sys, numpy as np, sagecore
from sagecore import accuracy
out = {}
rng = np.random.default_rng(11)
q = rng.standard_normal((1, 16, 3, 128)).astype(np.float32)
kv = rng.standard_normal((2, 1, 4, 700, 128)).astype(np.float32)
for pol in ("int8", "int4"):
    c = sagecore.QuantKVCache(pol, batch=1, kv_heads=4, head_dim=128, capacity=1024)
    c.append(*kv)
    # the policy's precision; 700 keys: a partial last block; split 2 starts at
    # key 350, not on a block, where the level takes its fp32 scores instead
    out[pol] = c.attend(q, is_causal=True, split_k=1).tolist()
    out[pol + "-s2"] = c.attend(q, is_causal=True, split_k=2).tolist()
    p = sagecore.load_policy(pol)
    m = accuracy.evaluate(p, accuracy.datasets(("llm",))["llm"],
                          attend=lambda cache, qq, causal: cache.attend(qq, is_causal=causal))
    out[pol + "-cos"] = m["cosine"]
# d80 (one V cell per token, 16-channel PV blocks; int8 K scores read in place)
q80 = rng.standard_normal((1, 16, 1, 80)).astype(np.float32)
kv80 = rng.standard_normal((2, 1, 4, 300, 80)).astype(np.float32)
c = sagecore.QuantKVCache("int8", batch=1, kv_heads=4, head_dim=80, capacity=512)
c.append(*kv80)
out["int8-d80"] = c.attend(q80, is_causal=True, split_k=1).tolist()
# int4 at d80 and d96: q' rows padded to 64 channels (the scores), 16-channel PV blocks
for d in (80, 96):
    qd = rng.standard_normal((1, 16, 1, d)).astype(np.float32)
    kvd = rng.standard_normal((2, 1, 4, 300, d)).astype(np.float32)
    c = sagecore.QuantKVCache("int4", batch=1, kv_heads=4, head_dim=d, capacity=512)
    c.append(*kvd)
    out[f"int4-d{d}"] = c.attend(qd, is_causal=True, split_k=1).tolist()
# MHA (one row per kv head) and 3-row items: the blocks' row count below 4
for pol in ("int8", "int4"):
    for hq, hkv in ((4, 4), (12, 4)):
        qm = rng.standard_normal((1, hq, 1, 128)).astype(np.float32)
        c = sagecore.QuantKVCache(pol, batch=1, kv_heads=hkv, head_dim=128, capacity=512)
        c.append(*rng.standard_normal((2, 1, hkv, 300, 128)).astype(np.float32))
        out[f"{pol}-r{hq // hkv}"] = c.attend(qm, is_causal=True, split_k=1).tolist()
out["isa"] = sagecore._cpu.cpu_info()["active_isa"]
out["avxvnni"] = sagecore._cpu.cpu_info()["avxvnni"]
json.dump(out, sys.stdout)
"""


def run(**env):
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, **env))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.skipif("avx512vnni" not in _cpu.cpu_info()["features"],
                    reason="the EVEX twin of the AVX-VNNI kernels needs an AVX512-VNNI CPU")
def test_avxvnni_scores_through_their_evex_twin():
    vn = run(SAGECORE_ISA="avx2", SAGECORE_AVXVNNI="evex")
    fp = run(SAGECORE_ISA="avx2", SAGECORE_AVXVNNI="0")
    ref = run()  # the avx512_vnni level (or above)
    assert vn["isa"] == fp["isa"] == "avx2"
    assert vn["avxvnni"] == "evex-twin" and fp["avxvnni"] is None
    # measured (2026-12-04), fractions of the max: int8 |vn - fp| 1.2e-4 (16-bit
    # q' and P'), |vn - 512| 1.6e-7 (the same q', P' and integer sums; the two
    # softmax loops round apart); int4 0.022 and 0.018 (8-bit q'; the 512-bit
    # level's PV also rounds P' to 8 bits). A wrong lane or q' offset: 0.4-1.
    for pol, q_err, l512_err in (("int8", 3e-4, 2e-6), ("int4", 4e-2, 4e-2), ("int8-d80", 3e-4, 2e-6),
                                 ("int4-d80", 4e-2, 4e-2), ("int4-d96", 4e-2, 4e-2), ("int8-r1", 3e-4, 2e-6),
                                 ("int8-r3", 3e-4, 2e-6), ("int4-r1", 4e-2, 4e-2), ("int4-r3", 4e-2, 4e-2)):
        for case in (pol, pol + "-s2") if "-" not in pol else (pol,):
            a, b, r = (np.asarray(x[case]) for x in (vn, fp, ref))
            scale = np.abs(r).max()
            # the integer path ran: at "bf16"/"int8" it differs from the fp32 one,
            # by the integer operands' rounding and no more
            assert not np.array_equal(a, b), case
            assert np.abs(a - b).max() <= q_err * scale, (case, np.abs(a - b).max() / scale)
            assert np.abs(a - r).max() <= l512_err * scale, (case, np.abs(a - r).max() / scale)
    # the accuracy targets hold through these kernels (docs/accuracy.md)
    assert vn["int8-cos"] >= 0.9999 and vn["int4-cos"] >= 0.96, vn
