/* shim_host.cpp -- sagecore_metal.h implemented by host emulation.
 *
 * A library is a .metal source turned into C++ (emu_gen.cpp), compiled with
 * the machine's C++ compiler against metal_prelude.h into a shared module,
 * cached by the hash of its preprocessed text, and dlopened. A dispatch runs
 * every threadgroup's threads as cooperative fibers (ucontext) on one host
 * thread, threadgroups spread over host threads. Barriers and SIMD-group
 * collectives are rendezvous of those fibers, so their semantics are real:
 * a thread that misses one, or reaches a different one, is reported with the
 * file:line of each, and a missing barrier shows up as a wrong answer or as
 * a race (the race check runs each dispatch in two thread orders).
 *
 * Faults: device buffers the shim allocates end at a guard page (and start
 * after one), threadgroup memory too; an access outside them raises SIGSEGV,
 * which the dispatch turns into an error naming the thread and, through
 * addr2line, the kernel's source line. Wrapped user memory has no guard.
 */
#include <dlfcn.h>
#include <signal.h>
#include <setjmp.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "../sagecore_metal.h"
#include "emu_abi.h"
#include "emu_gen.h"

/* ------------------------------------------------------------ errors */
static thread_local std::string t_error;
static thread_local std::string t_compile_log;

static sc_mtl_status fail(sc_mtl_status st, const char *fmt, ...) {
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    t_error = buf;
    return st;
}
static sc_mtl_status fail_str(sc_mtl_status st, const std::string &m) {
    t_error = m;
    return st;
}

extern "C" const char *sc_mtl_last_error(void) { return t_error.c_str(); }
extern "C" const char *sc_mtl_last_compile_log(void) { return t_compile_log.c_str(); }
extern "C" const char *sc_mtl_backend_name(void) { return "host-emulation"; }
extern "C" int sc_mtl_abi_version(void) { return SC_MTL_ABI_VERSION; }

/* ------------------------------------------------------------ configuration */
static std::mutex g_cfg_mu;
static std::string g_emu_dir, g_cache_dir, g_cxx;

static std::string env_or(const char *k, const std::string &d) {
    const char *v = getenv(k);
    return v && *v ? std::string(v) : d;
}

extern "C" sc_mtl_status sc_mtl_emu_configure(const char *key, const char *value) {
    if (!key || !value) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "configure: key and value are required");
    std::lock_guard<std::mutex> g(g_cfg_mu);
    std::string k = key;
    if (k == "emu_dir") g_emu_dir = value;
    else if (k == "cache_dir") g_cache_dir = value;
    else if (k == "cxx") g_cxx = value;
    else return fail(SC_MTL_ERR_INVALID_ARGUMENT, "configure: unknown key '%s' (emu_dir, cache_dir, cxx)", key);
    return SC_MTL_OK;
}

/* ------------------------------------------------------------ device */
struct sc_mtl_device {
    int host_threads = 0;
};

static const int64_t MAX_TG_MEMORY = 32768;
static const int32_t MAX_THREADS = 1024;

extern "C" sc_mtl_status sc_mtl_device_create(sc_mtl_device **out) {
    if (!out) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "out is NULL");
    *out = new sc_mtl_device();
    return SC_MTL_OK;
}
extern "C" void sc_mtl_device_free(sc_mtl_device *d) { delete d; }

extern "C" sc_mtl_status sc_mtl_device_info_get(const sc_mtl_device *d, sc_mtl_device_info *o) {
    if (!d || !o) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "device or out is NULL");
    memset(o, 0, sizeof *o);
#if defined(__x86_64__)
    snprintf(o->name, sizeof o->name, "host emulation (x86_64)");
#elif defined(__aarch64__)
    snprintf(o->name, sizeof o->name, "host emulation (aarch64)");
#else
    snprintf(o->name, sizeof o->name, "host emulation");
#endif
    o->gpu_family = 0;
    o->max_threads_per_threadgroup = MAX_THREADS;
    o->max_threadgroup_memory = MAX_TG_MEMORY;
    o->recommended_working_set = 0;
    o->unified_memory = 1;
    o->simdgroup_matrix = 1;
    o->bfloat = 0;
    o->simd_width = SC_EMU_SIMD_WIDTH;
    o->emulated = 1;
    return SC_MTL_OK;
}

extern "C" sc_mtl_status sc_mtl_set_host_threads(sc_mtl_device *d, int n) {
    if (!d || n < 0) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "host threads must be >= 0");
    d->host_threads = n;
    return SC_MTL_OK;
}

/* ------------------------------------------------------------ guarded memory */
static size_t page_size() {
    static size_t p = (size_t)sysconf(_SC_PAGESIZE);
    return p;
}

/* `length` bytes that end at a guard page (16-byte aligned start) and start
 * after one. */
struct Guarded {
    void *base = nullptr;
    size_t total = 0;
    char *data = nullptr;
    /* 64 KB of guard on each side (address space only): an index a few
     * thousand elements past the end still lands in it */
    static const size_t GUARD = 64 * 1024;
    bool alloc(size_t length) {
        const size_t pg = page_size();
        const size_t guard = (GUARD + pg - 1) / pg * pg;
        size_t body = (length + pg - 1) / pg * pg;
        if (body == 0) body = pg;
        total = body + 2 * guard;
        base = mmap(nullptr, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (base == MAP_FAILED) { base = nullptr; return false; }
        if (mprotect((char *)base + guard, body, PROT_READ | PROT_WRITE) != 0) {
            munmap(base, total);
            base = nullptr;
            return false;
        }
        size_t rounded = (length + 15) / 16 * 16;
        data = (char *)base + guard + body - rounded;
        return true;
    }
    void release() {
        if (base) munmap(base, total);
        base = nullptr;
    }
};

struct sc_mtl_buffer {
    Guarded g;
    char *data = nullptr;
    size_t length = 0;
    bool wrapped = false;
};

extern "C" sc_mtl_status sc_mtl_buffer_alloc(sc_mtl_device *d, size_t length, sc_mtl_buffer **out) {
    if (!d || !out) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "device or out is NULL");
    auto *b = new sc_mtl_buffer();
    if (!b->g.alloc(length)) {
        delete b;
        return fail(SC_MTL_ERR_NO_MEMORY, "cannot map %zu bytes", length);
    }
    b->data = b->g.data;
    b->length = length;
    *out = b;
    return SC_MTL_OK;
}

