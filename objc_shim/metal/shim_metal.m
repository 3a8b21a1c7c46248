/* shim_metal.m -- sagecore_metal.h on Apple's Metal API (macOS only).
 *
 * Memory management: ARC (setup.py compiles this file with -fobjc-arc).
 * Handles are plain C structs; each Metal object they own is held as a
 * retained `void *` (CFBridgingRetain) and released in the handle's free
 * function (CFBridgingRelease), so no Objective-C type leaves this file.
 *
 * NOT BUILT OR RUN IN THIS PROJECT'S CI: no machine there has macOS or an
 * Apple GPU. Every API name below was checked against Apple's documentation;
 * tests/test_metal_*.py run against this file on a Mac (SAGECORE_METAL=1 or
 * auto-detect). Until someone runs them there, treat it as unverified.
 */
#import <Foundation/Foundation.h>
#import <Metal/Metal.h>

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "../sagecore_metal.h"

/* ------------------------------------------------------------ errors */
static pthread_key_t g_err_key, g_log_key;
static pthread_once_t g_err_once = PTHREAD_ONCE_INIT;

static void err_keys(void) {
    pthread_key_create(&g_err_key, free);
    pthread_key_create(&g_log_key, free);
}

static void set_tls(pthread_key_t key, const char *s) {
    pthread_once(&g_err_once, err_keys);
    char *old = pthread_getspecific(key);
    free(old);
    pthread_setspecific(key, strdup(s ? s : ""));
}

static sc_mtl_status fail(sc_mtl_status st, const char *fmt, ...) {
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    set_tls(g_err_key, buf);
    return st;
}

const char *sc_mtl_last_error(void) {
    pthread_once(&g_err_once, err_keys);
    const char *s = pthread_getspecific(g_err_key);
    return s ? s : "";
}
const char *sc_mtl_last_compile_log(void) {
    pthread_once(&g_err_once, err_keys);
    const char *s = pthread_getspecific(g_log_key);
    return s ? s : "";
}
const char *sc_mtl_backend_name(void) { return "metal"; }
int sc_mtl_abi_version(void) { return SC_MTL_ABI_VERSION; }
sc_mtl_status sc_mtl_emu_configure(const char *key, const char *value) {
    (void)key;
    (void)value;
    return SC_MTL_OK; /* nothing to configure on Metal */
}
sc_mtl_status sc_mtl_set_race_check(sc_mtl_cmdbuf *c, int on) {
    (void)c;
    (void)on;
    return fail(SC_MTL_ERR_UNAVAILABLE, "the race check is a host-emulation feature");
}

/* ------------------------------------------------------------ device */
struct sc_mtl_device {
    void *device; /* id<MTLDevice> */
    void *queue;  /* id<MTLCommandQueue> */
};

#define DEV(d) ((__bridge id<MTLDevice>)(d)->device)

sc_mtl_status sc_mtl_device_create(sc_mtl_device **out) {
    if (!out) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "out is NULL");
    @autoreleasepool {
        id<MTLDevice> dev = MTLCreateSystemDefaultDevice();
        if (!dev) return fail(SC_MTL_ERR_UNAVAILABLE, "MTLCreateSystemDefaultDevice returned nil (no Metal GPU)");
        id<MTLCommandQueue> q = [dev newCommandQueue];
        if (!q) return fail(SC_MTL_ERR_UNAVAILABLE, "newCommandQueue failed");
        sc_mtl_device *d = calloc(1, sizeof *d);
        if (!d) return fail(SC_MTL_ERR_NO_MEMORY, "out of memory");
        d->device = (void *)CFBridgingRetain(dev);
        d->queue = (void *)CFBridgingRetain(q);
        *out = d;
    }
    return SC_MTL_OK;
}

void sc_mtl_device_free(sc_mtl_device *d) {
    if (!d) return;
    CFBridgingRelease(d->queue);
    CFBridgingRelease(d->device);
    free(d);
}

