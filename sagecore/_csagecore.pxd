# Declarations of csrc/include/sagecore.h, C names verbatim. Nothing else.
from libc.stdint cimport int32_t, int64_t, uint16_t, uint32_t, uint64_t

cdef extern from "sagecore.h" nogil:
    int SC_ABI_VERSION

    ctypedef enum sc_status:
        SC_OK
        SC_ERR_INVALID_ARGUMENT
        SC_ERR_UNSUPPORTED
        SC_ERR_NONFINITE
        SC_ERR_NO_MEMORY

    const char *sc_last_error()

    ctypedef enum sc_dtype:
        SC_DTYPE_F32
        SC_DTYPE_F16

    ctypedef enum sc_encoding:
        SC_ENC_FP16
        SC_ENC_INT8
        SC_ENC_INT4

    ctypedef enum sc_isa:
        SC_ISA_PORTABLE
        SC_ISA_AVX2
        SC_ISA_AVX512
        SC_ISA_AVX512_VNNI
        SC_ISA_AMX
        SC_ISA_NEON
        SC_ISA_NEON_DOTPROD

    sc_isa sc_cpu_best_isa()
    sc_isa sc_cpu_active_isa()
    sc_status sc_cpu_set_isa(sc_isa isa)
    const char *sc_isa_name(sc_isa isa)
    const char *sc_cpu_features()

    ctypedef struct sc_format:
        int32_t encoding
        int32_t head_dim
        int32_t token_group
        int32_t channel_group
        int32_t scale_dtype
        int32_t zero_point
        int32_t outliers
        int32_t rotate
        int32_t smooth
        int32_t layout

    ctypedef struct sc_store:
        void *data
        void *scales
        void *zeros
        uint16_t *out_idx
        uint16_t *out_val
        float *mean
        int64_t rows
        int64_t capacity

    ctypedef struct sc_tensor:
        void *ptr
        int32_t dtype
        int64_t batch, heads, tokens, dim
        int64_t stride_b, stride_h, stride_t

    int64_t sc_format_row_bytes(const sc_format *f)
    sc_status sc_format_check(const sc_format *f)
    int32_t sc_rotation_block(int32_t head_dim)
    void sc_rotate_f32(float *x, int64_t n, int64_t stride, int32_t d)
    sc_status sc_quantize(const sc_format *f, const sc_store *store, const sc_tensor *src, int64_t t0)
    unsigned int SC_QUANTIZE_VALUES_CHECKED
    sc_status sc_quantize_ex(const sc_format *f, const sc_store *store, const sc_tensor *src, int64_t t0,
                             uint32_t flags)
    sc_status sc_dequantize(const sc_format *f, const sc_store *store, const sc_tensor *dst, int64_t t0)
    sc_status sc_check_values(const sc_tensor *t)
    sc_status sc_convert(const sc_tensor *src, const sc_tensor *dst)
    void sc_f16_to_f32(const uint16_t *src, float *dst, int64_t n)
    void sc_f32_to_f16(const float *src, uint16_t *dst, int64_t n)

    ctypedef struct sc_attention_args:
        sc_tensor q
        sc_tensor out
        float *lse
        const sc_format *kf
        const sc_format *vf
        const sc_store *k
        const sc_store *v
        int64_t kv_heads
        int64_t kv_len
        const int64_t *kv_lens
        float scale
        int32_t causal
        int32_t split_k
        const sc_tensor *k_tensor
        const sc_tensor *v_tensor
        int32_t precision

    sc_status sc_attention(const sc_attention_args *a)
    int32_t sc_attention_auto_splits(int64_t batch, int64_t kv_heads, int64_t q_heads, int64_t q_len,
                                     int64_t kv_len, int32_t threads)

    uint64_t sc_read_probe(const void *p, size_t n)
    double sc_compute_probe(int64_t n)
    int sc_num_threads()
    void sc_set_num_threads(int n)