extern "C" sc_mtl_status sc_mtl_buffer_wrap(sc_mtl_device *d, void *ptr, size_t length, sc_mtl_buffer **out,
                                            int *copied) {
    if (!d || !out || (!ptr && length)) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "device, ptr or out is NULL");
    auto *b = new sc_mtl_buffer();
    b->data = (char *)ptr;
    b->length = length;
    b->wrapped = true;
    if (copied) *copied = 0; /* host memory is the device's memory */
    *out = b;
    return SC_MTL_OK;
}

extern "C" void sc_mtl_buffer_free(sc_mtl_buffer *b) {
    if (!b) return;
    b->g.release();
    delete b;
}
extern "C" void *sc_mtl_buffer_contents(const sc_mtl_buffer *b) { return b ? b->data : nullptr; }
extern "C" size_t sc_mtl_buffer_length(const sc_mtl_buffer *b) { return b ? b->length : 0; }
extern "C" size_t sc_mtl_buffer_offset(const sc_mtl_buffer *b) {
    return b && b->wrapped ? (size_t)((uintptr_t)b->data % page_size()) : 0;
}

/* ------------------------------------------------------------ libraries */
struct sc_mtl_pipeline {
    std::string name;
    const sc_emu_kernel *kernel = nullptr;
    std::vector<sc_emu_fc_value> constants;
    sc_mtl_library *library = nullptr;
};

struct sc_mtl_library {
    void *handle = nullptr;
    std::string path, label;
    const sc_emu_kernel *kernels = nullptr;
    std::mutex mu;
    std::map<std::string, std::unique_ptr<sc_mtl_pipeline>> pipelines;
    std::atomic<int64_t> created{0};
};

static uint64_t fnv1a(const std::string &s, uint64_t h = 1469598103934665603ull) {
    for (unsigned char c : s) {
        h ^= c;
        h *= 1099511628211ull;
    }
    return h;
}

static bool write_file(const std::string &p, const std::string &s) {
    std::ofstream f(p, std::ios::binary);
    f << s;
    return bool(f);
}

static int run(const std::string &cmd, std::string *log) {
    std::string full = cmd + " 2>&1";
    FILE *p = popen(full.c_str(), "r");
    if (!p) return -1;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) log->append(buf, n);
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static std::string shell_quote(const std::string &s) {
    std::string o = "'";
    for (char c : s) {
        if (c == '\'') o += "'\\''";
        else o += c;
    }
    return o + "'";
}

static void mkdirs(const std::string &p) {
    std::string cur;
    for (size_t i = 0; i < p.size(); i++) {
        cur += p[i];
        if (p[i] == '/' && i) mkdir(cur.c_str(), 0755);
    }
    mkdir(p.c_str(), 0755);
}

static std::map<std::string, std::string> parse_options(const char *options) {
    std::map<std::string, std::string> o;
    if (!options) return o;
    std::string s = options;
    size_t i = 0;
    while (i < s.size()) {
        size_t e = s.find(';', i);
        if (e == std::string::npos) e = s.size();
        std::string kv = s.substr(i, e - i);
        size_t eq = kv.find('=');
        if (!kv.empty()) o[kv.substr(0, eq)] = eq == std::string::npos ? "1" : kv.substr(eq + 1);
        i = e + 1;
    }
    return o;
}

static sc_mtl_status load_module(const std::string &path, const std::string &label, sc_mtl_library **out) {
    void *h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) return fail(SC_MTL_ERR_COMPILE, "cannot load emulation module %s: %s", path.c_str(), dlerror());
    auto init = (sc_emu_module_init_fn)dlsym(h, "sc_emu_module_init");
    auto kernels = (const sc_emu_kernel *)dlsym(h, "sc_emu_kernels");
    if (!init || !kernels) {
        dlclose(h);
        return fail(SC_MTL_ERR_COMPILE, "%s is not a host-emulation module (no sc_emu_kernels)", path.c_str());
    }
    extern const sc_emu_api g_api;
    if (init(&g_api) != SC_EMU_ABI_VERSION) {
        dlclose(h);
        return fail(SC_MTL_ERR_COMPILE, "%s was built for another emulation ABI", path.c_str());
    }
    auto *l = new sc_mtl_library();
    l->handle = h;
    l->path = path;
    l->label = label;
    l->kernels = kernels;
    *out = l;
    return SC_MTL_OK;
}