sc_mtl_status sc_mtl_device_info_get(const sc_mtl_device *d, sc_mtl_device_info *o) {
    if (!d || !o) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "device or out is NULL");
    memset(o, 0, sizeof *o);
    @autoreleasepool {
        id<MTLDevice> dev = DEV(d);
        snprintf(o->name, sizeof o->name, "%s", dev.name.UTF8String);
        /* highest Apple family supported: MTLGPUFamilyApple1 = 1001 ... Apple9 = 1009 */
        for (int n = 10; n >= 1; n--)
            if ([dev supportsFamily:(MTLGPUFamily)(MTLGPUFamilyApple1 + n - 1)]) {
                o->gpu_family = n;
                break;
            }
        o->max_threads_per_threadgroup = (int32_t)dev.maxThreadsPerThreadgroup.width;
        o->max_threadgroup_memory = (int64_t)dev.maxThreadgroupMemoryLength;
        o->recommended_working_set = (int64_t)dev.recommendedMaxWorkingSetSize;
        o->unified_memory = dev.hasUnifiedMemory ? 1 : 0;
        o->simdgroup_matrix = o->gpu_family >= 7; /* simdgroup_matrix: Apple7 and later */
        o->bfloat = o->gpu_family >= 9;           /* MSL 3.1 bfloat on Apple9 (M3) */
        o->simd_width = 32;
        o->emulated = 0;
    }
    return SC_MTL_OK;
}

sc_mtl_status sc_mtl_set_host_threads(sc_mtl_device *d, int n) {
    (void)n;
    if (!d) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "device is NULL");
    return SC_MTL_OK; /* the GPU schedules its own threadgroups */
}

/* ------------------------------------------------------------ buffers */
struct sc_mtl_buffer {
    void *buffer; /* id<MTLBuffer> */
    char *data;   /* the user's first byte */
    size_t length, offset;
};

sc_mtl_status sc_mtl_buffer_alloc(sc_mtl_device *d, size_t length, sc_mtl_buffer **out) {
    if (!d || !out) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "device or out is NULL");
    @autoreleasepool {
        id<MTLBuffer> b = [DEV(d) newBufferWithLength:(length ? length : 16) options:MTLResourceStorageModeShared];
        if (!b) return fail(SC_MTL_ERR_NO_MEMORY, "newBufferWithLength:%zu failed", length);
        sc_mtl_buffer *h = calloc(1, sizeof *h);
        if (!h) return fail(SC_MTL_ERR_NO_MEMORY, "out of memory");
        h->buffer = (void *)CFBridgingRetain(b);
        h->data = (char *)b.contents;
        h->length = length;
        memset(h->data, 0, length);
        *out = h;
    }
    return SC_MTL_OK;
}

/* Wrap the pages enclosing [ptr, ptr+length) and remember the offset
 * (ggml-metal does the same); copy only when Metal refuses the wrap. */
sc_mtl_status sc_mtl_buffer_wrap(sc_mtl_device *d, void *ptr, size_t length, sc_mtl_buffer **out, int *copied) {
    if (!d || !out || (!ptr && length)) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "device, ptr or out is NULL");
    const size_t pg = (size_t)getpagesize();
    const uintptr_t p = (uintptr_t)ptr;
    const uintptr_t base = p & ~(uintptr_t)(pg - 1);
    const size_t span = ((p + length + pg - 1) & ~(uintptr_t)(pg - 1)) - base;
    if (copied) *copied = 0;
    @autoreleasepool {
        id<MTLBuffer> b = nil;
        if (length)
            b = [DEV(d) newBufferWithBytesNoCopy:(void *)base
                                          length:span
                                         options:MTLResourceStorageModeShared
                                     deallocator:nil];
        sc_mtl_buffer *h = calloc(1, sizeof *h);
        if (!h) return fail(SC_MTL_ERR_NO_MEMORY, "out of memory");
        if (b) {
            h->offset = (size_t)(p - base);
            h->data = (char *)ptr;
        } else {
            /* refused (e.g. the range spans two VM regions): copy, and say so */
            b = [DEV(d) newBufferWithBytes:(length ? ptr : (void *)&h) length:(length ? length : 1)
                                  options:MTLResourceStorageModeShared];
            if (!b) {
                free(h);
                return fail(SC_MTL_ERR_NO_MEMORY, "wrapping %zu bytes failed and so did the copy", length);
            }
            h->offset = 0;
            h->data = (char *)b.contents;
            if (copied) *copied = 1;
        }
        h->buffer = (void *)CFBridgingRetain(b);
        h->length = length;
        *out = h;
    }
    return SC_MTL_OK;
}

