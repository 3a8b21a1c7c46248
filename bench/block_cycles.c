/* What one microkernel block of the integer decode costs on its own: the
 * block is called in a loop over one 128-key tile (d128, 4 query rows),
 * outside the kernel, so its cost can be set against what removing it from
 * the kernel saves (bench/build_ab.py ablations). Compare nanoseconds: the
 * cycle column divides by a dependent-add loop timed just before each row,
 * and on the shared VM that loop read 0.27-0.52 ns within one hour (session
 * 13), so cycles from two runs do not compare. Session 12's "in the kernel a
 * block costs twice what it costs alone" came from setting such cycles
 * against ns; in ns the two agree (docs/benchmarks.md, session 13). Needs
 * AVX512-VNNI.
 *
 *     gcc -O3 -Icsrc -Icsrc/include bench/block_cycles.c -o /tmp/block_cycles -lm && /tmp/block_cycles
 *
 * Two sources per block: one tile reused (L1) and 64 tiles in turn (1 MB of
 * codes, L2/L3). Prints ns and core cycles per key (one cycle: a dependent
 * scalar add, timed first). */
#include "attn/attention_x86.c"
#include <stdio.h>
#include <time.h>

/* the kernels' other translation units: not called by the blocks timed here */
void sc_decoder_run(sc_decoder *d, int64_t row, int64_t t0, int64_t n, float *dst) { (void)d, (void)row, (void)t0, (void)n, (void)dst; }
void sc_rotate_f32(float *x, int64_t n, int64_t stride, int32_t d) { (void)x, (void)n, (void)stride, (void)d; }

#define KEYS 128
#define DIM 128
#define TILES 64
#ifndef REPS
#define REPS 20000 /* -DREPS=... for a quick run */
#endif
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}
__attribute__((noinline)) static double cycle_ns(void) {
    double best = 1e30; /* best of 5, as the blocks: a preempted run only reads slower */
    for (int rep = 0; rep < 5; rep++) {
        long n = 0;
        const double t = now();
        for (long i = 0; i < 10000000L; i++) __asm__ volatile("add $1, %0" : "+r"(n));
        const double ns = (now() - t) / 10000000L * 1e9;
        best = ns < best ? ns : best;
    }
    return best;
}

static int8_t codes[TILES][KEYS * DIM] __attribute__((aligned(64)));
static int16_t qw[4 * DIM] __attribute__((aligned(64)));
static int8_t qb[4 * DIM] __attribute__((aligned(64)));
static int16_t pq[4 * 4 * PVW_TL] __attribute__((aligned(64)));
static float s[4 * KEYS] __attribute__((aligned(64))), o[4 * DIM] __attribute__((aligned(64)));

SC_T_VNNI __attribute__((noinline)) static void qk_int8(const int8_t *k) { /* int8 K, 16-bit q' (bf16 setting) */
    const __m512 sc = _mm512_set1_ps(1e-6f);
    for (int64_t j = 0; j < KEYS; j += 4) qkw44_block(qw, sc, k, s, 0, j, 4, DIM, KEYS, NULL);
}
SC_T_VNNI __attribute__((noinline)) static void qk_int4(const int8_t *k) { /* int4 K, 8-bit q' (int8 setting) */
    const __m512 sc = _mm512_set1_ps(1e-6f);
    for (int64_t j = 0; j < KEYS; j += 4)
        qkb44_block4(qb, sc, _mm512_setzero_si512(), _mm512_setzero_ps(), (const uint8_t *)k, s, 0, j, 4, DIM, KEYS, NULL, 64);
}
SC_T_VNNI __attribute__((noinline)) static void qk_int4r(const int8_t *k) { /* the same, whole 64-byte rows (D % 128 == 0) */
    const __m512 sc = _mm512_set1_ps(1e-6f);
    for (int64_t j = 0; j < KEYS; j += 4)
        qkb44_block4(qb, sc, _mm512_setzero_si512(), _mm512_setzero_ps(), (const uint8_t *)k, s, 0, j, 4, DIM, KEYS, NULL, 128);
}
/* the k16 layout's blocks (the built-in int8 and int4 K): 16 keys in the
 * lanes per call, D a literal as qk8_vnni passes it (WITH_CONST_D) */