extern "C" sc_mtl_status sc_mtl_library_from_source(sc_mtl_device *d, const char *source, const char *options,
                                                    sc_mtl_library **out) {
    if (!d || !source || !out) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "device, source or out is NULL");
    auto opt = parse_options(options);
    std::string emu_dir, cache_dir, cxx;
    {
        std::lock_guard<std::mutex> g(g_cfg_mu);
        emu_dir = env_or("SAGECORE_METAL_EMU_DIR", g_emu_dir);
        cache_dir = env_or("SAGECORE_METAL_EMU_CACHE", g_cache_dir);
        cxx = env_or("SAGECORE_METAL_EMU_CXX", g_cxx.empty() ? std::string("c++") : g_cxx);
    }
    if (emu_dir.empty())
        return fail(SC_MTL_ERR_UNAVAILABLE, "host emulation: the prelude directory is not configured "
                                            "(sc_mtl_emu_configure(\"emu_dir\", ...) or SAGECORE_METAL_EMU_DIR)");
    if (cache_dir.empty()) cache_dir = "/tmp/sagecore-metal-emu";
    std::string label = opt.count("name") ? opt["name"] : std::string("source.metal");
    std::string gen, err;
    t_compile_log.clear();
    if (!sc_emu_generate(source, label, &gen, &err)) {
        t_compile_log = err;
        return fail_str(SC_MTL_ERR_COMPILE, "compiling " + label + " for the host emulation: " + err);
    }
    std::string flags = "-std=c++17 -O2 -g -fPIC -shared -fsingle-precision-constant -fsigned-char "
                        "-fno-strict-aliasing -Wno-literal-suffix -Wno-unused-variable -Wno-unused-parameter "
                        "-Wno-attributes";
    if (opt.count("fast_math") && opt["fast_math"] == "1") flags += " -ffast-math";
    std::string inc = " -include " + shell_quote(emu_dir + "/metal_prelude.h") + " -I" + shell_quote(emu_dir) +
                      " -I" + shell_quote(emu_dir + "/include");
    if (opt.count("include")) inc += " -I" + shell_quote(opt["include"]);
    mkdirs(cache_dir);
    /* key: the preprocessed text (catches edits in included headers), the
     * compiler and the flags */
    char tmpl[4096];
    snprintf(tmpl, sizeof tmpl, "%s/src-%d-%lx.cpp", cache_dir.c_str(), (int)getpid(),
             (unsigned long)fnv1a(gen + std::to_string((uintptr_t)&gen)));
    std::string srcpath = tmpl;
    if (!write_file(srcpath, gen)) return fail(SC_MTL_ERR_COMPILE, "cannot write %s", srcpath.c_str());
    std::string pre, log;
    int rc = run(cxx + " -E -P -std=c++17" + inc + " -x c++ " + shell_quote(srcpath), &pre);
    if (rc != 0) {
        unlink(srcpath.c_str());
        t_compile_log = pre;
        return fail_str(SC_MTL_ERR_COMPILE, "preprocessing " + label + " failed (see the compile log)");
    }
    std::string vlog;
    run(cxx + " --version", &vlog);
    uint64_t key = fnv1a(pre, fnv1a(flags + cxx + vlog));
    char name[64];
    snprintf(name, sizeof name, "/%016llx.so", (unsigned long long)key);
    std::string sopath = cache_dir + name;
    struct stat st;
    if (stat(sopath.c_str(), &st) != 0) {
        std::string tmp = sopath + "." + std::to_string(getpid()) + ".tmp";
        rc = run(cxx + " " + flags + inc + " -x c++ " + shell_quote(srcpath) + " -o " + shell_quote(tmp), &log);
        if (rc != 0) {
            unlink(srcpath.c_str());
            unlink(tmp.c_str());
            t_compile_log = log;
            return fail_str(SC_MTL_ERR_COMPILE, "compiling " + label + " for the host emulation failed:\n" +
                                                    log.substr(0, 1500));
        }
        rename(tmp.c_str(), sopath.c_str()); /* atomic: concurrent builders agree */
    }
    unlink(srcpath.c_str());
    return load_module(sopath, label, out);
}

extern "C" sc_mtl_status sc_mtl_library_from_file(sc_mtl_device *d, const char *path, sc_mtl_library **out) {
    if (!d || !path || !out) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "device, path or out is NULL");
    std::string p = path;
    if (p.size() > 9 && p.substr(p.size() - 9) == ".metallib")
        return fail(SC_MTL_ERR_UNAVAILABLE, "%s: a .metallib needs a Metal device; the host emulation loads "
                                            "modules built from source", path);
    return load_module(p, p, out);
}

extern "C" void sc_mtl_library_free(sc_mtl_library *l) {
    if (!l) return;
    /* modules stay mapped: a pipeline handed out earlier may still run */
    delete l;
}

extern "C" sc_mtl_status sc_mtl_library_functions(const sc_mtl_library *l, char *buf, size_t cap) {
    if (!l || !buf || !cap) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "library or buffer is NULL");
    std::string s;
    for (const sc_emu_kernel *k = l->kernels; k->name; k++) s += std::string(s.empty() ? "" : "\n") + k->name;
    snprintf(buf, cap, "%s", s.c_str());
    return SC_MTL_OK;
}

static const char *FC_TYPES[] = {"bool", "int", "uint", "float", "short", "ushort"};

extern "C" sc_mtl_status sc_mtl_pipeline_get(sc_mtl_library *l, const char *function, const sc_mtl_constant *c,
                                             int n, sc_mtl_pipeline **out) {
    if (!l || !function || !out || n < 0 || (n && !c))
        return fail(SC_MTL_ERR_INVALID_ARGUMENT, "library, function, constants or out is invalid");
    std::vector<sc_mtl_constant> cs(c, c + n);
    std::sort(cs.begin(), cs.end(), [](const sc_mtl_constant &a, const sc_mtl_constant &b) { return a.index < b.index; });
    std::string name = function;
    name += "[";
    for (size_t i = 0; i < cs.size(); i++) {
        if ((int)cs[i].type < 0 || cs[i].type > SC_MTL_FC_UINT16)
            return fail(SC_MTL_ERR_INVALID_ARGUMENT, "constant %u has an unknown type", cs[i].index);
        if (i && cs[i].index == cs[i - 1].index)
            return fail(SC_MTL_ERR_INVALID_ARGUMENT, "constant %u is given twice", cs[i].index);
        char b[64];
        if (cs[i].type == SC_MTL_FC_FLOAT) snprintf(b, sizeof b, "c%u=%g", cs[i].index, cs[i].value.f);
        else if (cs[i].type == SC_MTL_FC_UINT32) snprintf(b, sizeof b, "c%u=%u", cs[i].index, cs[i].value.u);
        else snprintf(b, sizeof b, "c%u=%d", cs[i].index, cs[i].value.i);
        name += (i ? "," : "") + std::string(b) + ":" + FC_TYPES[cs[i].type];
    }
    name += "]";
    std::lock_guard<std::mutex> g(l->mu);
    auto it = l->pipelines.find(name);
    if (it != l->pipelines.end()) {
        *out = it->second.get();
        return SC_MTL_OK;
    }
    const sc_emu_kernel *k = l->kernels;
    for (; k->name; k++)
        if (strcmp(k->name, function) == 0) break;
    if (!k->name) {
        std::string names;
        for (const sc_emu_kernel *q = l->kernels; q->name; q++) names += std::string(names.empty() ? "" : ", ") + q->name;
        return fail(SC_MTL_ERR_NOT_FOUND, "no kernel '%s' in %s (it has: %s)", function, l->label.c_str(),
                    names.c_str());
    }
    auto p = std::make_unique<sc_mtl_pipeline>();
    p->name = name;
    p->kernel = k;
    p->library = l;
    for (auto &x : cs) {
        sc_emu_fc_value v;
        v.index = x.index;
        v.type = x.type;
        v.value.u = x.value.u;
        p->constants.push_back(v);
    }
    *out = p.get();
    l->pipelines[name] = std::move(p);
    l->created++;
    return SC_MTL_OK;
}

