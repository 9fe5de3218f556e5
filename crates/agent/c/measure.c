/* Timing a compiled library in a forked child (see measure.h). */
#define _GNU_SOURCE
#include "measure.h"

#include "kiln_model.h"

#include <dlfcn.h>
#include <errno.h>
#include <openssl/evp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The library's entry points, looked up with dlsym (kiln_model.h is the runtime's header). */
typedef int32_t (*count_fn)(void);
typedef int32_t (*info_fn)(int32_t, kiln_tensor_info *);
typedef int32_t (*create_fn)(int32_t, kiln_model **);
typedef int32_t (*run_fn)(kiln_model *, const void *const *, void *const *);
typedef void (*destroy_fn)(kiln_model *);
typedef const char *(*missing_fn)(void);

static uint64_t next(uint64_t *s) {
    /* xorshift64*, seeded with a non-zero state. */
    uint64_t x = *s ? *s : 0x9e3779b97f4a7c15ull;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dull;
}

void measure_fill(void *buf, uint64_t bytes, int32_t dtype, uint64_t *state) {
    if (dtype == KILN_DTYPE_F32) {
        float *f = buf;
        for (uint64_t i = 0; i < bytes / 4; i++) f[i] = (float)(next(state) >> 40) / 16777216.0f;
    } else if (dtype == KILN_DTYPE_F64) {
        double *d = buf;
        for (uint64_t i = 0; i < bytes / 8; i++) d[i] = (double)(next(state) >> 11) / 9007199254740992.0;
    } else {
        memset(buf, 0, bytes);
    }
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void fail(measure_result *r, int status, const char *fmt, const char *arg) {
    r->status = status;
    snprintf(r->message, sizeof r->message, fmt, arg ? arg : "");
}

/* In the child: load, create, generate inputs, time, checksum. */
static void run_child(const char *path, const measure_request *q, measure_result *r) {
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) return fail(r, MEASURE_ERROR, "cannot load the library: %s", dlerror());
    count_fn n_in = (count_fn)dlsym(lib, "kiln_model_num_inputs");
    count_fn n_out = (count_fn)dlsym(lib, "kiln_model_num_outputs");
    info_fn in_info = (info_fn)dlsym(lib, "kiln_model_input_info");
    info_fn out_info = (info_fn)dlsym(lib, "kiln_model_output_info");
    create_fn create = (create_fn)dlsym(lib, "kiln_model_create");
    run_fn run = (run_fn)dlsym(lib, "kiln_model_run");
    destroy_fn destroy = (destroy_fn)dlsym(lib, "kiln_model_destroy");
    missing_fn missing = (missing_fn)dlsym(lib, "kiln_model_missing_cpu_feature");
    if (!n_in || !n_out || !in_info || !out_info || !create || !run || !destroy)
        return fail(r, MEASURE_ERROR, "not a Kiln library (a kiln_model_* symbol is missing)%s", NULL);
    int32_t ni = n_in(), no = n_out();
    if (ni < 0 || no < 1 || ni > 64 || no > 64)
        return fail(r, MEASURE_ERROR, "a library with an unusable number of inputs or outputs%s", NULL);
    const void *ins[64];
    void *outs[64];
    size_t out_bytes[64];
    uint64_t state = q->seed;
    for (int32_t i = 0; i < ni; i++) {
        kiln_tensor_info t;
        if (in_info(i, &t)) return fail(r, MEASURE_ERROR, "input info failed%s", NULL);
        void *b = malloc(t.bytes ? t.bytes : 1);
        if (!b) return fail(r, MEASURE_ERROR, "out of memory for the inputs%s", NULL);
        measure_fill(b, t.bytes, t.dtype, &state);
        ins[i] = b;
    }
    for (int32_t i = 0; i < no; i++) {
        kiln_tensor_info t;
        if (out_info(i, &t)) return fail(r, MEASURE_ERROR, "output info failed%s", NULL);
        out_bytes[i] = t.bytes;
        outs[i] = calloc(1, t.bytes ? t.bytes : 1);
        if (!outs[i]) return fail(r, MEASURE_ERROR, "out of memory for the outputs%s", NULL);
    }
    kiln_model *model = NULL;
    int32_t st = create(q->threads, &model);
    if (st) {
        if (st == KILN_ERROR_UNSUPPORTED_CPU && missing) return fail(r, MEASURE_ERROR, "this CPU lacks %s", missing());
        char code[16];
        snprintf(code, sizeof code, "%d", st);
        return fail(r, MEASURE_ERROR, "kiln_model_create failed with status %s", code);
    }
    for (uint32_t i = 0; i < q->warmup; i++)
        if ((st = run(model, ins, outs))) break;
    uint32_t number = q->number ? q->number : 1;
    uint32_t repeat = q->repeat < 1 ? 1 : q->repeat > MEASURE_MAX_REPEAT ? MEASURE_MAX_REPEAT : q->repeat;
    for (uint32_t k = 0; k < repeat && !st; k++) {
        for (;;) {
            double t0 = now();
            for (uint32_t i = 0; i < number && !st; i++) st = run(model, ins, outs);
            double dt = now() - t0;
            if (st || dt * 1000.0 >= q->min_repeat_ms || number >= (1u << 30)) {
                r->seconds[r->count++] = dt / number;
                break;
            }
            /* Grow as TVM does: by the golden ratio, or to what this timing says is needed. */
            double need = dt > 0 ? q->min_repeat_ms / (dt * 1000.0) * number * 1.05 : number * 1.618;
            double grown = number * 1.618 > need ? number * 1.618 : need;
            number = grown > (1u << 30) ? (1u << 30) : (uint32_t)grown + 1;
        }
    }
    if (st) {
        char code[16];
        snprintf(code, sizeof code, "%d", st);
        return fail(r, MEASURE_ERROR, "kiln_model_run failed with status %s", code);
    }
    r->number = number;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned len = 0;
    int ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    for (int32_t i = 0; i < no && ok; i++) ok = EVP_DigestUpdate(md, outs[i], out_bytes[i]);
    ok = ok && EVP_DigestFinal_ex(md, r->checksum, &len);
    EVP_MD_CTX_free(md);
    destroy(model);
    if (!ok) return fail(r, MEASURE_ERROR, "hashing the outputs failed%s", NULL);
    r->status = MEASURE_OK;
}