void sc_mtl_buffer_free(sc_mtl_buffer *b) {
    if (!b) return;
    CFBridgingRelease(b->buffer);
    free(b);
}
void *sc_mtl_buffer_contents(const sc_mtl_buffer *b) { return b ? b->data : NULL; }
size_t sc_mtl_buffer_length(const sc_mtl_buffer *b) { return b ? b->length : 0; }
size_t sc_mtl_buffer_offset(const sc_mtl_buffer *b) { return b ? b->offset : 0; }

/* ------------------------------------------------------------ libraries */
struct sc_mtl_pipeline {
    void *state; /* id<MTLComputePipelineState> */
    char name[512];
};

struct sc_mtl_library {
    void *library; /* id<MTLLibrary> */
    void *cache;   /* NSMutableDictionary<NSString *, NSValue(pointer to sc_mtl_pipeline)> */
    pthread_mutex_t mu;
    int64_t created;
    char label[256];
};

/* Metal compiles source without a file system: expand #include "x" from
 * the include directory (once per file), leave <...> includes to Metal. */
static NSString *expand_includes(NSString *src, NSString *dir, NSMutableSet *seen, NSString **err) {
    NSMutableString *out = [NSMutableString string];
    for (NSString *line in [src componentsSeparatedByString:@"\n"]) {
        NSString *t = [line stringByTrimmingCharactersInSet:NSCharacterSet.whitespaceCharacterSet];
        if ([t hasPrefix:@"#include \""] && dir) {
            NSRange q1 = [t rangeOfString:@"\""];
            NSRange q2 = [t rangeOfString:@"\"" options:NSBackwardsSearch];
            NSString *name = [t substringWithRange:NSMakeRange(q1.location + 1, q2.location - q1.location - 1)];
            NSString *path = [dir stringByAppendingPathComponent:name];
            if ([seen containsObject:path]) continue;
            [seen addObject:path];
            NSString *inc = [NSString stringWithContentsOfFile:path encoding:NSUTF8StringEncoding error:nil];
            if (!inc) {
                *err = [NSString stringWithFormat:@"cannot read included file %@", path];
                return nil;
            }
            NSString *sub = expand_includes(inc, dir, seen, err);
            if (!sub) return nil;
            [out appendString:sub];
            [out appendString:@"\n"];
        } else if ([t isEqualToString:@"#pragma once"]) {
            continue;
        } else {
            [out appendString:line];
            [out appendString:@"\n"];
        }
    }
    return out;
}

static sc_mtl_library *library_new(id<MTLLibrary> lib, const char *label) {
    sc_mtl_library *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->library = (void *)CFBridgingRetain(lib);
    l->cache = (void *)CFBridgingRetain([NSMutableDictionary dictionary]);
    pthread_mutex_init(&l->mu, NULL);
    snprintf(l->label, sizeof l->label, "%s", label ? label : "library");
    return l;
}