extern "C" const char *sc_mtl_pipeline_name(const sc_mtl_pipeline *p) { return p ? p->name.c_str() : ""; }
extern "C" int32_t sc_mtl_pipeline_max_threads(const sc_mtl_pipeline *p) { return p ? MAX_THREADS : 0; }
extern "C" int32_t sc_mtl_pipeline_simd_width(const sc_mtl_pipeline *p) { return p ? SC_EMU_SIMD_WIDTH : 0; }
extern "C" int64_t sc_mtl_library_pipelines_created(const sc_mtl_library *l) { return l ? l->created.load() : 0; }

/* ------------------------------------------------------------ context switch */
/* x86-64: a hand-written switch of the callee-saved registers (plus MXCSR
 * and the x87 control word), ~20x faster than swapcontext, which makes a
 * sigprocmask system call per switch. Elsewhere: ucontext (correct, slower). */
#if defined(__x86_64__) && !defined(SC_EMU_UCONTEXT)
#define SC_EMU_ASM_SWITCH 1
extern "C" void sc_emu_switch(void **save_sp, void *new_sp);
__asm__(".text\n"
        ".globl sc_emu_switch\n"
        ".type sc_emu_switch,@function\n"
        "sc_emu_switch:\n"
        "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
        "  subq $8, %rsp\n  stmxcsr (%rsp)\n  fnstcw 4(%rsp)\n"
        "  movq %rsp, (%rdi)\n  movq %rsi, %rsp\n"
        "  ldmxcsr (%rsp)\n  fldcw 4(%rsp)\n  addq $8, %rsp\n"
        "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
        "  ret\n"
        ".size sc_emu_switch, .-sc_emu_switch\n");
#endif

/* ------------------------------------------------------------ the fiber runtime */
namespace {

enum { F_RUNNABLE, F_WAIT_TG, F_WAIT_SIMD, F_DONE };

struct Fiber {
#ifdef SC_EMU_ASM_SWITCH
    void *sp = nullptr;
#else
    ucontext_t ctx;
#endif
    sc_emu_thread t;
    int state = F_RUNNABLE;
    const char *wfile = nullptr; /* where it waits */
    int wline = 0;
    void *all = nullptr; /* simd exchange destination */
    uint32_t *active = nullptr;
    char *stack = nullptr;
};

struct SimdState {
    int arrived = 0;
    const char *file = nullptr;
    int line = 0;
    size_t size = 0;
    uint32_t mask = 0;
    unsigned char buf[SC_EMU_SIMD_WIDTH * 256];
};

struct Group; /* one threadgroup in flight on a host thread */

struct Worker {
    std::vector<Fiber> fibers;
    std::vector<char *> stacks;
    std::vector<SimdState> simd;
    std::vector<Guarded> tgmem;
#ifdef SC_EMU_ASM_SWITCH
    void *sched_sp = nullptr;
#else
    ucontext_t sched;
#endif
    sigjmp_buf jb;
    Fiber *cur = nullptr;
    const sc_emu_launch *launch = nullptr;
    const sc_emu_kernel *kernel = nullptr;
    std::string error;
    int tg_arrived = 0;
    const char *tg_file = nullptr;
    int tg_line = 0;
    int n_threads = 0;
    bool in_fiber = false;
    /* fault info */
    void *fault_addr = nullptr;
    void *fault_pc = nullptr;
    ~Worker() {
        for (char *s : stacks) munmap(s - page_size(), STACK + page_size());
        for (auto &g : tgmem) g.release();
    }
    static const size_t STACK = 256 * 1024;
};

thread_local Worker *t_worker = nullptr;

/* fiber -> scheduler, and scheduler -> fiber */
inline void to_sched(Worker *w) {
#ifdef SC_EMU_ASM_SWITCH
    sc_emu_switch(&w->cur->sp, w->sched_sp);
#else
    swapcontext(&w->cur->ctx, &w->sched);
#endif
}
inline void to_fiber(Worker *w, Fiber *f) {
#ifdef SC_EMU_ASM_SWITCH
    sc_emu_switch(&w->sched_sp, f->sp);
#else
    swapcontext(&w->sched, &f->ctx);
#endif
}

std::string thread_name(const sc_emu_thread &t) {
    char b[160];
    snprintf(b, sizeof b, "thread (%u,%u,%u) [index %u, simdgroup %u lane %u] of threadgroup (%u,%u,%u)",
             t.tpitg[0], t.tpitg[1], t.tpitg[2], t.index, t.simdgroup, t.lane, t.tgpig[0], t.tgpig[1], t.tgpig[2]);
    return b;
}

std::string site(const char *file, int line) {
    const char *base = file ? strrchr(file, '/') : nullptr;
    return std::string(base ? base + 1 : (file ? file : "?")) + ":" + std::to_string(line);
}

[[noreturn]] void fiber_abort(Worker *w) {
    w->cur->state = F_DONE;
    to_sched(w);
    abort(); /* never resumed */
}

void fiber_fail(const std::string &m) {
    Worker *w = t_worker;
    if (w->error.empty()) w->error = m;
    fiber_abort(w);
}

void wait_here(Worker *w) { to_sched(w); }

/* API for modules */
const sc_emu_thread *api_self() { return &t_worker->cur->t; }
const sc_emu_launch *api_launch() { return t_worker->launch; }

void release_tg(Worker *w) {
    w->tg_arrived = 0;
    for (auto &f : w->fibers)
        if (f.state == F_WAIT_TG) f.state = F_RUNNABLE;
}

void api_tg_barrier(const char *file, int line) {
    Worker *w = t_worker;
    Fiber *f = w->cur;
    if (w->tg_arrived == 0) {
        w->tg_file = file;
        w->tg_line = line;
    } else if (w->tg_line != line || strcmp(w->tg_file, file) != 0) {
        Fiber *other = nullptr;
        for (auto &g : w->fibers)
            if (g.state == F_WAIT_TG) { other = &g; break; }
        fiber_fail("threadgroup_barrier divergence in " + std::string(w->kernel->name) + ": " + thread_name(f->t) +
                   " is at " + site(file, line) + " while " + (other ? thread_name(other->t) : "another thread") +
                   " waits at " + site(w->tg_file, w->tg_line));
    }
    w->tg_arrived++;
    if (w->tg_arrived == w->n_threads) {
        /* the last to arrive yields too: who runs first after a barrier is
         * the scheduler's order, which the race check reverses */
        release_tg(w);
        wait_here(w);
        return;
    }
    f->state = F_WAIT_TG;
    f->wfile = file;
    f->wline = line;
    wait_here(w);
}

/* lanes that exist in simdgroup sg (the last one of a threadgroup may be
 * partial); every one of them must reach each collective */
int simd_lanes(Worker *w, uint32_t sg) {
    const uint32_t first = sg * SC_EMU_SIMD_WIDTH;
    const uint32_t n = (uint32_t)w->fibers.size() - first;
    return (int)(n < SC_EMU_SIMD_WIDTH ? n : SC_EMU_SIMD_WIDTH);
}

/* complete the simdgroup's pending collective if every live lane is there */
void simd_try_complete(Worker *w, uint32_t sg) {
    SimdState &s = w->simd[sg];
    if (!s.arrived) return;
    if (s.arrived < simd_lanes(w, sg)) return;
    const uint32_t first = sg * SC_EMU_SIMD_WIDTH;
    for (uint32_t l = 0; l < SC_EMU_SIMD_WIDTH && first + l < w->fibers.size(); l++) {
        Fiber &f = w->fibers[first + l];
        if (!((s.mask >> l) & 1u)) continue;
        if (f.all) memcpy(f.all, s.buf, SC_EMU_SIMD_WIDTH * s.size);
        if (f.active) *f.active = s.mask;
        if (f.state == F_WAIT_SIMD) f.state = F_RUNNABLE;
    }
    s.arrived = 0;
    s.mask = 0;
}

void simd_arrive(const void *value, size_t size, void *all, uint32_t *active, const char *file, int line) {
    Worker *w = t_worker;
    Fiber *f = w->cur;
    const uint32_t sg = f->t.simdgroup;
    SimdState &s = w->simd[sg];
    if (size > 256) fiber_fail("a SIMD-group collective of more than 256 bytes per lane");
    if (s.arrived == 0) {
        s.file = file;
        s.line = line;
        s.size = size;
        if (all) memset(s.buf, 0, sizeof s.buf);
    } else if (s.line != line || strcmp(s.file, file) != 0 || s.size != size) {
        fiber_fail("SIMD-group divergence in " + std::string(w->kernel->name) + ": " + thread_name(f->t) + " is at " +
                   site(file, line) + " while other lanes of simdgroup " + std::to_string(sg) + " wait at " +
                   site(s.file, s.line));
    }
    if (size) memcpy(s.buf + f->t.lane * size, value, size);
    s.mask |= 1u << f->t.lane;
    s.arrived++;
    f->all = all;
    f->active = active;
    f->wfile = file;
    f->wline = line;
    f->state = F_WAIT_SIMD;
    simd_try_complete(w, sg);
    wait_here(w); /* completed or not, let the scheduler's order decide who runs next */
    f->all = nullptr;
    f->active = nullptr;
}

void api_simd_barrier(const char *file, int line) { simd_arrive(nullptr, 0, nullptr, nullptr, file, line); }

int api_fc(uint32_t index, int type, void *out) {
    const sc_emu_launch *L = t_worker->launch;
    for (int i = 0; i < L->n_constants; i++)
        if (L->constants[i].index == index) {
            if (L->constants[i].type != type && !(type <= 2 && L->constants[i].type <= 2))
                fiber_fail("function constant " + std::to_string(index) + " is declared " + FC_TYPES[type] +
                           " but the pipeline sets it as " + FC_TYPES[L->constants[i].type]);
            memcpy(out, &L->constants[i].value, 4);
            return 1;
        }
    fiber_fail(std::string("function constant ") + std::to_string(index) + " used by " + t_worker->kernel->name +
               " is not set in the pipeline");
    return 0;
}

void api_fail(const char *m, const char *file, int line) {
    fiber_fail(std::string(m) + " at " + site(file, line) + " (" + thread_name(t_worker->cur->t) + ")");
}

/* A fiber's first and last frame: run the kernel, then hand back for good.
 * A returned thread never completes a barrier or collective: the others
 * then deadlock, which the scheduler reports. */
void fiber_main() {
    Worker *w = t_worker;
    w->kernel->thunk();
    w->cur->state = F_DONE;
    to_sched(w);
    abort(); /* never resumed */
}

struct sigaction g_old_segv, g_old_bus;
std::once_flag g_sig_once;

void on_fault(int sig, siginfo_t *si, void *uc) {
    Worker *w = t_worker;
    if (w && w->in_fiber) {
        w->fault_addr = si->si_addr;
#if defined(__x86_64__)
        w->fault_pc = (void *)((ucontext_t *)uc)->uc_mcontext.gregs[REG_RIP];
#elif defined(__aarch64__)
        w->fault_pc = (void *)((ucontext_t *)uc)->uc_mcontext.pc;
#endif
        w->in_fiber = false;
        siglongjmp(w->jb, 1);
    }
    struct sigaction *old = sig == SIGSEGV ? &g_old_segv : &g_old_bus;
    sigaction(sig, old, nullptr);
    raise(sig);
}

void install_fault_handler() {
    std::call_once(g_sig_once, [] {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &g_old_segv);
        sigaction(SIGBUS, &sa, &g_old_bus);
    });
}