SC_T_VNNI __attribute__((noinline)) static void qk_int8_k16(const int8_t *k) { /* int8 K, 16-bit q' (bf16 setting) */
    static const float ar[4] = {1e-6f, 1e-6f, 1e-6f, 1e-6f};
    for (int64_t j = 0; j < KEYS; j += 16) qkw16_block(qw, ar, (const uint8_t *)k, j, 16, s + j, 0, DIM, KEYS, NULL, 4);
}
SC_T_VNNI __attribute__((noinline)) static void qk_int4_k16(const int8_t *k) { /* int4 K, 8-bit q' (int8 setting) */
    static const float ar[4] = {1e-6f, 1e-6f, 1e-6f, 1e-6f}, fb[4];
    static const int32_t bias[4];
    for (int64_t j = 0; j < KEYS; j += 16)
        qkb16_block(qb, ar, bias, fb, (const uint8_t *)k, j, 16, s + j, 0, DIM, KEYS, NULL, 4);
}
/* P' operands and corrections: whatever the bytes are (the block is timed,
 * not checked). Passed by pointer, blocks in a loop, as in pv4b_vnni: with a
 * static scratch GCC kept the accumulators on the stack (bench/spill_scan.py) */
static pvb_scratch *pvb_w;
static volatile int64_t pvb_nblk = DIM / 128;
SC_T_VNNI __attribute__((noinline)) static void pvb_blocks(const uint8_t *v, pvb_scratch *w, int64_t nblk) {
    static const float ps[4] = {1e-6f, 1e-6f, 1e-6f, 1e-6f};
    for (int64_t b = 0; b < nblk; b++) pvb_block(v, w, ps, o, 0, 4, b, KEYS, DIM, NULL, 0);
}
static void pv_int4(const int8_t *v) { pvb_blocks((const uint8_t *)v, pvb_w, pvb_nblk); } /* int4 V, 8-bit P' (int8 setting) */
SC_T_VNNI __attribute__((noinline)) static void pv_int8(const int8_t *v) { /* int8 V, 16-bit P' (bf16 setting) */
    static const float ps[4] = {1e-6f, 1e-6f, 1e-6f, 1e-6f};
    for (int64_t c0 = 0; c0 < DIM; c0 += 64) pvw_block(v, pq, ps, o, 0, 4, c0, KEYS / 2, KEYS, DIM, DIM / 32, PVW_TL, NULL, 64);
}

static void run(const char *name, void (*f)(const int8_t *)) {
    for (int src = 0; src < 2; src++) {
        const double cyc = cycle_ns();
        double best = 1e30;
        for (int rep = 0; rep < 5; rep++) {
            const double t = now();
            for (int i = 0; i < REPS; i++) f(codes[src ? i % TILES : 0]);
            const double ns = (now() - t) / REPS / KEYS * 1e9;
            best = ns < best ? ns : best;
        }
        printf("%-34s %-12s %6.2f ns  %6.1f cycles per key (4 rows; one cycle %.3f ns just before)\n", name,
               src ? "1 MB (L2/3)" : "one tile", best, best / cyc, cyc);
    }
}

int main(void) {
    if (!__builtin_cpu_supports("avx512vnni")) {
        fprintf(stderr, "needs AVX512-VNNI\n");
        return 1;
    }
    pvb_w = aligned_alloc(64, sizeof(pvb_scratch));
    if (!pvb_w) return 1;
    memset(pvb_w, 1, sizeof *pvb_w);
    for (int t = 0; t < TILES; t++)
        for (int i = 0; i < KEYS * DIM; i++) codes[t][i] = (int8_t)((i * 37 + t) % 255 - 127);
    for (int i = 0; i < 4 * DIM; i++) qw[i] = (int16_t)(i * 97 % 65535 - 32767), qb[i] = (int8_t)(i * 13 % 255 - 127);
    for (int i = 0; i < 4 * 4 * PVW_TL; i++) pq[i] = (int16_t)(i * 31 % 32767);
    run("QK int8 codes, 16-bit q' (qkw44)", qk_int8);
    run("QK int4 codes, 8-bit q' (qkb44_4)", qk_int4);
    run("QK int4, whole rows (qkb44_4 blk 128)", qk_int4r);
    run("QK int8 k16, 16-bit q' (qkw16)", qk_int8_k16);
    run("QK int4 k16, 8-bit q' (qkb16)", qk_int4_k16);
    run("PV int8 codes, 16-bit P' (pvw)", pv_int8);
    run("PV int4 codes, 8-bit P' (pvb)", pv_int4);
    return s[3] == 1.25f && o[5] == 1.5f; /* keep the results live */
}