sc_mtl_status sc_mtl_library_from_source(sc_mtl_device *d, const char *source, const char *options,
                                         sc_mtl_library **out) {
    if (!d || !source || !out) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "device, source or out is NULL");
    @autoreleasepool {
        NSString *name = @"source.metal", *include = nil, *lang = nil;
        BOOL fast = NO;
        if (options) {
            for (NSString *kv in [@(options) componentsSeparatedByString:@";"]) {
                NSRange eq = [kv rangeOfString:@"="];
                if (eq.location == NSNotFound) continue;
                NSString *k = [kv substringToIndex:eq.location], *v = [kv substringFromIndex:eq.location + 1];
                if ([k isEqualToString:@"name"]) name = v;
                else if ([k isEqualToString:@"include"]) include = v;
                else if ([k isEqualToString:@"fast_math"]) fast = [v isEqualToString:@"1"];
                else if ([k isEqualToString:@"language"]) lang = v;
            }
        }
        NSString *err = nil;
        NSString *src = expand_includes(@(source), include, [NSMutableSet set], &err);
        if (!src) {
            set_tls(g_log_key, err.UTF8String);
            return fail(SC_MTL_ERR_COMPILE, "%s: %s", name.UTF8String, err.UTF8String);
        }
        MTLCompileOptions *opt = [MTLCompileOptions new];
        if (@available(macOS 15.0, *)) {
            opt.mathMode = fast ? MTLMathModeFast : MTLMathModeSafe;
        } else {
            opt.fastMathEnabled = fast;
        }
        if ([lang isEqualToString:@"3.1"]) {
            if (@available(macOS 14.0, *)) opt.languageVersion = MTLLanguageVersion3_1;
        } else if ([lang isEqualToString:@"3.0"]) {
            if (@available(macOS 13.0, *)) opt.languageVersion = MTLLanguageVersion3_0;
        }
        NSError *e = nil;
        id<MTLLibrary> lib = [DEV(d) newLibraryWithSource:src options:opt error:&e];
        if (!lib) {
            const char *log = e ? e.localizedDescription.UTF8String : "unknown error";
            set_tls(g_log_key, log);
            return fail(SC_MTL_ERR_COMPILE, "compiling %s failed:\n%.1500s", name.UTF8String, log);
        }
        sc_mtl_library *l = library_new(lib, name.UTF8String);
        if (!l) return fail(SC_MTL_ERR_NO_MEMORY, "out of memory");
        *out = l;
    }
    return SC_MTL_OK;
}

sc_mtl_status sc_mtl_library_from_file(sc_mtl_device *d, const char *path, sc_mtl_library **out) {
    if (!d || !path || !out) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "device, path or out is NULL");
    @autoreleasepool {
        NSError *e = nil;
        id<MTLLibrary> lib = [DEV(d) newLibraryWithURL:[NSURL fileURLWithPath:@(path)] error:&e];
        if (!lib)
            return fail(SC_MTL_ERR_COMPILE, "loading %s failed: %s", path,
                        e ? e.localizedDescription.UTF8String : "unknown error");
        sc_mtl_library *l = library_new(lib, path);
        if (!l) return fail(SC_MTL_ERR_NO_MEMORY, "out of memory");
        *out = l;
    }
    return SC_MTL_OK;
}

void sc_mtl_library_free(sc_mtl_library *l) {
    if (!l) return;
    @autoreleasepool {
        NSMutableDictionary *cache = CFBridgingRelease(l->cache);
        for (NSValue *v in cache.allValues) {
            sc_mtl_pipeline *p = v.pointerValue;
            CFBridgingRelease(p->state);
            free(p);
        }
        CFBridgingRelease(l->library);
    }
    pthread_mutex_destroy(&l->mu);
    free(l);
}

sc_mtl_status sc_mtl_library_functions(const sc_mtl_library *l, char *buf, size_t cap) {
    if (!l || !buf || !cap) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "library or buffer is NULL");
    @autoreleasepool {
        id<MTLLibrary> lib = (__bridge id<MTLLibrary>)l->library;
        snprintf(buf, cap, "%s", [lib.functionNames componentsJoinedByString:@"\n"].UTF8String);
    }
    return SC_MTL_OK;
}

static const char *FC_TYPES[] = {"bool", "int", "uint", "float", "short", "ushort"};

