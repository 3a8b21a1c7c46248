/*
 * cpu.c -- run-time CPU feature detection, ISA selection, threads, errors.
 *
 * The distributed build is compiled for the baseline ISA (x86-64 / armv8-a);
 * faster paths live in functions with target attributes and are chosen here,
 * once, from what the CPU *and the OS* support (AVX state must be enabled in
 * XCR0, not only reported by CPUID).
 */
#if defined(__linux__) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE /* syscall() under -std=c11 */
#endif
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "sc_internal.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(SC_X86)
#include <cpuid.h>
#endif
#if defined(SC_X86) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#define SC_ARCH_REQ_XCOMP_PERM 0x1023
#define SC_XFEATURE_XTILEDATA 18
#endif
#if defined(SC_ARM64) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif
#if defined(SC_ARM64) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

/* ================================================================ errors */
static _Thread_local char sc_err_buf[512];

sc_status sc_fail(sc_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sc_err_buf, sizeof sc_err_buf, fmt, ap);
    va_end(ap);
    return status;
}

const char *sc_last_error(void) { return sc_err_buf; }

/* ======================================================= feature detection */
static int sc_detected = 0;
static sc_isa sc_best = SC_ISA_PORTABLE;
static int sc_bf16 = 0; /* AVX512-BF16 (x86): used by the avx512_vnni level's prefill at the bf16 setting */
/* AVX-VNNI (x86, 256-bit VEX VPDPBUSD/VPDPWSSD: Intel client CPUs without
 * AVX-512): the avx2 level's integer decode scores. 0 none, 1 the VEX build,
 * 2 its EVEX twin (same source and semantics, AVX512-VNNI/VL encoding): only
 * with SAGECORE_AVXVNNI=evex on an AVX512-VNNI CPU, so that machines without
 * AVX-VNNI can run and test that code. SAGECORE_AVXVNNI=0 turns it off. */
static int sc_avxvnni = 0;
static sc_isa sc_active = SC_ISA_PORTABLE;
static char sc_features[256];

#if defined(SC_X86)
static uint64_t sc_xgetbv0(void) {
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((uint64_t)edx << 32) | eax;
}

static void sc_detect_x86(void) {
    unsigned a, b, c, d;
    int avx = 0, avx2 = 0, fma = 0, f16c = 0, avx512 = 0, vnni512 = 0, avxvnni = 0, bf16 = 0, amx = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    int osxsave = (c >> 27) & 1;
    fma = (c >> 12) & 1;
    f16c = (c >> 29) & 1;
    avx = (c >> 28) & 1;
    uint64_t xcr0 = osxsave ? sc_xgetbv0() : 0;
    int os_avx = (xcr0 & 0x6) == 0x6;
    int os_avx512 = (xcr0 & 0xE6) == 0xE6;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
        avx2 = (b >> 5) & 1;
        int f = (b >> 16) & 1, dq = (b >> 17) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1;
        avx512 = f && dq && bw && vl;
        vnni512 = (c >> 11) & 1;
        amx = ((d >> 22) & 1) && ((d >> 24) & 1); /* AMX-BF16, AMX-TILE */
    }
    if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) {
        avxvnni = (a >> 4) & 1;
        bf16 = (a >> 5) & 1;
    }
    avx = avx && os_avx;
    avx2 = avx2 && avx && fma && f16c;
    avx512 = avx512 && avx2 && os_avx512;
    vnni512 = vnni512 && avx512;
    bf16 = bf16 && avx512;
    /* AMX: tile state enabled in XCR0 (bits 17, 18) and, on Linux, the
     * process's permission to use it (arch_prctl, once per process) */
    amx = amx && bf16 && vnni512 && (xcr0 & 0x60000) == 0x60000;
#if defined(__linux__)
    amx = amx && syscall(SYS_arch_prctl, SC_ARCH_REQ_XCOMP_PERM, SC_XFEATURE_XTILEDATA) == 0;
#else
    amx = 0; /* no AMX path off Linux (other OSes grant tile state differently) */
#endif
    snprintf(sc_features, sizeof sc_features, "sse2%s%s%s%s%s%s%s%s%s",
             avx ? " avx" : "", fma ? " fma" : "", f16c ? " f16c" : "",
             avx2 ? " avx2" : "", avx512 ? " avx512f avx512bw avx512dq avx512vl" : "",
             vnni512 ? " avx512vnni" : "", avxvnni && os_avx ? " avxvnni" : "",
             bf16 ? " avx512bf16" : "", amx ? " amx-tile amx-bf16" : "");
    {   /* SAGECORE_AVX512BF16=0: leave AVX512-BF16 unused (as on a VNNI CPU without it; for tests) */
        const char *e = getenv("SAGECORE_AVX512BF16");
        sc_bf16 = bf16 && !(e && strcmp(e, "0") == 0);
    }
    {
        const char *e = getenv("SAGECORE_AVXVNNI");
        if (e && strcmp(e, "0") == 0) sc_avxvnni = 0;
        else if (e && strcmp(e, "evex") == 0) sc_avxvnni = vnni512 ? 2 : 0;
        else sc_avxvnni = avxvnni && avx2 ? 1 : 0;
    }
    if (amx) sc_best = SC_ISA_AMX;
    else if (vnni512) sc_best = SC_ISA_AVX512_VNNI;
    else if (avx512) sc_best = SC_ISA_AVX512;
    else if (avx2) sc_best = SC_ISA_AVX2;
}
#endif

