/* Runs a model compiled by `kiln compile` through its C ABI, loaded at run time with dlopen.
 *
 *   run_model LIB.so OUT_DIR IN_0.bin [IN_1.bin ...]
 *
 * Each IN_k.bin is a raw little-endian tensor of input k's declared dtype and shape (exactly its
 * byte size); the outputs are written as OUT_DIR/output_N.bin the same way. The number of threads
 * comes from KILN_NUM_THREADS (default 0: one per CPU). With KILN_BENCH_ITERS=N it also times N
 * more runs after the first and prints one JSON line {"median_ms": .., "min_ms": ..} on stdout.
 * Any error is a message on stderr and exit status 1 (2 for bad usage).
 *
 * Build: cc -std=c99 -Wall -Werror -I crates/runtime/c examples/c/run_model.c -o run_model -ldl
 */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kiln_model.h"

typedef uint32_t (*abi_version_fn)(void);
typedef int32_t (*count_fn)(void);
typedef int32_t (*info_fn)(int32_t, kiln_tensor_info *);
typedef int32_t (*create_fn)(int32_t, kiln_model **);
typedef int32_t (*run_fn)(kiln_model *, const void *const *, void *const *);
typedef void (*destroy_fn)(kiln_model *);
typedef const char *(*status_fn)(int32_t);
typedef const char *(*feature_fn)(void);

static int fail(const char *what, const char *detail) {
    fprintf(stderr, "run_model: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    return 1;
}

static void *symbol(void *lib, const char *name) {
    void *p = dlsym(lib, name);
    if (p == NULL) {
        fprintf(stderr, "run_model: the library lacks %s (not a Kiln model?)\n", name);
    }
    return p;
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Reads exactly `bytes` bytes of `path` into a new buffer; NULL (with a message) otherwise. */
static void *read_exact(const char *path, size_t bytes) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "run_model: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    void *buf = malloc(bytes ? bytes : 1);
    size_t got = buf ? fread(buf, 1, bytes, f) : 0;
    int extra = fgetc(f) != EOF;
    fclose(f);
    if (buf == NULL || got != bytes || extra) {
        fprintf(stderr, "run_model: %s: expected exactly %zu bytes (%s)\n", path, bytes,
                buf == NULL ? "out of memory" : extra ? "file is larger" : "file is smaller");
        free(buf);
        return NULL;
    }
    return buf;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: run_model LIB.so OUT_DIR IN_0.bin [IN_1.bin ...]\n");
        return 2;
    }
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        return fail("cannot load the library", dlerror());
    }
    abi_version_fn abi_version = (abi_version_fn)symbol(lib, "kiln_abi_version");
    count_fn num_inputs = (count_fn)symbol(lib, "kiln_model_num_inputs");
    count_fn num_outputs = (count_fn)symbol(lib, "kiln_model_num_outputs");
    info_fn input_info = (info_fn)symbol(lib, "kiln_model_input_info");
    info_fn output_info = (info_fn)symbol(lib, "kiln_model_output_info");
    create_fn create = (create_fn)symbol(lib, "kiln_model_create");
    run_fn run = (run_fn)symbol(lib, "kiln_model_run");
    destroy_fn destroy = (destroy_fn)symbol(lib, "kiln_model_destroy");
    status_fn status_string = (status_fn)symbol(lib, "kiln_status_string");
    if (!abi_version || !num_inputs || !num_outputs || !input_info || !output_info || !create ||
        !run || !destroy || !status_string) {
        return 1;
    }
    if (abi_version() != KILN_ABI_VERSION) {
        fprintf(stderr, "run_model: library ABI version %u, this program expects %d\n",
                (unsigned)abi_version(), KILN_ABI_VERSION);
        return 1;
    }
    int32_t n_in = num_inputs(), n_out = num_outputs();
    if (argc - 3 != n_in) {
        fprintf(stderr, "run_model: the model has %d inputs, %d files given\n", (int)n_in,
                argc - 3);
        return 1;
    }
    const void **inputs = calloc((size_t)n_in + 1, sizeof(void *));
    void **outputs = calloc((size_t)n_out + 1, sizeof(void *));
    kiln_tensor_info *out_info = calloc((size_t)n_out + 1, sizeof(kiln_tensor_info));
    if (!inputs || !outputs || !out_info) {
        return fail("out of memory", NULL);
    }
    for (int32_t i = 0; i < n_in; i++) {
        kiln_tensor_info info;
        if (input_info(i, &info) != KILN_OK) {
            return fail("cannot describe an input", NULL);
        }
        if ((inputs[i] = read_exact(argv[3 + i], info.bytes)) == NULL) {
            return 1;
        }
    }
    for (int32_t j = 0; j < n_out; j++) {
        if (output_info(j, &out_info[j]) != KILN_OK) {
            return fail("cannot describe an output", NULL);
        }
        if ((outputs[j] = malloc(out_info[j].bytes ? out_info[j].bytes : 1)) == NULL) {
            return fail("out of memory", NULL);
        }
    }
    const char *threads_env = getenv("KILN_NUM_THREADS");
    int32_t threads = threads_env ? (int32_t)atoi(threads_env) : 0;
    kiln_model *model = NULL;
    int32_t s = create(threads, &model);
    if (s == KILN_ERROR_UNSUPPORTED_CPU) {
        feature_fn missing = (feature_fn)symbol(lib, "kiln_model_missing_cpu_feature");
        fprintf(stderr, "run_model: cannot create a context: %s: %s\n", status_string(s),
                missing ? missing() : "?");
        return 1;
    }
    if (s != KILN_OK) {
        return fail("cannot create a context", status_string(s));
    }
    s = run(model, inputs, outputs);
    const char *iters_env = getenv("KILN_BENCH_ITERS");
    int iters = iters_env ? atoi(iters_env) : 0;
    if (s == KILN_OK && iters > 0) {
        double *ms = malloc((size_t)iters * sizeof(double));
        if (ms == NULL) {
            return fail("out of memory", NULL);
        }
        for (int k = 0; k < iters && s == KILN_OK; k++) {
            struct timespec t0, t1;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            s = run(model, inputs, outputs);
            clock_gettime(CLOCK_MONOTONIC, &t1);
            ms[k] = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
        }
        qsort(ms, (size_t)iters, sizeof(double), compare_doubles);
        printf("{\"median_ms\": %.4f, \"min_ms\": %.4f}\n", ms[iters / 2], ms[0]);
        free(ms);
    }
    destroy(model);
    if (s != KILN_OK) {
        return fail("the model failed", status_string(s));
    }
    for (int32_t j = 0; j < n_out; j++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/output_%d.bin", argv[2], (int)j);
        FILE *f = fopen(path, "wb");
        if (f == NULL) {
            fprintf(stderr, "run_model: %s: %s\n", path, strerror(errno));
            return 1;
        }
        size_t wrote = fwrite(outputs[j], 1, out_info[j].bytes, f);
        if (fclose(f) != 0 || wrote != out_info[j].bytes) {
            fprintf(stderr, "run_model: %s: write failed\n", path);
            return 1;
        }
    }
    for (int32_t i = 0; i < n_in; i++) {
        free((void *)inputs[i]);
    }
    for (int32_t j = 0; j < n_out; j++) {
        free(outputs[j]);
    }
    free(inputs);
    free(outputs);
    free(out_info);
    dlclose(lib);
    return 0;
}
