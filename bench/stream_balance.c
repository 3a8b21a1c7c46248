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

__attribute__((target("avx512f,avx512bw,avx512vnni"), noinline)) static void head(const unsigned char *K,
                                                                                 const unsigned char *V,
                                                                                 const unsigned char *KS,
                                                                                 const unsigned char *VS,
                                                                                 const int *q, float *scr) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, x0 = a0, x1 = a0, x2 = a0, x3 = a0;
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512 o = _mm512_setzero_ps();
    for (int t = 0; t < NK; t += TILE) {
        for (int j = t; j < t + TILE; j++) { /* K phase */
            const unsigned char *p = K + (size_t)j * 64;
            _mm_prefetch((const char *)p + PF * 64, _MM_HINT_T1);
            _mm_prefetch((const char *)p + 32 * 64, _MM_HINT_T0);
            if ((j & 63) == 0)
                for (int c = 0; c < 512; c += 64) _mm_prefetch((const char *)KS + (size_t)(j + PF) / 64 * 512 + c, _MM_HINT_T1);
            const __m512i x = _mm512_loadu_si512(p), lo = _mm512_and_si512(x, m4),
                          hi = _mm512_and_si512(_mm512_srli_epi16(x, 4), m4);
            const int *w = q + (j & 15) * 8;
            a0 = _mm512_dpbusd_epi32(a0, lo, _mm512_set1_epi32(w[0]));
            a1 = _mm512_dpbusd_epi32(a1, lo, _mm512_set1_epi32(w[1]));
            a2 = _mm512_dpbusd_epi32(a2, lo, _mm512_set1_epi32(w[2]));
            a3 = _mm512_dpbusd_epi32(a3, lo, _mm512_set1_epi32(w[3]));
            a0 = _mm512_dpbusd_epi32(a0, hi, _mm512_set1_epi32(w[4]));
            a1 = _mm512_dpbusd_epi32(a1, hi, _mm512_set1_epi32(w[5]));
            a2 = _mm512_dpbusd_epi32(a2, hi, _mm512_set1_epi32(w[6]));
            a3 = _mm512_dpbusd_epi32(a3, hi, _mm512_set1_epi32(w[7]));
            if ((j & 15) == 15) {
                const __m512 s = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)));
                for (int r = 0; r < 4; r++) _mm512_storeu_ps(scr + (j - t - 15) * 4 + 16 * r, s);
            }
        }
        __m512 mx = _mm512_set1_ps(-1e30f); /* softmax-like phase over 4 rows x 256 scores */
        for (int i = 0; i < TILE * 4; i += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(scr + i));
        for (int i = 0; i < TILE * 4; i += 16) {
            const __m512 x = _mm512_sub_ps(_mm512_loadu_ps(scr + i), mx);
            __m512 y = _mm512_set1_ps(1.0f);
            for (int r = 0; r < 6; r++) y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(0.5f));
            _mm512_storeu_ps(scr + i, y);
        }
        for (int j = t; j < t + TILE; j++) { /* V phase */
            const unsigned char *p = V + (size_t)j * 64;
            _mm_prefetch((const char *)p + PF * 64, _MM_HINT_T1);
            _mm_prefetch((const char *)p + 32 * 64, _MM_HINT_T0);
            if ((j & 7) == 0) _mm_prefetch((const char *)VS + (size_t)(j + PF) * 8, _MM_HINT_T1);
            const __m512i x = _mm512_loadu_si512(p), lo = _mm512_and_si512(x, m4),
                          hi = _mm512_and_si512(_mm512_srli_epi16(x, 4), m4);
            const int *pp = (const int *)scr + ((j - t) & ~3);
            a0 = _mm512_dpbusd_epi32(a0, lo, _mm512_set1_epi32(pp[0]));
            a1 = _mm512_dpbusd_epi32(a1, lo, _mm512_set1_epi32(pp[1]));
            a2 = _mm512_dpbusd_epi32(a2, lo, _mm512_set1_epi32(pp[2]));
            a3 = _mm512_dpbusd_epi32(a3, lo, _mm512_set1_epi32(pp[3]));
            a0 = _mm512_dpbusd_epi32(a0, hi, _mm512_set1_epi32(pp[4]));
            a1 = _mm512_dpbusd_epi32(a1, hi, _mm512_set1_epi32(pp[5]));
            a2 = _mm512_dpbusd_epi32(a2, hi, _mm512_set1_epi32(pp[6]));
            a3 = _mm512_dpbusd_epi32(a3, hi, _mm512_set1_epi32(pp[7]));
            for (int e = 0; e < EXTRA; e += 4) {
                x0 = _mm512_dpbusd_epi32(x0, hi, lo);
                x1 = _mm512_dpbusd_epi32(x1, lo, hi);
                x2 = _mm512_dpbusd_epi32(x2, hi, hi);
                x3 = _mm512_dpbusd_epi32(x3, lo, lo);
            }
        }
        o = _mm512_add_ps(o, _mm512_cvtepi32_ps(a0));
    }
    const __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)),
                                       _mm512_add_epi32(_mm512_add_epi32(x0, x1), _mm512_add_epi32(x2, x3)));
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
    lib_c = malloc(sizeof(cache) * lib_nc);
    const size_t codes = (size_t)NH * NK * 64 + (size_t)PF * 64 + 4096, scales = (size_t)NH * NK * 8 + (size_t)PF * 8 + 65536;
    for (int i = 0; i < lib_nc; i++) {
        lib_c[i].k = big(codes);
        lib_c[i].v = big(codes);
        lib_c[i].ks = big(scales);
        lib_c[i].vs = big(scales);
    }
    for (int i = 0; i < 128; i++) lib_q[i] = i * 0x01010101;
    return 0;
}
double sb_call(int ci, int threads, int extra) {
    if (!lib_c || threads < 1 || extra < 0) return -1.0;
    EXTRA = extra;
    const cache *cc = &lib_c[ci % lib_nc];
    const double t0 = now();
#pragma omp parallel num_threads(threads)
    {
        float scr[TILE * 4 + 64] __attribute__((aligned(64)));
#pragma omp for schedule(static)
        for (int h = 0; h < NH; h++)
            head(cc->k + (size_t)h * NK * 64, cc->v + (size_t)h * NK * 64, cc->ks + (size_t)h * NK * 8,
                 cc->vs + (size_t)h * NK * 8, lib_q, scr);
    }
    return now() - t0;
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
    cache *c = malloc(sizeof(cache) * nc);
    const size_t codes = (size_t)NH * NK * 64 + (size_t)PF * 64 + 4096, scales = (size_t)NH * NK * 8 + (size_t)PF * 8 + 65536;
    for (int i = 0; i < nc; i++) {
        c[i].k = big(codes);
        c[i].v = big(codes);
        c[i].ks = big(scales);
        c[i].vs = big(scales);
    }
    int q[128];
    for (int i = 0; i < 128; i++) q[i] = i * 0x01010101;
    omp_set_num_threads(thr);
    double best = 1e30, total = 0;
    int n = 0;
    for (int r = 0; r < rounds; r++)
        for (int ci = 0; ci < nc; ci++) {
            const cache *cc = &c[ci];
            const double t0 = now();
#pragma omp parallel
            {
                float scr[TILE * 4 + 64] __attribute__((aligned(64)));
#pragma omp for schedule(static)
                for (int h = 0; h < NH; h++)
                    head(cc->k + (size_t)h * NK * 64, cc->v + (size_t)h * NK * 64, cc->ks + (size_t)h * NK * 8,
                         cc->vs + (size_t)h * NK * 8, q, scr);
            }
            const double dt = now() - t0;
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