#if defined(SC_ARM64)
static void sc_detect_arm64(void) {
    int dotprod = 0;
#if defined(__linux__)
    dotprod = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#elif defined(__APPLE__)
    int v = 0;
    size_t len = sizeof v;
    if (sysctlbyname("hw.optional.arm.FEAT_DotProd", &v, &len, NULL, 0) == 0) dotprod = v != 0;
#endif
    snprintf(sc_features, sizeof sc_features, "neon%s", dotprod ? " dotprod" : "");
    sc_best = dotprod ? SC_ISA_NEON_DOTPROD : SC_ISA_NEON;
}
#endif

static void sc_detect(void) {
    if (sc_detected) return;
    strcpy(sc_features, "");
#if defined(SC_X86)
    sc_detect_x86();
#elif defined(SC_ARM64)
    sc_detect_arm64();
#endif
    sc_active = sc_best;
#if defined(SC_X86)
    sc_row_kernels_avx512_init();
#elif defined(SC_ARM64)
    sc_row_kernels_neon_init();
#endif
    /* SAGECORE_ISA=portable|avx2|... caps the level for the whole process. */
    const char *env = getenv("SAGECORE_ISA");
    if (env && *env) {
        for (int i = 0; i <= SC_ISA_NEON_DOTPROD; i++) {
            const char *name = sc_isa_name((sc_isa)i);
            if (name[0] != '?' && strcmp(env, name) == 0 && (i == 0 || i <= (int)sc_best)) {
                sc_active = (sc_isa)i;
            }
        }
    }
    sc_detected = 1;
}

sc_isa sc_cpu_best_isa(void) { sc_detect(); return sc_best; }
int sc_cpu_has_avx512bf16(void) { sc_detect(); return sc_bf16; }
int sc_cpu_avxvnni_mode(void) { sc_detect(); return sc_avxvnni; }
sc_isa sc_cpu_active_isa(void) { sc_detect(); return sc_active; }
const char *sc_cpu_features(void) { sc_detect(); return sc_features; }

sc_status sc_cpu_set_isa(sc_isa isa) {
    sc_detect();
    int ok = isa == SC_ISA_PORTABLE;
#if defined(SC_X86)
    ok = ok || (isa >= SC_ISA_AVX2 && isa <= SC_ISA_AMX && isa <= sc_best);
#elif defined(SC_ARM64)
    ok = ok || (isa >= SC_ISA_NEON && isa <= sc_best);
#endif
    if (!ok)
        return sc_fail(SC_ERR_UNSUPPORTED, "ISA '%s' is not supported by this CPU (best: '%s')",
                       sc_isa_name(isa), sc_isa_name(sc_best));
    sc_active = isa;
    return SC_OK;
}

const char *sc_isa_name(sc_isa isa) {
    switch (isa) {
    case SC_ISA_PORTABLE: return "portable";
    case SC_ISA_AVX2: return "avx2";
    case SC_ISA_AVX512: return "avx512";
    case SC_ISA_AVX512_VNNI: return "avx512_vnni";
    case SC_ISA_AMX: return "amx";
    case SC_ISA_NEON: return "neon";
    case SC_ISA_NEON_DOTPROD: return "neon_dotprod";
    }
    return "?";
}

const sc_row_kernels *sc_row_kernels_active(void) {
    sc_isa isa = sc_cpu_active_isa();
#if defined(SC_X86)
    if (sc_isa_avx512_family(isa)) return &sc_row_kernels_avx512;
    if (isa == SC_ISA_AVX2) return &sc_row_kernels_avx2;
#endif
#if defined(SC_ARM64)
    if (isa == SC_ISA_NEON || isa == SC_ISA_NEON_DOTPROD) return &sc_row_kernels_neon;
#endif
    (void)isa;
    return &sc_row_kernels_portable;
}

/* ================================================================ threads */
static int sc_threads = 0;