std::string source_line(void *pc) {
    Dl_info info;
    if (!pc || !dladdr(pc, &info) || !info.dli_fname) return "an unknown location";
    char off[32];
    snprintf(off, sizeof off, "0x%lx", (unsigned long)((char *)pc - (char *)info.dli_fbase));
    std::string out;
    if (run("addr2line -e " + shell_quote(info.dli_fname) + " " + off, &out) == 0 && out.find("??") != 0) {
        while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
        return out;
    }
    return std::string(info.dli_fname) + "+" + off;
}

}  // namespace

extern const sc_emu_api g_api;
const sc_emu_api g_api = {
    SC_EMU_ABI_VERSION, api_self, api_launch, api_tg_barrier, api_simd_barrier, simd_arrive, api_fc, api_fail,
};

namespace {

struct Dispatch {
    const sc_mtl_pipeline *pipe;
    sc_emu_launch launch;
    size_t tg_len[SC_EMU_MAX_BINDINGS];
    uint32_t grid[3], tg[3];
};

/* Run one threadgroup on this host thread; "" on success. */
std::string run_group(Worker *w, const Dispatch &d, const uint32_t gid[3], bool reverse) {
    const uint32_t n = d.tg[0] * d.tg[1] * d.tg[2];
    const uint32_t nsg = (n + SC_EMU_SIMD_WIDTH - 1) / SC_EMU_SIMD_WIDTH;
    w->fibers.assign(n, Fiber());
    w->simd.resize(nsg);
    for (auto &s : w->simd) s.arrived = 0, s.mask = 0;
    while (w->stacks.size() < n) {
        const size_t pg = page_size();
        char *m = (char *)mmap(nullptr, Worker::STACK + pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) return "out of memory for fiber stacks";
        mprotect(m, pg, PROT_NONE); /* stack overflow faults */
        w->stacks.push_back(m + pg);
    }
    /* threadgroup memory: fresh garbage each group, the same in both orders */
    sc_emu_launch L = d.launch;
    if (w->tgmem.size() < SC_EMU_MAX_BINDINGS) w->tgmem.resize(SC_EMU_MAX_BINDINGS);
    for (int i = 0; i < SC_EMU_MAX_BINDINGS; i++) {
        if (!d.tg_len[i]) continue;
        w->tgmem[i].release();
        if (!w->tgmem[i].alloc(d.tg_len[i])) return "out of memory for threadgroup memory";
        memset(w->tgmem[i].data, 0xCD, d.tg_len[i]);
        L.tgmem[i].ptr = w->tgmem[i].data;
        L.tgmem[i].length = d.tg_len[i];
        L.tgmem[i].bound = 1;
    }
    w->launch = &L;
    w->kernel = d.pipe->kernel;
    w->error.clear();
    w->tg_arrived = 0;
    w->n_threads = (int)n;
    for (uint32_t i = 0; i < n; i++) {
        Fiber &f = w->fibers[i];
        f.t.tpitg[0] = i % d.tg[0];
        f.t.tpitg[1] = (i / d.tg[0]) % d.tg[1];
        f.t.tpitg[2] = i / (d.tg[0] * d.tg[1]);
        for (int k = 0; k < 3; k++) {
            f.t.tgpig[k] = gid[k];
            f.t.ntg[k] = d.tg[k];
            f.t.ngrid[k] = d.grid[k];
        }
        f.t.index = i;
        f.t.lane = i % SC_EMU_SIMD_WIDTH;
        f.t.simdgroup = i / SC_EMU_SIMD_WIDTH;
        f.t.n_simdgroups = nsg;
        f.stack = w->stacks[i];
#ifdef SC_EMU_ASM_SWITCH
        /* the frame sc_emu_switch pops: control words, six registers, the
         * return address (fiber_main, entered with rsp = 8 mod 16) */
        uint64_t *top = (uint64_t *)(((uintptr_t)f.stack + Worker::STACK) & ~(uintptr_t)15);
        uint64_t *sp = top - 11; /* after the 9 pops: rsp = top - 16 - 8 */
        uint32_t mxcsr = 0;
        uint16_t fpucw = 0;
        __asm__ volatile("stmxcsr %0\n fnstcw %1" : "=m"(mxcsr), "=m"(fpucw));
        const uint64_t csr = (uint64_t)mxcsr | ((uint64_t)fpucw << 32);
        memcpy(&sp[0], &csr, 8);
        for (int k = 1; k <= 6; k++) sp[k] = 0; /* r15 r14 r13 r12 rbx rbp */
        sp[7] = (uint64_t)(uintptr_t)&fiber_main;
        sp[8] = 0; /* fiber_main's (never used) return address */
        f.sp = sp;
#else
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack;
        f.ctx.uc_stack.ss_size = Worker::STACK;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, (void (*)())fiber_main, 0);
#endif
    }
    if (sigsetjmp(w->jb, 1)) {
        /* a fault in a fiber: the fiber stacks are abandoned, not unwound */
        std::string who = w->cur ? thread_name(w->cur->t) : "a thread";
        char b[64];
        snprintf(b, sizeof b, "%p", w->fault_addr);
        return "out-of-bounds access at address " + std::string(b) + " in " + w->kernel->name + " by " + who +
               ", at " + source_line(w->fault_pc);
    }
    for (;;) {
        bool progress = false, all_done = true;
        for (uint32_t k = 0; k < n; k++) {
            Fiber &f = w->fibers[reverse ? n - 1 - k : k];
            if (f.state == F_DONE) continue;
            all_done = false;
            if (f.state != F_RUNNABLE) continue;
            w->cur = &f;
            w->in_fiber = true;
            to_fiber(w, &f);
            w->in_fiber = false;
            w->cur = nullptr;
            progress = true;
            if (!w->error.empty()) return w->error;
        }
        if (all_done) break;
        if (!progress) {
            /* nobody can run: a barrier some threads will never reach */
            std::string m = std::string("deadlock in ") + w->kernel->name + ": ";
            int done = 0;
            std::string firstdone, firstwait;
            for (auto &f : w->fibers) {
                if (f.state == F_DONE) {
                    if (!done++) firstdone = thread_name(f.t);
                } else if (firstwait.empty()) {
                    firstwait = thread_name(f.t) + " waits at " +
                                (f.state == F_WAIT_TG ? "threadgroup_barrier " : "a SIMD-group collective ") +
                                site(f.wfile, f.wline);
                }
            }
            m += firstwait;
            if (done) m += ", but " + std::to_string(done) + " thread(s) returned without reaching it (first: " +
                           firstdone + ")";
            return m;
        }
    }
    return "";
}

