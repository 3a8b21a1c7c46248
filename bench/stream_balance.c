/* How much a decode kernel loses from DRAM when its compute per key is about
 * its memory time per key: a synthetic with int4 decode's access pattern and
 * instruction mix, whose compute is set by adding products, timed warm (one
 * small cache, L3) and cold (caches rotated, 8 kv heads x N keys each).
 *
 * Per kv head, tiles of 256 keys: a K phase (one 64-byte line per key: two
 * nibble unpacks and 8 VPDPBUSD against broadcast q' words, scores stored),
 * a softmax-like phase (max, then 6 FMAs per 16 scores), a V phase (one line
 * per key: unpacks and 8 VPDPBUSD against P' words), as int4 at "int8" does
 * (qkb16_block, sm_avx512, pvb_pass). Prefetch as the kernels: T1 PF keys
 * ahead and T0 32 ahead for the codes, T1 for K's group scales (8 bytes per
 * key) and V's per-token scales. 136 bytes per key and head. EXTRA adds that
 * many VPDPBUSD per key in 4 independent chains (throughput, not latency).
 *
 *     gcc -O2 -fopenmp bench/stream_balance.c -o /tmp/stream_balance
 *     /tmp/stream_balance KEYS CACHES THREADS ROUNDS [EXTRA] [PF]
 *     /tmp/stream_balance 4096 1 1 300 12     # warm (4.4 MB: L3), one thread
 *     /tmp/stream_balance 32768 8 2 3 12      # cold (8 x 36 MB), two threads
 *
 * Prints the mean (and best) ns per key and kv head per thread, and GB/s.
 * Session 20 (docs/benchmarks.md): alternated with the real int4 decode at
 * "int8" in one process (bench/stream_balance_ab.py), this synthetic ran
 * 1.31-1.46x faster cold on 2 threads at about the same warm time. That gap
 * was found in pvb_pass's prefetch bursts; after spreading them, 1.13-1.20x.
 *
 * With -DSB_LIB -shared -fPIC it is a library instead (sb_init, sb_call),
 * which bench/stream_balance_ab.py calls alternately with the real kernels
 * in one process: on this machine only calls alternated within seconds
 * compare (its speed drifts by up to 2x between minutes). Needs AVX512-VNNI. */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define NH 8
#define TILE 256
static int NK = 32768, PF = 384, EXTRA = 0;
static float sink[64];

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

typedef struct {
    unsigned char *k, *v, *ks, *vs;
} cache;

#define SB_T __attribute__((target("avx512f,avx512bw,avx512vnni")))
/* one 64-byte line of int4 codes (PF keys ahead into L2, 32 into L1, as the
 * kernels): loaded, nibbles unpacked into lo/hi, 8 products of the 4
 * accumulators against the broadcast words w[0..7] */
SB_T static inline __attribute__((always_inline)) void line8(__m512i a[4], const unsigned char *p, const int *w,
                                                             __m512i *lo, __m512i *hi) {
    _mm_prefetch((const char *)p + PF * 64, _MM_HINT_T1);
    _mm_prefetch((const char *)p + 32 * 64, _MM_HINT_T0);
    const __m512i m4 = _mm512_set1_epi8(0x0f), x = _mm512_loadu_si512(p);
    *lo = _mm512_and_si512(x, m4);
    *hi = _mm512_and_si512(_mm512_srli_epi16(x, 4), m4);
#pragma GCC unroll 4 /* the accumulators stay in registers */
    for (int r = 0; r < 4; r++) a[r] = _mm512_dpbusd_epi32(a[r], *lo, _mm512_set1_epi32(w[r]));
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) a[r] = _mm512_dpbusd_epi32(a[r], *hi, _mm512_set1_epi32(w[4 + r]));
}

SB_T __attribute__((noinline)) static void head(const unsigned char *K, const unsigned char *V,
                                                const unsigned char *KS, const unsigned char *VS, const int *q,
                                                float *scr) {
    __m512i a[4], x[4], lo, hi;
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) a[r] = x[r] = _mm512_setzero_si512();
    __m512 o = _mm512_setzero_ps();
    for (int t = 0; t < NK; t += TILE) {
        for (int j = t; j < t + TILE; j++) { /* K phase */
            if ((j & 63) == 0)
                for (int c = 0; c < 512; c += 64) _mm_prefetch((const char *)KS + (size_t)(j + PF) / 64 * 512 + c, _MM_HINT_T1);
            line8(a, K + (size_t)j * 64, q + (j & 15) * 8, &lo, &hi);
            if ((j & 15) == 15) {
                const __m512 s = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_add_epi32(a[0], a[1]), _mm512_add_epi32(a[2], a[3])));
#pragma GCC unroll 4
                for (int r = 0; r < 4; r++) _mm512_storeu_ps(scr + (j - t - 15) * 4 + 16 * r, s);
            }
        }
        __m512 mx = _mm512_set1_ps(-1e30f); /* softmax-like phase over 4 rows x 256 scores */
        for (int i = 0; i < TILE * 4; i += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(scr + i));
        for (int i = 0; i < TILE * 4; i += 16) {
            const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(scr + i), mx);
            __m512 y = _mm512_set1_ps(1.0f);