int sc_num_threads(void) {
    if (sc_threads > 0) return sc_threads;
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

void sc_set_num_threads(int n) { sc_threads = n > 0 ? n : 0; }

/* ========================================================= bandwidth probe */
/* Reads n bytes with every core (benchmarks report KV bytes/s against it).
 * Wide loads on the ISA in use, so the probe is bound by memory, not by
 * the add loop. */
#define SC_PROBE_BODY(VEC, LOAD, ADD, ZERO, STEP)                                   \
    {                                                                                \
        const char *b = (const char *)p;                                             \
        const int64_t nb = (int64_t)(n / (4 * STEP));                                \
        _Pragma("omp parallel for reduction(+ : total) num_threads(sc_num_threads())") \
        for (int64_t i = 0; i < nb; i++) {                                           \
            const char *q = b + i * 4 * STEP;                                        \
            VEC acc = ADD(ADD(LOAD(q), LOAD(q + STEP)), ADD(LOAD(q + 2 * STEP), LOAD(q + 3 * STEP))); \
            uint64_t lanes[STEP / 8];                                                \
            memcpy(lanes, &acc, STEP);                                               \
            total += lanes[0];                                                       \
        }                                                                            \
        (void)ZERO;                                                                  \
    }

#if defined(SC_X86)
#include <immintrin.h>
__attribute__((target("avx512f"))) static uint64_t probe_avx512(const void *p, size_t n) {
    uint64_t total = 0;
    SC_PROBE_BODY(__m512i, _mm512_loadu_si512, _mm512_add_epi64, 0, 64)
    return total;
}
__attribute__((target("avx2"))) static uint64_t probe_avx2(const void *p, size_t n) {
    uint64_t total = 0;
#define SC_LD256(x) _mm256_loadu_si256((const __m256i *)(x))
    SC_PROBE_BODY(__m256i, SC_LD256, _mm256_add_epi64, 0, 32)
#undef SC_LD256
    return total;
}
#endif

/* ========================================================= compute probe */
/* n multiply-adds of the widest float vector of the active ISA per thread,
 * in 12 independent chains (throughput, not latency), on sc_num_threads()
 * threads. Benchmarks time it with one thread and with all: on the shared
 * VMs the second vCPU sometimes lands on the first one's SMT sibling and
 * the vector throughput of two threads is then that of one (docs/
 * benchmarks.md, session 13). Returns a checksum. */
#define SC_CPROBE_BODY(VEC, SET1, FMA, ADD, STORE, LANES)                        \
    {                                                                           \
        const VEC a = SET1(1.0000001f), b = SET1(1e-7f);                        \
        VEC x[12];                                                              \
        for (int c = 0; c < 12; c++) x[c] = SET1((float)c);                     \
        for (int64_t i = 0; i < n / 12; i++)                                    \
            for (int c = 0; c < 12; c++) x[c] = FMA(x[c], a, b);                \
        for (int c = 1; c < 12; c++) x[0] = ADD(x[0], x[c]);                    \
        float l[LANES];                                                         \
        STORE(l, x[0]);                                                         \
        sum = l[0];                                                             \
    }
#if defined(SC_X86)
__attribute__((target("avx512f"))) static float cprobe_avx512(int64_t n) {
    float sum;
    SC_CPROBE_BODY(__m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps, _mm512_storeu_ps, 16)
    return sum;
}
__attribute__((target("avx2,fma"))) static float cprobe_avx2(int64_t n) {
    float sum;
    SC_CPROBE_BODY(__m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps, _mm256_storeu_ps, 8)
    return sum;
}
#endif
#if defined(SC_ARM64)
#include <arm_neon.h>
static float cprobe_neon(int64_t n) {
    float sum;
#define SC_VFMA(x, a, b) vfmaq_f32(b, x, a)
    SC_CPROBE_BODY(float32x4_t, vdupq_n_f32, SC_VFMA, vaddq_f32, vst1q_f32, 4)
#undef SC_VFMA
    return sum;
}
#endif
static float cprobe_portable(int64_t n) {
    float x[12], sum = 0.0f;
    for (int c = 0; c < 12; c++) x[c] = (float)c;
    for (int64_t i = 0; i < n / 12; i++)
        for (int c = 0; c < 12; c++) x[c] = x[c] * 1.0000001f + 1e-7f;
    for (int c = 0; c < 12; c++) sum += x[c];
    return sum;
}

double sc_compute_probe(int64_t n) {
    double total = 0.0;
    const sc_isa isa = sc_cpu_active_isa();
    (void)isa;
#pragma omp parallel reduction(+ : total) num_threads(sc_num_threads())
    {
#if defined(SC_X86)
        if (sc_isa_avx512_family(isa)) total += cprobe_avx512(n);
        else if (isa == SC_ISA_AVX2) total += cprobe_avx2(n);
        else total += cprobe_portable(n);
#elif defined(SC_ARM64)
        if (isa != SC_ISA_PORTABLE) total += cprobe_neon(n);
        else total += cprobe_portable(n);
#else
        total += cprobe_portable(n);
#endif
    }
    return total;
}

uint64_t sc_read_probe(const void *p, size_t n) {
#if defined(SC_X86)
    sc_isa isa = sc_cpu_active_isa();
    if (sc_isa_avx512_family(isa)) return probe_avx512(p, n);
    if (isa == SC_ISA_AVX2) return probe_avx2(p, n);
#endif
    const uint64_t *w = (const uint64_t *)p;
    const int64_t nw = (int64_t)(n / 8);
    uint64_t total = 0;
#pragma omp parallel for reduction(+ : total) num_threads(sc_num_threads())
    for (int64_t i = 0; i < nw - 7; i += 8)
        total += (w[i] + w[i + 1]) + (w[i + 2] + w[i + 3]) + (w[i + 4] + w[i + 5]) + (w[i + 6] + w[i + 7]);
    return total;
}