void check_bindings(const Dispatch &d, std::string *err) {
    const sc_emu_kernel *k = d.pipe->kernel;
    size_t tg_total = 0;
    for (int i = 0; i < k->n_params; i++) {
        const sc_emu_param &p = k->params[i];
        char b[512];
        if (p.kind == SC_EMU_PARAM_BUFFER || p.kind == SC_EMU_PARAM_BUFFER_REF) {
            const sc_emu_binding &bb = d.launch.buffers[p.index];
            if (!bb.bound) {
                snprintf(b, sizeof b, "%s: buffer(%u) '%s' is not bound", k->name, p.index, p.name);
                *err = b;
                return;
            }
            if (p.kind == SC_EMU_PARAM_BUFFER_REF && bb.length < p.min_size) {
                snprintf(b, sizeof b, "%s: buffer(%u) '%s' holds %zu bytes, smaller than its type (%zu bytes)",
                         k->name, p.index, p.name, bb.length, p.min_size);
                *err = b;
                return;
            }
        } else if (p.kind == SC_EMU_PARAM_THREADGROUP) {
            if (!d.tg_len[p.index]) {
                snprintf(b, sizeof b, "%s: threadgroup(%u) '%s' has no memory length set", k->name, p.index, p.name);
                *err = b;
                return;
            }
        }
    }
    for (int i = 0; i < SC_EMU_MAX_BINDINGS; i++) tg_total += d.tg_len[i];
    if (tg_total > (size_t)MAX_TG_MEMORY) {
        char b[256];
        snprintf(b, sizeof b, "%s: %zu bytes of threadgroup memory, over the device limit of %lld", k->name,
                 tg_total, (long long)MAX_TG_MEMORY);
        *err = b;
    }
}

