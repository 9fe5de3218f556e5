/* The runtime of a Kiln-compiled shared library: the C ABI of kiln_model.h around the machine
 * code Kiln generated, a small pthread pool for parallel loops, and the hooks generated code
 * calls (math, f16 conversion, large local buffers).
 *
 * This file is not compiled alone: Kiln generates a model file that defines the model's tables
 * and macros (KILN__NUM_INPUTS, kiln__inputs, KILN__ARENA_BYTES, ...) and then includes it.
 *
 * Invariants: nothing here aborts, exits or prints; every failure is a status. A context's
 * arena and pool belong to one call at a time. A parallel loop runs on the pool of the context
 * whose kiln_model_run is on the calling thread's stack (a thread-local pointer); a loop
 * reached from a worker, or with no pool, runs serially on the calling thread. The math hooks
 * compute in double and round once to float, as Kiln's JIT and its interpreter do.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The generated code (see kiln_codegen::entry): the whole-model entry and its weight table. */
extern int32_t KILN__ENTRY(const uint8_t *const *inputs, uint8_t *const *outputs, uint8_t *arena,
                           const uint8_t *const *constants);
extern const uint8_t *const KILN__CONSTANTS[];

/* Kernel statuses (kiln_codegen::STATUS_*). */
#define KILN__STATUS_DIV_BY_ZERO 1
#define KILN__STATUS_ALLOC_FAILED 2

/* ---------------------------------------------------------------- thread pool */

typedef int32_t (*kiln__body)(const uint8_t *ctx, int64_t begin, int64_t end);

typedef struct kiln__pool {
    pthread_mutex_t mu;
    pthread_cond_t work;   /* a new job (generation changed) or shutdown */
    pthread_cond_t done;   /* the last worker left the job */
    int32_t threads;       /* workers + the caller */
    int32_t started;       /* workers running */
    pthread_t *workers;
    uint64_t generation;   /* atomic: bumped (release) once a job is published */
    int32_t shutdown;      /* atomic */
    int32_t pending;       /* atomic: workers not yet finished with the current job */
    /* the current job, written before `generation` is bumped */
    kiln__body body;
    const uint8_t *ctx;
    int64_t n;
    int64_t chunks;
    int64_t next_chunk;    /* atomic */
    int32_t status;        /* atomic: first non-zero status */
} kiln__pool;

/* How long a worker (or the caller) spins before it sleeps on a condition variable: a model
 * calls one parallel loop per kernel, microseconds apart, and a futex wake-up per loop would
 * cost more than many kernels take. About 0.1-0.3 ms of pause instructions. */
#define KILN__SPINS 16384
#if defined(__x86_64__) || defined(__i386__)
#define KILN__PAUSE() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define KILN__PAUSE() __asm__ __volatile__("yield" ::: "memory")
#else
#define KILN__PAUSE() ((void)0)
#endif

static __thread kiln__pool *kiln__current_pool;

static void kiln__run_chunks(kiln__pool *p) {
    for (;;) {
        int64_t c = __atomic_fetch_add(&p->next_chunk, 1, __ATOMIC_RELAXED);
        if (c >= p->chunks) {
            return;
        }
        int64_t begin = (int64_t)((__int128)p->n * c / p->chunks);
        int64_t end = (int64_t)((__int128)p->n * (c + 1) / p->chunks);
        int32_t s = p->body(p->ctx, begin, end);
        if (s != 0) {
            int32_t zero = 0;
            __atomic_compare_exchange_n(&p->status, &zero, s, 0, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED);
        }
    }
}

/* Waits until the generation differs from `seen` (returns it) or the pool shuts down (0). */
static uint64_t kiln__await_job(kiln__pool *p, uint64_t seen) {
    for (int i = 0; i < KILN__SPINS; i++) {
        uint64_t g = __atomic_load_n(&p->generation, __ATOMIC_ACQUIRE);
        if (g != seen) {
            return g;
        }
        if (__atomic_load_n(&p->shutdown, __ATOMIC_RELAXED)) {
            return 0;
        }
        KILN__PAUSE();
    }
    uint64_t g;
    pthread_mutex_lock(&p->mu);
    while ((g = __atomic_load_n(&p->generation, __ATOMIC_ACQUIRE)) == seen &&
           !__atomic_load_n(&p->shutdown, __ATOMIC_RELAXED)) {
        pthread_cond_wait(&p->work, &p->mu);
    }
    int stop = __atomic_load_n(&p->shutdown, __ATOMIC_RELAXED) && g == seen;
    pthread_mutex_unlock(&p->mu);
    return stop ? 0 : g;
}