sc_mtl_status sc_mtl_pipeline_get(sc_mtl_library *l, const char *function, const sc_mtl_constant *c, int n,
                                  sc_mtl_pipeline **out) {
    if (!l || !function || !out || n < 0 || (n && !c))
        return fail(SC_MTL_ERR_INVALID_ARGUMENT, "library, function, constants or out is invalid");
    /* the name spells out every specialization, in index order */
    int order[256];
    if (n > 256) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "at most 256 function constants");
    for (int i = 0; i < n; i++) order[i] = i;
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && c[order[j]].index < c[order[j - 1]].index; j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    char name[512];
    int len = snprintf(name, sizeof name, "%s[", function);
    for (int k = 0; k < n; k++) {
        const sc_mtl_constant *x = &c[order[k]];
        if ((int)x->type < 0 || x->type > SC_MTL_FC_UINT16)
            return fail(SC_MTL_ERR_INVALID_ARGUMENT, "constant %u has an unknown type", x->index);
        if (k && x->index == c[order[k - 1]].index)
            return fail(SC_MTL_ERR_INVALID_ARGUMENT, "constant %u is given twice", x->index);
        if (x->type == SC_MTL_FC_FLOAT)
            len += snprintf(name + len, sizeof name - len, "%sc%u=%g:%s", k ? "," : "", x->index, x->value.f, FC_TYPES[x->type]);
        else if (x->type == SC_MTL_FC_UINT32)
            len += snprintf(name + len, sizeof name - len, "%sc%u=%u:%s", k ? "," : "", x->index, x->value.u, FC_TYPES[x->type]);
        else
            len += snprintf(name + len, sizeof name - len, "%sc%u=%d:%s", k ? "," : "", x->index, x->value.i, FC_TYPES[x->type]);
        if (len >= (int)sizeof name) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "specialization name too long");
    }
    snprintf(name + len, sizeof name - len, "]");

    sc_mtl_status st = SC_MTL_OK;
    pthread_mutex_lock(&l->mu);
    @autoreleasepool {
        NSMutableDictionary *cache = (__bridge NSMutableDictionary *)l->cache;
        NSValue *hit = cache[@(name)];
        if (hit) {
            *out = hit.pointerValue;
        } else {
            id<MTLLibrary> lib = (__bridge id<MTLLibrary>)l->library;
            MTLFunctionConstantValues *cv = [MTLFunctionConstantValues new];
            for (int k = 0; k < n; k++) {
                const sc_mtl_constant *x = &c[k];
                bool b = x->value.i != 0;
                int16_t s16 = (int16_t)x->value.i;
                uint16_t u16 = (uint16_t)x->value.u;
                switch (x->type) {
                case SC_MTL_FC_BOOL: [cv setConstantValue:&b type:MTLDataTypeBool atIndex:x->index]; break;
                case SC_MTL_FC_INT32: [cv setConstantValue:&x->value.i type:MTLDataTypeInt atIndex:x->index]; break;
                case SC_MTL_FC_UINT32: [cv setConstantValue:&x->value.u type:MTLDataTypeUInt atIndex:x->index]; break;
                case SC_MTL_FC_FLOAT: [cv setConstantValue:&x->value.f type:MTLDataTypeFloat atIndex:x->index]; break;
                case SC_MTL_FC_INT16: [cv setConstantValue:&s16 type:MTLDataTypeShort atIndex:x->index]; break;
                case SC_MTL_FC_UINT16: [cv setConstantValue:&u16 type:MTLDataTypeUShort atIndex:x->index]; break;
                }
            }
            NSError *e = nil;
            id<MTLFunction> fn = [lib newFunctionWithName:@(function) constantValues:cv error:&e];
            id<MTLComputePipelineState> ps = nil;
            if (!fn) {
                st = [lib.functionNames containsObject:@(function)]
                         ? fail(SC_MTL_ERR_COMPILE, "%s: specializing failed: %s", name,
                                e ? e.localizedDescription.UTF8String : "unknown error")
                         : fail(SC_MTL_ERR_NOT_FOUND, "no kernel '%s' in %s", function, l->label);
            } else if (!(ps = [lib.device newComputePipelineStateWithFunction:fn error:&e])) {
                st = fail(SC_MTL_ERR_COMPILE, "%s: pipeline creation failed: %s", name,
                          e ? e.localizedDescription.UTF8String : "unknown error");
            } else {
                sc_mtl_pipeline *p = calloc(1, sizeof *p);
                if (!p) {
                    st = fail(SC_MTL_ERR_NO_MEMORY, "out of memory");
                } else {
                    p->state = (void *)CFBridgingRetain(ps);
                    snprintf(p->name, sizeof p->name, "%s", name);
                    cache[@(name)] = [NSValue valueWithPointer:p];
                    l->created++;
                    *out = p;
                }
            }
        }
    }
    pthread_mutex_unlock(&l->mu);
    return st;
}

