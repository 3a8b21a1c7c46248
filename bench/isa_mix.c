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
#define SH(a,b) __asm__ volatile("vpunpckldq %%zmm29, %%zmm28, %%" #a ::: #a)
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
T double dp_only(){double t=now();for(long i=0;i<N/12;i++){DP(zmm0);DP(zmm1);DP(zmm2);DP(zmm3);DP(zmm4);DP(zmm5);DP(zmm6);DP(zmm7);DP(zmm8);DP(zmm9);DP(zmm10);DP(zmm11);}return (now()-t)/N*1e9;}
T double add_only(){double t=now();for(long i=0;i<N/12;i++){AD(zmm12);AD(zmm13);AD(zmm14);AD(zmm15);AD(zmm16);AD(zmm17);AD(zmm18);AD(zmm19);AD(zmm20);AD(zmm21);AD(zmm22);AD(zmm23);}return (now()-t)/N*1e9;}
T double sh_only(){double t=now();for(long i=0;i<N/12;i++){SH(zmm12,0);SH(zmm13,0);SH(zmm14,0);SH(zmm15,0);SH(zmm16,0);SH(zmm17,0);SH(zmm18,0);SH(zmm19,0);SH(zmm20,0);SH(zmm21,0);SH(zmm22,0);SH(zmm23,0);}return (now()-t)/N*1e9;}
T double sx_only(){double t=now();for(long i=0;i<N/12;i++){SX(zmm12);SX(zmm13);SX(zmm14);SX(zmm15);SX(zmm16);SX(zmm17);SX(zmm18);SX(zmm19);SX(zmm20);SX(zmm21);SX(zmm22);SX(zmm23);}return (now()-t)/N*1e9;}
T double ps_only(){double t=now();for(long i=0;i<N/12;i++){PS(zmm12);PS(zmm13);PS(zmm14);PS(zmm15);PS(zmm16);PS(zmm17);PS(zmm18);PS(zmm19);PS(zmm20);PS(zmm21);PS(zmm22);PS(zmm23);}return (now()-t)/N*1e9;}
T double dp_add(){double t=now();for(long i=0;i<N/12;i++){DP(zmm0);AD(zmm12);DP(zmm1);AD(zmm13);DP(zmm2);AD(zmm14);DP(zmm3);AD(zmm15);DP(zmm4);AD(zmm16);DP(zmm5);AD(zmm17);DP(zmm6);AD(zmm18);DP(zmm7);AD(zmm19);DP(zmm8);AD(zmm20);DP(zmm9);AD(zmm21);DP(zmm10);AD(zmm22);DP(zmm11);AD(zmm23);}return (now()-t)/N*1e9;}
T double dp_sh(){double t=now();for(long i=0;i<N/12;i++){DP(zmm0);SH(zmm12,0);DP(zmm1);SH(zmm13,0);DP(zmm2);SH(zmm14,0);DP(zmm3);SH(zmm15,0);DP(zmm4);SH(zmm16,0);DP(zmm5);SH(zmm17,0);DP(zmm6);SH(zmm18,0);DP(zmm7);SH(zmm19,0);DP(zmm8);SH(zmm20,0);DP(zmm9);SH(zmm21,0);DP(zmm10);SH(zmm22,0);DP(zmm11);SH(zmm23,0);}return (now()-t)/N*1e9;}
T double dp_sx(){double t=now();for(long i=0;i<N/12;i++){DP(zmm0);SX(zmm12);DP(zmm1);SX(zmm13);DP(zmm2);SX(zmm14);DP(zmm3);SX(zmm15);DP(zmm4);SX(zmm16);DP(zmm5);SX(zmm17);DP(zmm6);SX(zmm18);DP(zmm7);SX(zmm19);DP(zmm8);SX(zmm20);DP(zmm9);SX(zmm21);DP(zmm10);SX(zmm22);DP(zmm11);SX(zmm23);}return (now()-t)/N*1e9;}
T double dp_ps(){double t=now();for(long i=0;i<N/12;i++){DP(zmm0);PS(zmm12);DP(zmm1);PS(zmm13);DP(zmm2);PS(zmm14);DP(zmm3);PS(zmm15);DP(zmm4);PS(zmm16);DP(zmm5);PS(zmm17);DP(zmm6);PS(zmm18);DP(zmm7);PS(zmm19);DP(zmm8);PS(zmm20);DP(zmm9);PS(zmm21);DP(zmm10);PS(zmm22);DP(zmm11);PS(zmm23);}return (now()-t)/N*1e9;}
T double dp_bc(){double t=now();for(long i=0;i<N/12;i++){DP(zmm0);BC(zmm12);DP(zmm1);BC(zmm13);DP(zmm2);BC(zmm14);DP(zmm3);BC(zmm15);DP(zmm4);BC(zmm16);DP(zmm5);BC(zmm17);DP(zmm6);BC(zmm18);DP(zmm7);BC(zmm19);DP(zmm8);BC(zmm20);DP(zmm9);BC(zmm21);DP(zmm10);BC(zmm22);DP(zmm11);BC(zmm23);}return (now()-t)/N*1e9;}
T double dp_add_sh(){double t=now();for(long i=0;i<N/12;i++){DP(zmm0);AD(zmm12);SH(zmm24,0);DP(zmm1);AD(zmm13);SH(zmm25,0);DP(zmm2);AD(zmm14);SH(zmm26,0);DP(zmm3);AD(zmm15);SH(zmm24,0);DP(zmm4);AD(zmm16);SH(zmm25,0);DP(zmm5);AD(zmm17);SH(zmm26,0);DP(zmm6);AD(zmm18);SH(zmm24,0);DP(zmm7);AD(zmm19);SH(zmm25,0);DP(zmm8);AD(zmm20);SH(zmm26,0);DP(zmm9);AD(zmm21);SH(zmm24,0);DP(zmm10);AD(zmm22);SH(zmm25,0);DP(zmm11);AD(zmm23);SH(zmm26,0);}return (now()-t)/N*1e9;}
#define X12(M, r0) M(zmm12); M(zmm13); M(zmm14); M(zmm15); M(zmm16); M(zmm17); M(zmm18); M(zmm19); M(zmm20); M(zmm21); M(zmm22); M(zmm23)
T double fma_only(){double t=now();for(long i=0;i<N/12;i++){X12(FM,0);}return (now()-t)/N*1e9;}
T double cvt_only(){double t=now();for(long i=0;i<N/12;i++){X12(CV,0);}return (now()-t)/N*1e9;}
T double dp_fma(){double t=now();for(long i=0;i<N/12;i++){DP(zmm0);FM(zmm12);DP(zmm1);FM(zmm13);DP(zmm2);FM(zmm14);DP(zmm3);FM(zmm15);DP(zmm4);FM(zmm16);DP(zmm5);FM(zmm17);DP(zmm6);FM(zmm18);DP(zmm7);FM(zmm19);DP(zmm8);FM(zmm20);DP(zmm9);FM(zmm21);DP(zmm10);FM(zmm22);DP(zmm11);FM(zmm23);}return (now()-t)/N*1e9;}
T double dp_cvt(){double t=now();for(long i=0;i<N/12;i++){DP(zmm0);CV(zmm12);DP(zmm1);CV(zmm13);DP(zmm2);CV(zmm14);DP(zmm3);CV(zmm15);DP(zmm4);CV(zmm16);DP(zmm5);CV(zmm17);DP(zmm6);CV(zmm18);DP(zmm7);CV(zmm19);DP(zmm8);CV(zmm20);DP(zmm9);CV(zmm21);DP(zmm10);CV(zmm22);DP(zmm11);CV(zmm23);}return (now()-t)/N*1e9;}
#define PAIR(NAME, M) T double NAME(){double t=now();for(long i=0;i<N/12;i++){DP(zmm0);M(zmm12);DP(zmm1);M(zmm13);DP(zmm2);M(zmm14);DP(zmm3);M(zmm15);DP(zmm4);M(zmm16);DP(zmm5);M(zmm17);DP(zmm6);M(zmm18);DP(zmm7);M(zmm19);DP(zmm8);M(zmm20);DP(zmm9);M(zmm21);DP(zmm10);M(zmm22);DP(zmm11);M(zmm23);}return (now()-t)/N*1e9;}
PAIR(dp_mul, MU)
PAIR(dp_max, MX)
PAIR(dp_scalef, SF)
PAIR(dp_sra, SR)
PAIR(dp_and, AN)
PAIR(dp_busd, BU)
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