static void *kiln__worker(void *arg) {
    kiln__pool *p = (kiln__pool *)arg;
    /* Generation 0 is the pool's state before any job: a worker that starts late still takes
     * part in the first job (which waits for it). */
    uint64_t seen = 0;
    for (;;) {
        seen = kiln__await_job(p, seen);
        if (seen == 0) {
            return NULL;
        }
        kiln__run_chunks(p);
        if (__atomic_sub_fetch(&p->pending, 1, __ATOMIC_ACQ_REL) == 0) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

static void kiln__pool_destroy(kiln__pool *p) {
    if (p == NULL) {
        return;
    }
    pthread_mutex_lock(&p->mu);
    __atomic_store_n(&p->shutdown, 1, __ATOMIC_RELAXED);
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    for (int32_t i = 0; i < p->started; i++) {
        pthread_join(p->workers[i], NULL);
    }
    pthread_cond_destroy(&p->work);
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->mu);
    free(p->workers);
    free(p);
}

static int32_t kiln__pool_create(int32_t threads, kiln__pool **out) {
    *out = NULL;
    kiln__pool *p = (kiln__pool *)calloc(1, sizeof *p);
    if (p == NULL) {
        return KILN_ERROR_OUT_OF_MEMORY;
    }
    p->workers = (pthread_t *)calloc((size_t)threads, sizeof(pthread_t));
    if (p->workers == NULL) {
        free(p);
        return KILN_ERROR_OUT_OF_MEMORY;
    }
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        free(p->workers);
        free(p);
        return KILN_ERROR_THREADS;
    }
    pthread_cond_init(&p->work, NULL);
    pthread_cond_init(&p->done, NULL);
    p->threads = threads;
    for (int32_t i = 0; i + 1 < threads; i++) {
        if (pthread_create(&p->workers[i], NULL, kiln__worker, p) != 0) {
            kiln__pool_destroy(p);
            return KILN_ERROR_THREADS;
        }
        p->started++;
    }
    *out = p;
    return KILN_OK;
}

/* The hook for parallel loops: body(ctx, begin, end) over at most 4 chunks per thread. */
int32_t kiln_parallel_for(kiln__body body, const uint8_t *ctx, int64_t n) {
    if (n <= 0 || body == NULL) {
        return 0;
    }
    kiln__pool *p = kiln__current_pool;
    if (p == NULL || p->started == 0 || n == 1) {
        return body(ctx, 0, n);
    }
    int64_t chunks = 4 * (int64_t)p->threads;
    if (chunks > n) {
        chunks = n;
    }
    p->body = body;
    p->ctx = ctx;
    p->n = n;
    p->chunks = chunks;
    __atomic_store_n(&p->next_chunk, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&p->status, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&p->pending, p->started, __ATOMIC_RELAXED);
    /* Publish the job (release: its fields are visible to whoever sees the new generation),
     * then wake the workers that went to sleep (under the mutex: none misses it). */
    __atomic_add_fetch(&p->generation, 1, __ATOMIC_RELEASE);
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    /* Loops nested in the body run serially: the pool is busy with this one. */
    kiln__current_pool = NULL;
    kiln__run_chunks(p);
    kiln__current_pool = p;
    int waited = 0;
    while (__atomic_load_n(&p->pending, __ATOMIC_ACQUIRE) > 0 && waited++ < KILN__SPINS) {
        KILN__PAUSE();
    }
    if (__atomic_load_n(&p->pending, __ATOMIC_ACQUIRE) > 0) {
        pthread_mutex_lock(&p->mu);
        while (__atomic_load_n(&p->pending, __ATOMIC_ACQUIRE) > 0) {
            pthread_cond_wait(&p->done, &p->mu);
        }
        pthread_mutex_unlock(&p->mu);
    }
    return __atomic_load_n(&p->status, __ATOMIC_RELAXED);
}

/* ---------------------------------------------------------------- hooks */