#define PSO(p) ((__bridge id<MTLComputePipelineState>)(p)->state)
const char *sc_mtl_pipeline_name(const sc_mtl_pipeline *p) { return p ? p->name : ""; }
int32_t sc_mtl_pipeline_max_threads(const sc_mtl_pipeline *p) {
    return p ? (int32_t)PSO(p).maxTotalThreadsPerThreadgroup : 0;
}
int32_t sc_mtl_pipeline_simd_width(const sc_mtl_pipeline *p) {
    return p ? (int32_t)PSO(p).threadExecutionWidth : 0;
}
int64_t sc_mtl_library_pipelines_created(const sc_mtl_library *l) { return l ? l->created : 0; }

/* ------------------------------------------------------------ command buffers */
struct sc_mtl_cmdbuf {
    sc_mtl_device *dev;
    void *cb;  /* id<MTLCommandBuffer> */
    void *enc; /* id<MTLComputeCommandEncoder>, until commit */
    sc_mtl_pipeline *pipe;
    int64_t tg_mem;
    int committed;
};

#define CB(c) ((__bridge id<MTLCommandBuffer>)(c)->cb)
#define ENC(c) ((__bridge id<MTLComputeCommandEncoder>)(c)->enc)

sc_mtl_status sc_mtl_cmdbuf_create(sc_mtl_device *d, sc_mtl_cmdbuf **out) {
    if (!d || !out) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "device or out is NULL");
    @autoreleasepool {
        id<MTLCommandQueue> q = (__bridge id<MTLCommandQueue>)d->queue;
        id<MTLCommandBuffer> cb = [q commandBuffer];
        /* serial dispatch: passes run in order; barriers order memory */
        id<MTLComputeCommandEncoder> enc = [cb computeCommandEncoderWithDispatchType:MTLDispatchTypeSerial];
        if (!cb || !enc) return fail(SC_MTL_ERR_UNAVAILABLE, "cannot create a command buffer/encoder");
        sc_mtl_cmdbuf *c = calloc(1, sizeof *c);
        if (!c) return fail(SC_MTL_ERR_NO_MEMORY, "out of memory");
        c->dev = d;
        c->cb = (void *)CFBridgingRetain(cb);
        c->enc = (void *)CFBridgingRetain(enc);
        *out = c;
    }
    return SC_MTL_OK;
}

void sc_mtl_cmdbuf_free(sc_mtl_cmdbuf *c) {
    if (!c) return;
    if (c->enc) {
        [ENC(c) endEncoding];
        CFBridgingRelease(c->enc);
    }
    CFBridgingRelease(c->cb);
    free(c);
}

#define OPEN(c)                                                                                    \
    do {                                                                                           \
        if (!(c)) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "command buffer is NULL");              \
        if ((c)->committed) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "command buffer is committed"); \
    } while (0)

sc_mtl_status sc_mtl_set_pipeline(sc_mtl_cmdbuf *c, sc_mtl_pipeline *p) {
    OPEN(c);
    if (!p) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "pipeline is NULL");
    [ENC(c) setComputePipelineState:PSO(p)];
    c->pipe = p;
    c->tg_mem = 0;
    return SC_MTL_OK;
}