void measure_library(const char *path, const measure_request *q, uint64_t default_memory_mb,
                     measure_result *out) {
    memset(out, 0, sizeof *out);
    int fds[2];
    if (pipe(fds)) return fail(out, MEASURE_ERROR, "cannot create a pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return fail(out, MEASURE_ERROR, "cannot fork: %s", strerror(errno));
    }
    if (pid == 0) {
        close(fds[0]);
        uint64_t mb = q->memory_mb ? q->memory_mb : default_memory_mb;
        struct rlimit as = {(rlim_t)mb << 20, (rlim_t)mb << 20}, none = {0, 0};
        uint64_t cpu_s = q->timeout_ms / 1000 + 2;
        struct rlimit cpu = {(rlim_t)cpu_s, (rlim_t)cpu_s + 1};
        setrlimit(RLIMIT_AS, &as);
        setrlimit(RLIMIT_CORE, &none);
        setrlimit(RLIMIT_CPU, &cpu);
        static measure_result r;
        memset(&r, 0, sizeof r);
        run_child(path, q, &r);
        const char *p = (const char *)&r;
        size_t left = sizeof r;
        while (left) {
            ssize_t w = write(fds[1], p, left);
            if (w <= 0) break;
            p += w;
            left -= (size_t)w;
        }
        _exit(0);
    }
    close(fds[1]);
    /* The watchdog: read the result until the deadline, then kill. */
    double deadline = now() + q->timeout_ms / 1000.0;
    size_t got = 0;
    int timed_out = 0;
    while (got < sizeof *out) {
        int left_ms = (int)((deadline - now()) * 1000.0);
        if (left_ms <= 0) {
            timed_out = 1;
            break;
        }
        struct pollfd p = {fds[0], POLLIN, 0};
        int ready = poll(&p, 1, left_ms);
        if (ready < 0 && errno == EINTR) continue;
        if (ready <= 0) continue;
        ssize_t n = read(fds[0], (char *)out + got, sizeof *out - got);
        if (n <= 0) break;
        got += (size_t)n;
    }
    close(fds[0]);
    if (timed_out) kill(pid, SIGKILL);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (timed_out) {
        memset(out, 0, sizeof *out);
        char ms[32];
        snprintf(ms, sizeof ms, "%u", q->timeout_ms);
        return fail(out, MEASURE_TIMEOUT, "still running after %s ms: killed", ms);
    }
    if (got < sizeof *out) {
        memset(out, 0, sizeof *out);
        if (WIFSIGNALED(status)) {
            char sig[64];
            snprintf(sig, sizeof sig, "%d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
            return fail(out, MEASURE_CRASHED, "the library crashed: signal %s", sig);
        }
        char code[16];
        snprintf(code, sizeof code, "%d", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        return fail(out, MEASURE_ERROR, "the measuring process exited with status %s", code);
    }
    out->message[sizeof out->message - 1] = 0;
}