float kiln_expf(float x) { return (float)exp((double)x); }
float kiln_logf(float x) { return (float)log((double)x); }
float kiln_tanhf(float x) { return (float)tanh((double)x); }
float kiln_sigmoidf(float x) { return (float)(1.0 / (1.0 + exp(-(double)x))); }
float kiln_erff(float x) { return (float)erf((double)x); }
float kiln_sinf(float x) { return (float)sin((double)x); }
float kiln_cosf(float x) { return (float)cos((double)x); }
float kiln_powf(float x, float y) { return (float)pow((double)x, (double)y); }
float kiln_fmodf(float x, float y) { return fmodf(x, y); }
float kiln_fmaf(float x, float y, float z) { return fmaf(x, y, z); }
double kiln_exp(double x) { return exp(x); }
double kiln_log(double x) { return log(x); }
double kiln_tanh(double x) { return tanh(x); }
double kiln_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
double kiln_erf(double x) { return erf(x); }
double kiln_sin(double x) { return sin(x); }
double kiln_cos(double x) { return cos(x); }
double kiln_pow(double x, double y) { return pow(x, y); }
double kiln_fmod(double x, double y) { return fmod(x, y); }
double kiln_fma(double x, double y, double z) { return fma(x, y, z); }

void *kiln_alloc(int64_t size, int64_t align) {
    void *p = NULL;
    size_t a = align < (int64_t)sizeof(void *) ? sizeof(void *) : (size_t)align;
    if (size < 0 || posix_memalign(&p, a, size == 0 ? 1 : (size_t)size) != 0) {
        return NULL;
    }
    return p;
}

void kiln_free(void *p, int64_t size, int64_t align) {
    (void)size;
    (void)align;
    free(p);
}

/* The f16 with bits h, widened (exact). */
float kiln_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    float f;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp == 0) {
        f = (float)man * 5.9604644775390625e-8f; /* man * 2^-24, exact */
        memcpy(&bits, &f, 4);
        bits |= sign;
    } else {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    }
    memcpy(&f, &bits, 4);
    return f;
}

/* The bits of the f16 nearest x (ties to even; NaN stays NaN, quiet). */
uint16_t kiln_f32_to_f16(float x) {
    uint32_t bits;
    memcpy(&bits, &x, 4);
    uint32_t sign = (bits >> 16) & 0x8000u;
    uint32_t exp = (bits >> 23) & 0xffu;
    uint32_t man = bits & 0x7fffffu;
    if (exp == 0xff) {
        return (uint16_t)(man != 0 ? (sign | 0x7e00u | (man >> 13)) : (sign | 0x7c00u));
    }
    int32_t e = (int32_t)exp - 127 + 15;
    if (e >= 0x1f) {
        return (uint16_t)(sign | 0x7c00u);
    }
    if (e <= 0) {
        if (e < -10) {
            return (uint16_t)sign;
        }
        man |= 0x800000u;
        uint32_t shift = (uint32_t)(14 - e);
        uint32_t h = man >> shift;
        uint32_t round = 1u << (shift - 1);
        if ((man & round) && ((man & (round - 1)) || (h & 1))) {
            h++;
        }
        return (uint16_t)(sign | h);
    }
    uint32_t h = sign | ((uint32_t)e << 10) | (man >> 13);
    if ((man & 0x1000u) && ((man & 0xfffu) || (h & 1))) {
        h++; /* a carry into the exponent is the correct rounding (up to inf) */
    }
    return (uint16_t)h;
}

/* ---------------------------------------------------------------- the C ABI */

struct kiln_model {
    uint8_t *arena;
    kiln__pool *pool;
};

uint32_t kiln_abi_version(void) { return KILN_ABI_VERSION; }

int32_t kiln_model_num_inputs(void) { return KILN__NUM_INPUTS; }

int32_t kiln_model_num_outputs(void) { return KILN__NUM_OUTPUTS; }

int32_t kiln_model_input_info(int32_t index, kiln_tensor_info *info) {
    if (info == NULL || index < 0 || index >= KILN__NUM_INPUTS) {
        return KILN_ERROR_INVALID_ARGUMENT;
    }
    *info = kiln__inputs[index];
    return KILN_OK;
}

int32_t kiln_model_output_info(int32_t index, kiln_tensor_info *info) {
    if (info == NULL || index < 0 || index >= KILN__NUM_OUTPUTS) {
        return KILN_ERROR_INVALID_ARGUMENT;
    }
    *info = kiln__outputs[index];
    return KILN_OK;
}