sc_mtl_status sc_mtl_set_buffer(sc_mtl_cmdbuf *c, uint32_t index, sc_mtl_buffer *b, size_t offset) {
    OPEN(c);
    if (!b || index > 30) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "buffer is NULL or index %u is over 30", index);
    if (offset > b->length) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "offset %zu is past the buffer", offset);
    [ENC(c) setBuffer:(__bridge id<MTLBuffer>)b->buffer offset:b->offset + offset atIndex:index];
    return SC_MTL_OK;
}

sc_mtl_status sc_mtl_set_bytes(sc_mtl_cmdbuf *c, uint32_t index, const void *data, size_t length) {
    OPEN(c);
    if (!data || !length || length > 4096 || index > 30)
        return fail(SC_MTL_ERR_INVALID_ARGUMENT, "set_bytes takes 1..4096 bytes at index <= 30");
    [ENC(c) setBytes:data length:length atIndex:index];
    return SC_MTL_OK;
}

sc_mtl_status sc_mtl_set_threadgroup_memory(sc_mtl_cmdbuf *c, uint32_t index, size_t length) {
    OPEN(c);
    const size_t lim = (size_t)DEV(c->dev).maxThreadgroupMemoryLength;
    if (length > lim)
        return fail(SC_MTL_ERR_LIMIT, "threadgroup memory %zu bytes is over the device limit of %zu", length, lim);
    const size_t len = (length + 15) / 16 * 16; /* Metal requires multiples of 16 */
    [ENC(c) setThreadgroupMemoryLength:len atIndex:index];
    return SC_MTL_OK;
}

sc_mtl_status sc_mtl_dispatch(sc_mtl_cmdbuf *c, const uint32_t groups[3], const uint32_t threads[3]) {
    OPEN(c);
    if (!c->pipe) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "no pipeline set before dispatch");
    if (!groups || !threads) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "grid or threadgroup size is NULL");
    const uint64_t n = (uint64_t)threads[0] * threads[1] * threads[2];
    const NSUInteger max = PSO(c->pipe).maxTotalThreadsPerThreadgroup;
    if (n == 0) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "threadgroup size has a zero dimension");
    if (n > max)
        return fail(SC_MTL_ERR_LIMIT, "%s: threadgroup of %llu threads is over the pipeline's maximum of %lu",
                    c->pipe->name, (unsigned long long)n, (unsigned long)max);
    [ENC(c) dispatchThreadgroups:MTLSizeMake(groups[0], groups[1], groups[2])
           threadsPerThreadgroup:MTLSizeMake(threads[0], threads[1], threads[2])];
    return SC_MTL_OK;
}

sc_mtl_status sc_mtl_barrier(sc_mtl_cmdbuf *c) {
    OPEN(c);
    [ENC(c) memoryBarrierWithScope:MTLBarrierScopeBuffers];
    return SC_MTL_OK;
}

sc_mtl_status sc_mtl_commit(sc_mtl_cmdbuf *c) {
    OPEN(c);
    [ENC(c) endEncoding];
    CFBridgingRelease(c->enc);
    c->enc = NULL;
    [CB(c) commit];
    c->committed = 1;
    return SC_MTL_OK;
}

sc_mtl_status sc_mtl_wait(sc_mtl_cmdbuf *c) {
    if (!c) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "command buffer is NULL");
    if (!c->committed) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "command buffer was not committed");
    @autoreleasepool {
        [CB(c) waitUntilCompleted];
        if (CB(c).status == MTLCommandBufferStatusError)
            return fail(SC_MTL_ERR_EXECUTION, "command buffer failed: %s",
                        CB(c).error ? CB(c).error.localizedDescription.UTF8String : "unknown error");
    }
    return SC_MTL_OK;
}

sc_mtl_status sc_mtl_gpu_time(const sc_mtl_cmdbuf *c, double *start, double *end) {
    if (!c || !start || !end) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "command buffer or out is NULL");
    if (!c->committed) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "command buffer was not committed");
    *start = CB(c).GPUStartTime;
    *end = CB(c).GPUEndTime;
    return SC_MTL_OK;
}
