"""Write tests/c/data/golden.bin: realistic inputs and reference results that
tests/c/test_core.c must reproduce on every architecture (arm64 under qemu).

For head dims 64, 128, 256 and the built-in policies' formats (fp16; int8 =
K int8.t32.g1+smooth, V int8.t1.g32; int4 = K int4.t64.g1+zp+smooth, V
int4.t1.g32+rot): LLM-like q [1,8,3,D] and k, v [1,2,64,D]
(sagecore.workloads.llm_like, fp16), the smoothing means, CRC-32s of the
packed K and V bytes (data, scales, minimums), and float64 reference
attention over the dequantized K/V (causal, right-aligned).

    python tools/make_golden.py [out.bin]    (rerun only when formats change;
                                              tests/test_c_api.py checks the stored file is current)

Layout (little endian): b"SCGOLD02", u32 number of head dims, then per head
dim: u32 D, f16 q[8*3*D], f16 k[2*64*D], f16 v[2*64*D], and for each of the
3 formats: u32 fmt_id (0 fp16, 1 int8, 2 int4), u32 crc_k, u32 crc_v,
f32 mean_k[2*D], f32 mean_v[2*D], f32 out[8*3*D].
"""
import os
import struct
from binascii import crc32

import numpy as np

from sagecore.cache import TensorStore
from sagecore.formats import KVFormat
from sagecore.reference import sdpa_reference
from sagecore.workloads import llm_like

FORMATS = {
    0: ("fp16", "fp16"),
    1: ("int8.t32.g1.s16+smooth", "int8.t1.g32.s16"),
    2: ("int4.t64.g1.s16+zp+smooth", "int4.t1.g32.s16+rot"),
}
HQ, HKV, M, N = 8, 2, 3, 64


def fmt(fid):
    return KVFormat("fp16") if fid == "fp16" else KVFormat.parse(fid)


def store_crc(st):
    c = 0
    for name in ("data", "scales", "zeros"):
        a = st.arrays.get(name)
        if a is not None:
            c = crc32(np.ascontiguousarray(a).tobytes(), c)
    return c


def main(path=None):
    out = [b"SCGOLD02"]
    cases = []
    for D in (64, 128, 256):
        q, k, v = llm_like(batch=1, q_heads=HQ, kv_heads=HKV, q_len=M, kv_len=N, head_dim=D, seed=D,
                           dtype=np.float16)
        cases.append(struct.pack("<I", D) + q.tobytes() + k.tobytes() + v.tobytes())
        for fmt_id, (kid, vid) in FORMATS.items():
            stores, means = [], []
            for x, f in ((k, fmt(kid)), (v, fmt(vid))):
                st = TensorStore(f, 1, HKV, D, N)
                mean = x.astype(np.float64).mean(axis=2).astype(np.float32).reshape(HKV, D)
                if f.smooth:
                    st.arrays["mean"][...] = mean
                st.packed.quantize(x, 0)
                stores.append(st)
                means.append(mean if f.smooth else np.zeros((HKV, D), np.float32))
            kd = np.empty((1, HKV, N, D), np.float32)
            vd = np.empty((1, HKV, N, D), np.float32)
            stores[0].packed.dequantize(kd, 0)
            stores[1].packed.dequantize(vd, 0)
            ref = sdpa_reference(q, kd, vd, is_causal=True).astype(np.float32)
            cases.append(struct.pack("<III", fmt_id, store_crc(stores[0]), store_crc(stores[1]))
                         + means[0].tobytes() + means[1].tobytes() + ref.tobytes())
    out.append(struct.pack("<I", 3))
    out += cases
    path = path or os.path.join(os.path.dirname(__file__), "..", "tests", "c", "data", "golden.bin")
    with open(path, "wb") as f:
        f.write(b"".join(out))
    print(f"wrote {path}: 3 head dims x {len(FORMATS)} formats, {sum(map(len, out))} bytes")


if __name__ == "__main__":
    import sys
    main(sys.argv[1] if len(sys.argv) > 1 else None)
