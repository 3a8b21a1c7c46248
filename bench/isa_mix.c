/* How many 512-bit operations of each kind this x86-64 core issues per
 * cycle, alone and mixed one-to-one with VPDPWSSD (the integer decode's
 * product instruction): 12 independent chains per kind, so throughput, not
 * latency, is what is timed. Needs AVX512-VNNI.
 *
 *     gcc -O2 bench/isa_mix.c -o /tmp/isa_mix && /tmp/isa_mix
 *
 * Prints ns per group (one instruction of each kind named); divide by the
 * ns of one cycle (a dependent scalar add: ~0.29 ns on the Zen 4 machine of
 * docs/benchmarks.md). Results: docs/benchmarks.md, sessions 10 and 13
 * (13: FMA, vmulps and vscalefps take the product instruction's pipe --
 * a pair costs two cycles -- while vmaxps and vcvtps2dq issue beside it). */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
#include <stdint.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
#define N 100000000L
#define T __attribute__((target("avx512f,avx512bw,avx512vnni,avx512vl"),noinline))
#define DP(a) __asm__ volatile("vpdpwssd %%zmm30, %%zmm31, %%" #a ::: #a)
#define SH(a) __asm__ volatile("vpunpckldq %%zmm29, %%zmm28, %%" #a ::: #a)
#define AD(a) __asm__ volatile("vpaddd %%zmm29, %%zmm28, %%" #a ::: #a)
#define SX(a) __asm__ volatile("vpmovsxbw %%ymm27, %%" #a ::: #a)
#define PS(a) __asm__ volatile("vshufi32x4 $0x88, %%zmm29, %%zmm28, %%" #a ::: #a)
#define BC(a) __asm__ volatile("vpbroadcastd (%0), %%" #a :: "r"(buf) : #a)
#define FM(a) __asm__ volatile("vfmadd231ps %%zmm29, %%zmm28, %%" #a ::: #a)
#define CV(a) __asm__ volatile("vcvtps2dq %%zmm29, %%" #a ::: #a)
#define MU(a) __asm__ volatile("vmulps %%zmm29, %%zmm28, %%" #a ::: #a)
#define MX(a) __asm__ volatile("vmaxps %%zmm29, %%zmm28, %%" #a ::: #a)
#define SF(a) __asm__ volatile("vscalefps %%zmm29, %%zmm28, %%" #a ::: #a)
#define SR(a) __asm__ volatile("vpsraw $8, %%zmm29, %%" #a ::: #a)
#define AN(a) __asm__ volatile("vpandd %%zmm29, %%zmm28, %%" #a ::: #a)
#define BU(a) __asm__ volatile("vpdpbusd %%zmm29, %%zmm28, %%" #a ::: #a)
static int buf[64];
/* ns per group of 12 independent instructions of kind M alone (zmm12-23), or
 * each paired with a VPDPWSSD (zmm0-11) */
#define LOOP(BODY) { double t = now(); for (long i = 0; i < N / 12; i++) { BODY } return (now() - t) / N * 1e9; }
#define ALONE(NAME, M) T double NAME() LOOP(M(zmm12); M(zmm13); M(zmm14); M(zmm15); M(zmm16); M(zmm17); \
                                            M(zmm18); M(zmm19); M(zmm20); M(zmm21); M(zmm22); M(zmm23);)
#define PAIR(NAME, M) T double NAME() LOOP(DP(zmm0); M(zmm12); DP(zmm1); M(zmm13); DP(zmm2); M(zmm14); \
                                           DP(zmm3); M(zmm15); DP(zmm4); M(zmm16); DP(zmm5); M(zmm17); \
                                           DP(zmm6); M(zmm18); DP(zmm7); M(zmm19); DP(zmm8); M(zmm20); \
                                           DP(zmm9); M(zmm21); DP(zmm10); M(zmm22); DP(zmm11); M(zmm23);)
T double dp_only() LOOP(DP(zmm0); DP(zmm1); DP(zmm2); DP(zmm3); DP(zmm4); DP(zmm5); DP(zmm6); DP(zmm7); DP(zmm8);
                        DP(zmm9); DP(zmm10); DP(zmm11);)
ALONE(add_only, AD)
ALONE(sh_only, SH)
ALONE(sx_only, SX)
ALONE(ps_only, PS)
ALONE(fma_only, FM)
ALONE(cvt_only, CV)
PAIR(dp_add, AD)
PAIR(dp_sh, SH)
PAIR(dp_sx, SX)
PAIR(dp_ps, PS)
PAIR(dp_bc, BC)
PAIR(dp_fma, FM)
PAIR(dp_cvt, CV)
PAIR(dp_mul, MU)
PAIR(dp_max, MX)
PAIR(dp_scalef, SF)
PAIR(dp_sra, SR)
PAIR(dp_and, AN)
PAIR(dp_busd, BU)
/* three kinds: a product, an add and an unpack per step */
T double dp_add_sh() LOOP(DP(zmm0); AD(zmm12); SH(zmm24); DP(zmm1); AD(zmm13); SH(zmm25); DP(zmm2); AD(zmm14);
                          SH(zmm26); DP(zmm3); AD(zmm15); SH(zmm24); DP(zmm4); AD(zmm16); SH(zmm25); DP(zmm5);
                          AD(zmm17); SH(zmm26); DP(zmm6); AD(zmm18); SH(zmm24); DP(zmm7); AD(zmm19); SH(zmm25);
                          DP(zmm8); AD(zmm20); SH(zmm26); DP(zmm9); AD(zmm21); SH(zmm24); DP(zmm10); AD(zmm22);
                          SH(zmm25); DP(zmm11); AD(zmm23); SH(zmm26);)
int main(void) {
    for (int r = 0; r < 2; r++)
        printf("ns per group: dp %.3f add %.3f unpck %.3f sx %.3f shufi %.3f | dp+add %.3f dp+unpck %.3f dp+sx %.3f "
               "dp+shufi %.3f dp+bcast %.3f dp+add+unpck %.3f\n",
               dp_only(), add_only(), sh_only(), sx_only(), ps_only(), dp_add(), dp_sh(), dp_sx(), dp_ps(), dp_bc(),
               dp_add_sh());
    for (int r = 0; r < 2; r++)
        printf("ns per group: dp %.3f fma %.3f cvtps2dq %.3f | dp+fma %.3f dp+cvtps2dq %.3f\n", dp_only(), fma_only(),
               cvt_only(), dp_fma(), dp_cvt());
    for (int r = 0; r < 2; r++)
        printf("ns per group: dp+mulps %.3f dp+maxps %.3f dp+scalefps %.3f dp+vpsraw %.3f dp+vpandd %.3f dp+vpdpbusd %.3f\n",
               dp_mul(), dp_max(), dp_scalef(), dp_sra(), dp_and(), dp_busd());
    return 0;
}