std::string run_dispatch(const Dispatch &d, int host_threads, bool reverse) {
    const uint64_t total = (uint64_t)d.grid[0] * d.grid[1] * d.grid[2];
    if (!total) return "";
    install_fault_handler();
    int nt = host_threads > 0 ? host_threads : (int)std::thread::hardware_concurrency();
    if (nt < 1) nt = 1;
    if ((uint64_t)nt > total) nt = (int)total;
    std::atomic<uint64_t> next{0};
    std::mutex emu;
    std::string first_err;
    auto work = [&]() {
        Worker w;
        t_worker = &w;
        /* signal stack for guard-page faults of a fiber stack */
        stack_t ss, old;
        std::vector<char> alt(64 * 1024);
        ss.ss_sp = alt.data();
        ss.ss_size = alt.size();
        ss.ss_flags = 0;
        sigaltstack(&ss, &old);
        for (;;) {
            uint64_t g = next.fetch_add(1);
            if (g >= total) break;
            {
                std::lock_guard<std::mutex> lk(emu);
                if (!first_err.empty()) break;
            }
            uint32_t gid[3] = {(uint32_t)(g % d.grid[0]), (uint32_t)((g / d.grid[0]) % d.grid[1]),
                               (uint32_t)(g / ((uint64_t)d.grid[0] * d.grid[1]))};
            if (reverse) { /* groups in reverse order too */
                uint64_t r = total - 1 - g;
                gid[0] = (uint32_t)(r % d.grid[0]);
                gid[1] = (uint32_t)((r / d.grid[0]) % d.grid[1]);
                gid[2] = (uint32_t)(r / ((uint64_t)d.grid[0] * d.grid[1]));
            }
            std::string e = run_group(&w, d, gid, reverse);
            if (!e.empty()) {
                std::lock_guard<std::mutex> lk(emu);
                if (first_err.empty()) first_err = e;
                break;
            }
        }
        sigaltstack(&old, nullptr);
        t_worker = nullptr;
    };
    if (nt == 1) {
        work();
    } else {
        std::vector<std::thread> ts;
        for (int i = 0; i < nt; i++) ts.emplace_back(work);
        for (auto &t : ts) t.join();
    }
    return first_err;
}

}  // namespace

/* ------------------------------------------------------------ command buffers */
struct Cmd {
    bool barrier = false;
    Dispatch d;
    std::vector<std::vector<char>> bytes; /* set_bytes copies, owned */
};

struct sc_mtl_cmdbuf {
    sc_mtl_device *dev;
    std::vector<Cmd> cmds;
    /* current encoder state */
    const sc_mtl_pipeline *pipe = nullptr;
    sc_emu_binding buffers[SC_EMU_MAX_BINDINGS];
    std::vector<char> bytes[SC_EMU_MAX_BINDINGS];
    size_t tg_len[SC_EMU_MAX_BINDINGS];
    bool committed = false, race = false;
    sc_mtl_status status = SC_MTL_OK;
    std::string error;
    double t0 = 0, t1 = 0;
};

extern "C" sc_mtl_status sc_mtl_cmdbuf_create(sc_mtl_device *d, sc_mtl_cmdbuf **out) {
    if (!d || !out) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "device or out is NULL");
    auto *c = new sc_mtl_cmdbuf();
    c->dev = d;
    memset(c->buffers, 0, sizeof c->buffers);
    memset(c->tg_len, 0, sizeof c->tg_len);
    *out = c;
    return SC_MTL_OK;
}
extern "C" void sc_mtl_cmdbuf_free(sc_mtl_cmdbuf *c) { delete c; }

#define CHECK_OPEN(c)                                                                              \
    do {                                                                                           \
        if (!(c)) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "command buffer is NULL");              \
        if ((c)->committed) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "command buffer is committed"); \
    } while (0)

extern "C" sc_mtl_status sc_mtl_set_pipeline(sc_mtl_cmdbuf *c, sc_mtl_pipeline *p) {
    CHECK_OPEN(c);
    if (!p) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "pipeline is NULL");
    c->pipe = p;
    return SC_MTL_OK;
}

extern "C" sc_mtl_status sc_mtl_set_buffer(sc_mtl_cmdbuf *c, uint32_t index, sc_mtl_buffer *b, size_t offset) {
    CHECK_OPEN(c);
    if (index >= SC_EMU_MAX_BINDINGS) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "buffer index %u is over 30", index);
    if (!b) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "buffer is NULL");
    if (offset > b->length)
        return fail(SC_MTL_ERR_INVALID_ARGUMENT, "offset %zu is past the buffer's %zu bytes", offset, b->length);
    c->buffers[index].ptr = b->data + offset;
    c->buffers[index].length = b->length - offset;
    c->buffers[index].bound = 1;
    c->bytes[index].clear();
    return SC_MTL_OK;
}

extern "C" sc_mtl_status sc_mtl_set_bytes(sc_mtl_cmdbuf *c, uint32_t index, const void *data, size_t length) {
    CHECK_OPEN(c);
    if (index >= SC_EMU_MAX_BINDINGS) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "buffer index %u is over 30", index);
    if (!data || !length || length > 4096)
        return fail(SC_MTL_ERR_INVALID_ARGUMENT, "set_bytes takes 1..4096 bytes, got %zu", length);
    c->bytes[index].assign((const char *)data, (const char *)data + length);
    c->buffers[index].ptr = nullptr; /* resolved at dispatch */
    c->buffers[index].length = length;
    c->buffers[index].bound = 2;
    return SC_MTL_OK;
}

extern "C" sc_mtl_status sc_mtl_set_threadgroup_memory(sc_mtl_cmdbuf *c, uint32_t index, size_t length) {
    CHECK_OPEN(c);
    if (index >= SC_EMU_MAX_BINDINGS) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "threadgroup index %u is over 30", index);
    if (length > (size_t)MAX_TG_MEMORY)
        return fail(SC_MTL_ERR_LIMIT, "threadgroup memory %zu bytes is over the device limit of %lld", length,
                    (long long)MAX_TG_MEMORY);
    c->tg_len[index] = (length + 15) / 16 * 16;
    return SC_MTL_OK;
}

