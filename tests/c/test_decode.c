/*
 * test_decode.c -- the C API without Python: quantize a K/V cache with
 * sc_quantize, run a GQA decode with sc_attention (split-K on and off), and
 * compare with a double-precision reference over sc_dequantize's values.
 * Exit status 0 on success; the self-check at the end proves the comparison
 * can fail (a perturbed output must be rejected).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "sagecore.h"

enum { B = 1, HKV = 2, GROUP = 4, HQ = HKV * GROUP, N = 1000, D = 128, CAP = 1024 };

static float frand(uint32_t *s) {
    *s = *s * 1664525u + 1013904223u;
    return ((float)(*s >> 8) / 16777216.0f - 0.5f) * 4.0f;
}

/* max |got - ref| / max |ref| over the output */
static double rel_err(const float *got, const double *ref, int n) {
    double e = 0, m = 0;
    for (int i = 0; i < n; i++) {
        double d = fabs(got[i] - ref[i]);
        e = d > e ? d : e;
        m = fabs(ref[i]) > m ? fabs(ref[i]) : m;
    }
    return e / (m > 0 ? m : 1);
}

#define CHECK(x)                                                                      \
    do {                                                                              \
        sc_status st_ = (x);                                                          \
        if (st_ != SC_OK) {                                                           \
            fprintf(stderr, "%s failed: %d %s\n", #x, (int)st_, sc_last_error());     \
            return 1;                                                                 \
        }                                                                             \
    } while (0)

int main(void) {
    static float k[B * HKV * N * D], v[B * HKV * N * D], q[B * HQ * D], out[B * HQ * D];
    static float kd[B * HKV * N * D], vd[B * HKV * N * D];
    static double ref[B * HQ * D];
    uint32_t seed = 7;
    for (int i = 0; i < B * HKV * N * D; i++) { k[i] = frand(&seed) + 1.0f; v[i] = frand(&seed); }
    for (int i = 0; i < B * HQ * D; i++) q[i] = frand(&seed);

    /* int8 K: one scale per channel over 32 tokens; int8 V: per token, 32-channel groups */
    sc_format kf = {SC_ENC_INT8, D, 32, 1, SC_DTYPE_F16, 0, 0, 0, 0, SC_LAYOUT_ROWS};
    sc_format vf = {SC_ENC_INT8, D, 1, 32, SC_DTYPE_F16, 0, 0, 0, 0, SC_LAYOUT_ROWS};
    int8_t *kdata = calloc(B * HKV * CAP * D, 1), *vdata = calloc(B * HKV * CAP * D, 1);
    uint16_t *ks = calloc(B * HKV * (CAP / 32) * D, 2), *vs = calloc(B * HKV * CAP * (D / 32), 2);
    sc_store kst = {kdata, ks, NULL, NULL, NULL, NULL, B * HKV, CAP};
    sc_store vst = {vdata, vs, NULL, NULL, NULL, NULL, B * HKV, CAP};
    sc_tensor kt = {k, SC_DTYPE_F32, B, HKV, N, D, (int64_t)HKV * N * D, (int64_t)N * D, D};
    sc_tensor vt = {v, SC_DTYPE_F32, B, HKV, N, D, (int64_t)HKV * N * D, (int64_t)N * D, D};
    CHECK(sc_quantize(&kf, &kst, &kt, 0));
    CHECK(sc_quantize(&vf, &vst, &vt, 0));
    sc_tensor kdt = kt, vdt = vt;
    kdt.ptr = kd;
    vdt.ptr = vd;
    CHECK(sc_dequantize(&kf, &kst, &kdt, 0));
    CHECK(sc_dequantize(&vf, &vst, &vdt, 0));

    /* reference: decode row of every query head over all N keys */
    const double scale = 1.0 / sqrt((double)D);
    for (int h = 0; h < HQ; h++) {
        const float *qh = q + h * D;
        const int hk = h / GROUP;
        double *s = malloc(N * sizeof(double)), mx = -INFINITY, l = 0;
        for (int j = 0; j < N; j++) {
            double acc = 0;
            for (int d = 0; d < D; d++) acc += (double)qh[d] * kd[(hk * N + j) * D + d];
            s[j] = acc * scale;
            mx = s[j] > mx ? s[j] : mx;
        }
        for (int d = 0; d < D; d++) ref[h * D + d] = 0;
        for (int j = 0; j < N; j++) {
            double p = exp(s[j] - mx);
            l += p;
            for (int d = 0; d < D; d++) ref[h * D + d] += p * vd[(hk * N + j) * D + d];
        }
        for (int d = 0; d < D; d++) ref[h * D + d] /= l;
        free(s);
    }

    printf("sagecore C API: isa %s, %d threads\n", sc_isa_name(sc_cpu_active_isa()), sc_num_threads());
    const int splits[] = {1, 4, 0};
    for (int i = 0; i < 3; i++) {
        sc_attention_args a = {
            .q = {q, SC_DTYPE_F32, B, HQ, 1, D, (int64_t)HQ * D, D, D},
            .out = {out, SC_DTYPE_F32, B, HQ, 1, D, (int64_t)HQ * D, D, D},
            .kf = &kf, .vf = &vf, .k = &kst, .v = &vst, .kv_heads = HKV, .kv_len = N,
            .scale = (float)scale, .causal = 1, .split_k = splits[i]};
        CHECK(sc_attention(&a));
        double e = rel_err(out, ref, B * HQ * D);
        printf("decode N=%d split_k=%d: max rel error %.2e\n", N, splits[i], e);
        if (!(e < 1e-5)) { fprintf(stderr, "FAIL: error too large\n"); return 1; }
    }
    /* the check must be able to fail */
    out[5] += 0.01f;
    if (rel_err(out, ref, B * HQ * D) < 1e-5) { fprintf(stderr, "FAIL: perturbation not detected\n"); return 1; }
    /* bad input is an error, not a crash */
    sc_attention_args bad = {.q = {q, SC_DTYPE_F32, B, HQ, 1, D, (int64_t)HQ * D, D, D},
                             .out = {out, SC_DTYPE_F32, B, HQ, 1, D, (int64_t)HQ * D, D, D},
                             .kf = &kf, .vf = &vf, .k = &kst, .v = &vst, .kv_heads = 3, .kv_len = N,
                             .scale = 1.0f};
    if (sc_attention(&bad) != SC_ERR_INVALID_ARGUMENT) { fprintf(stderr, "FAIL: bad kv_heads accepted\n"); return 1; }
    printf("ok (rejected bad kv_heads: %s)\n", sc_last_error());
    free(kdata); free(vdata); free(ks); free(vs);
    return 0;
}