#pragma GCC unroll 6
            for (int r = 0; r < 6; r++) y = _mm512_fmadd_ps(y, d, _mm512_set1_ps(0.5f));
            _mm512_storeu_ps(scr + i, y);
        }
        for (int j = t; j < t + TILE; j++) { /* V phase */
            if ((j & 7) == 0) _mm_prefetch((const char *)VS + (size_t)(j + PF) * 8, _MM_HINT_T1);
            line8(a, V + (size_t)j * 64, (const int *)scr + ((j - t) & ~3), &lo, &hi);
            for (int e = 0; e < EXTRA; e += 4) { /* 4 independent chains: throughput, not latency */
                x[0] = _mm512_dpbusd_epi32(x[0], hi, lo);
                x[1] = _mm512_dpbusd_epi32(x[1], lo, hi);
                x[2] = _mm512_dpbusd_epi32(x[2], hi, hi);
                x[3] = _mm512_dpbusd_epi32(x[3], lo, lo);
            }
        }
        o = _mm512_add_ps(o, _mm512_cvtepi32_ps(a[0]));
    }
    __m512i s = _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) s = _mm512_add_epi32(s, _mm512_add_epi32(a[r], x[r]));
    sink[omp_get_thread_num() % 64] += _mm512_reduce_add_ps(o) + (float)_mm512_reduce_add_epi32(s);
}

static void *big(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 2 << 20, n)) {
        fprintf(stderr, "stream_balance: out of memory (%zu bytes)\n", n);
        exit(2);
    }
    madvise(p, n, MADV_HUGEPAGE);
    memset(p, 1, n);
    return p;
}

/* nc caches of NH kv heads x NK keys: codes, and scale bytes to prefetch */
static cache *alloc_caches(int nc) {
    cache *c = malloc(sizeof(cache) * nc);
    if (!c) {
        fprintf(stderr, "stream_balance: out of memory\n");
        exit(2);
    }
    const size_t codes = (size_t)NH * NK * 64 + (size_t)PF * 64 + 4096, scales = (size_t)NH * NK * 8 + (size_t)PF * 8 + 65536;
    for (int i = 0; i < nc; i++) {
        c[i].k = big(codes);
        c[i].v = big(codes);
        c[i].ks = big(scales);
        c[i].vs = big(scales);
    }
    return c;
}
/* one call: all NH kv heads of the cache, split over the threads; seconds */
static double one_call(const cache *cc, int threads, const int *q) {
    const double t0 = now();
#pragma omp parallel num_threads(threads)
    {
        float scr[TILE * 4 + 64] __attribute__((aligned(64)));
#pragma omp for schedule(static)
        for (int h = 0; h < NH; h++)
            head(cc->k + (size_t)h * NK * 64, cc->v + (size_t)h * NK * 64, cc->ks + (size_t)h * NK * 8,
                 cc->vs + (size_t)h * NK * 8, q, scr);
    }
    return now() - t0;
}
static void words(int q[128]) {
    for (int i = 0; i < 128; i++) q[i] = i * 0x01010101;
}

#ifdef SB_LIB
/* the library: sb_init(keys, caches) allocates the caches (returns 1 without
 * AVX512-VNNI, 2 on bad arguments); sb_call(cache, threads, extra) runs one
 * call over all 8 kv heads of that cache and returns its seconds */
static cache *lib_c = NULL;
static int lib_nc = 0, lib_q[128];
int sb_init(int keys, int caches) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512vnni")) return 1;
    if (keys < TILE || keys % TILE || caches < 1 || lib_c) return 2;
    NK = keys;
    lib_nc = caches;
    lib_c = alloc_caches(lib_nc);
    words(lib_q);
    return 0;
}
double sb_call(int ci, int threads, int extra) {
    if (!lib_c || threads < 1 || extra < 0) return -1.0;
    EXTRA = extra;
    return one_call(&lib_c[ci % lib_nc], threads, lib_q);
}
#else
int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s KEYS CACHES THREADS ROUNDS [EXTRA] [PF]\n", argv[0]);
        return 2;
    }
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512vnni")) {
        fprintf(stderr, "stream_balance: needs AVX512-VNNI\n");
        return 1;
    }
    NK = atoi(argv[1]);
    const int nc = atoi(argv[2]), thr = atoi(argv[3]), rounds = atoi(argv[4]);
    if (argc > 5) EXTRA = atoi(argv[5]);
    if (argc > 6) PF = atoi(argv[6]);
    if (NK < TILE || NK % TILE || nc < 1 || thr < 1 || rounds < 2 || EXTRA < 0 || PF < 0) {
        fprintf(stderr, "stream_balance: KEYS a multiple of %d, CACHES and THREADS >= 1, ROUNDS >= 2, EXTRA and PF >= 0\n",
                TILE);
        return 2;
    }
    cache *c = alloc_caches(nc);
    int q[128];
    words(q);
    double best = 1e30, total = 0;
    int n = 0;
    for (int r = 0; r < rounds; r++)
        for (int ci = 0; ci < nc; ci++) {
            const double dt = one_call(&c[ci], thr, q);
            if (r > 0) { /* the first round pages in */
                total += dt;
                n++;
                best = dt < best ? dt : best;
            }
        }
    const double keys = (double)NK * NH / thr;
    printf("keys %d, caches %d, threads %d, extra %d, pf %d: %.2f ns per key and kv head per thread (best %.2f), "
           "%.1f GB/s\n", NK, nc, thr, EXTRA, PF, total / n / keys * 1e9, best / keys * 1e9,
           136.0 * NK * NH / (total / n) / 1e9);
    return 0;
}
#endif