extern "C" sc_mtl_status sc_mtl_dispatch(sc_mtl_cmdbuf *c, const uint32_t groups[3], const uint32_t threads[3]) {
    CHECK_OPEN(c);
    if (!c->pipe) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "no pipeline set before dispatch");
    if (!groups || !threads) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "grid or threadgroup size is NULL");
    uint64_t n = (uint64_t)threads[0] * threads[1] * threads[2];
    if (n == 0) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "threadgroup size has a zero dimension");
    if (n > (uint64_t)sc_mtl_pipeline_max_threads(c->pipe))
        return fail(SC_MTL_ERR_LIMIT, "%s: threadgroup of %llu threads is over the pipeline's maximum of %d",
                    c->pipe->name.c_str(), (unsigned long long)n, sc_mtl_pipeline_max_threads(c->pipe));
    Cmd cmd;
    cmd.d.pipe = c->pipe;
    memset(&cmd.d.launch, 0, sizeof cmd.d.launch);
    for (int i = 0; i < SC_EMU_MAX_BINDINGS; i++) {
        cmd.d.launch.buffers[i] = c->buffers[i];
        if (c->buffers[i].bound == 2) {
            cmd.bytes.push_back(c->bytes[i]);
            cmd.d.launch.buffers[i].ptr = nullptr; /* filled at commit from cmd.bytes */
        }
    }
    memcpy(cmd.d.tg_len, c->tg_len, sizeof c->tg_len);
    memcpy(cmd.d.grid, groups, sizeof cmd.d.grid);
    memcpy(cmd.d.tg, threads, sizeof cmd.d.tg);
    std::string err;
    check_bindings(cmd.d, &err);
    if (!err.empty()) {
        bool limit = err.find("device limit") != std::string::npos;
        return fail_str(limit ? SC_MTL_ERR_LIMIT : SC_MTL_ERR_INVALID_ARGUMENT, err);
    }
    c->cmds.push_back(std::move(cmd));
    return SC_MTL_OK;
}

extern "C" sc_mtl_status sc_mtl_barrier(sc_mtl_cmdbuf *c) {
    CHECK_OPEN(c);
    Cmd b;
    b.barrier = true; /* dispatches run in order here: nothing else to do */
    c->cmds.push_back(std::move(b));
    return SC_MTL_OK;
}

extern "C" sc_mtl_status sc_mtl_set_race_check(sc_mtl_cmdbuf *c, int on) {
    CHECK_OPEN(c);
    c->race = on != 0;
    return SC_MTL_OK;
}

static double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

extern "C" sc_mtl_status sc_mtl_commit(sc_mtl_cmdbuf *c) {
    CHECK_OPEN(c);
    c->committed = true;
    c->t0 = now();
    for (Cmd &cmd : c->cmds) {
        if (cmd.barrier) continue;
        size_t bi = 0;
        for (int i = 0; i < SC_EMU_MAX_BINDINGS; i++)
            if (cmd.d.launch.buffers[i].bound == 2) cmd.d.launch.buffers[i].ptr = cmd.bytes[bi++].data();
        const std::vector<sc_emu_fc_value> &fc = cmd.d.pipe->constants;
        cmd.d.launch.constants = fc.data();
        cmd.d.launch.n_constants = (int)fc.size();
        std::string err;
        if (!c->race) {
            err = run_dispatch(cmd.d, c->dev->host_threads, false);
        } else {
            /* device buffers before, after the forward run, and after the reverse run */
            std::vector<std::vector<char>> before, fwd;
            std::vector<int> idx;
            for (int i = 0; i < SC_EMU_MAX_BINDINGS; i++)
                if (cmd.d.launch.buffers[i].bound == 1) {
                    idx.push_back(i);
                    const char *p = (const char *)cmd.d.launch.buffers[i].ptr;
                    before.emplace_back(p, p + cmd.d.launch.buffers[i].length);
                }
            err = run_dispatch(cmd.d, c->dev->host_threads, false);
            if (err.empty()) {
                for (int i : idx) {
                    const char *p = (const char *)cmd.d.launch.buffers[i].ptr;
                    fwd.emplace_back(p, p + cmd.d.launch.buffers[i].length);
                }
                for (size_t k = 0; k < idx.size(); k++)
                    memcpy(cmd.d.launch.buffers[idx[k]].ptr, before[k].data(), before[k].size());
                err = run_dispatch(cmd.d, c->dev->host_threads, true);
            }
            for (size_t k = 0; err.empty() && k < idx.size(); k++) {
                const char *p = (const char *)cmd.d.launch.buffers[idx[k]].ptr;
                size_t len = fwd[k].size(), first = len, count = 0;
                for (size_t j = 0; j < len; j++)
                    if (p[j] != fwd[k][j]) {
                        if (first == len) first = j;
                        count++;
                    }
                if (count) {
                    char b[512];
                    snprintf(b, sizeof b, "race in %s: buffer(%d) differs between forward and reverse thread order "
                                          "in %zu byte(s), first at offset %zu -- a missing threadgroup_barrier or "
                                          "simdgroup_barrier, or threads writing the same location",
                             cmd.d.pipe->name.c_str(), idx[k], count, first);
                    err = b;
                }
            }
        }
        if (!err.empty()) {
            c->status = SC_MTL_ERR_EXECUTION;
            c->error = err;
            break;
        }
    }
    c->t1 = now();
    return SC_MTL_OK;
}

extern "C" sc_mtl_status sc_mtl_wait(sc_mtl_cmdbuf *c) {
    if (!c) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "command buffer is NULL");
    if (!c->committed) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "command buffer was not committed");
    if (c->status != SC_MTL_OK) return fail_str(c->status, c->error);
    return SC_MTL_OK;
}

extern "C" sc_mtl_status sc_mtl_gpu_time(const sc_mtl_cmdbuf *c, double *start, double *end) {
    if (!c || !start || !end) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "command buffer or out is NULL");
    if (!c->committed) return fail(SC_MTL_ERR_INVALID_ARGUMENT, "command buffer was not committed");
    *start = c->t0;
    *end = c->t1;
    return SC_MTL_OK;
}