size_t kiln_model_arena_bytes(void) { return KILN__ARENA_BYTES; }

const char *kiln_model_cpu_features(void) { return KILN__CPU_FEATURES; }

const char *kiln_model_missing_cpu_feature(void) { return kiln__missing_cpu_feature(); }

int32_t kiln_model_create(int32_t num_threads, kiln_model **out) {
    if (out == NULL) {
        return KILN_ERROR_INVALID_ARGUMENT;
    }
    *out = NULL;
    if (kiln__missing_cpu_feature() != NULL) {
        return KILN_ERROR_UNSUPPORTED_CPU;
    }
    if (num_threads < 0) {
        return KILN_ERROR_INVALID_ARGUMENT;
    }
    if (num_threads == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        num_threads = cpus < 1 ? 1 : cpus > 256 ? 256 : (int32_t)cpus;
    }
    kiln_model *m = (kiln_model *)calloc(1, sizeof *m);
    if (m == NULL) {
        return KILN_ERROR_OUT_OF_MEMORY;
    }
    if (posix_memalign((void **)&m->arena, 64, KILN__ARENA_BYTES == 0 ? 64 : KILN__ARENA_BYTES) !=
        0) {
        free(m);
        return KILN_ERROR_OUT_OF_MEMORY;
    }
    if (KILN__PARALLEL && num_threads > 1) {
        int32_t s = kiln__pool_create(num_threads, &m->pool);
        if (s != KILN_OK) {
            free(m->arena);
            free(m);
            return s;
        }
    }
    *out = m;
    return KILN_OK;
}

int32_t kiln_model_run(kiln_model *m, const void *const *inputs, void *const *outputs) {
    if (m == NULL || (KILN__NUM_INPUTS > 0 && inputs == NULL) ||
        (KILN__NUM_OUTPUTS > 0 && outputs == NULL)) {
        return KILN_ERROR_INVALID_ARGUMENT;
    }
    for (int32_t i = 0; i < KILN__NUM_INPUTS; i++) {
        if (inputs[i] == NULL) {
            return KILN_ERROR_INVALID_ARGUMENT;
        }
    }
    for (int32_t j = 0; j < KILN__NUM_OUTPUTS; j++) {
        if (outputs[j] == NULL) {
            return KILN_ERROR_INVALID_ARGUMENT;
        }
    }
    kiln__pool *saved = kiln__current_pool;
    kiln__current_pool = m->pool;
    int32_t s = KILN__ENTRY((const uint8_t *const *)inputs, (uint8_t *const *)outputs, m->arena,
                            KILN__CONSTANTS);
    kiln__current_pool = saved;
    if (s == KILN__STATUS_DIV_BY_ZERO) {
        return KILN_ERROR_DIVISION_BY_ZERO;
    }
    if (s == KILN__STATUS_ALLOC_FAILED) {
        return KILN_ERROR_OUT_OF_MEMORY;
    }
    if (s != 0) {
        return KILN_ERROR_INTERNAL;
    }
    /* Outputs computed by no kernel: copies of an input, a constant or an earlier output. */
    for (int32_t k = 0; k < KILN__NUM_COPIES; k++) {
        const kiln__copy *c = &kiln__copies[k];
        const void *src = c->kind == 0   ? inputs[c->source]
                          : c->kind == 1 ? (const void *)KILN__CONSTANTS[c->source]
                                         : (const void *)outputs[c->source];
        memcpy(outputs[c->output], src, kiln__outputs[c->output].bytes);
    }
    return KILN_OK;
}

void kiln_model_destroy(kiln_model *m) {
    if (m == NULL) {
        return;
    }
    kiln__pool_destroy(m->pool);
    free(m->arena);
    free(m);
}

const char *kiln_status_string(int32_t status) {
    switch (status) {
    case KILN_OK:
        return "ok";
    case KILN_ERROR_INVALID_ARGUMENT:
        return "invalid argument";
    case KILN_ERROR_OUT_OF_MEMORY:
        return "out of memory";
    case KILN_ERROR_DIVISION_BY_ZERO:
        return "integer division by zero";
    case KILN_ERROR_THREADS:
        return "worker threads could not be started";
    case KILN_ERROR_INTERNAL:
        return "internal error";
    case KILN_ERROR_UNSUPPORTED_CPU:
        return "this CPU lacks an instruction set extension the library needs";
    default:
        return "unknown status";
    }
}
