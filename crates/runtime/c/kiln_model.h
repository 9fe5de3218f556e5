/* The C ABI of a model compiled by Kiln (`kiln compile MODEL.onnx -o libmodel.so`).
 *
 * A compiled library holds one model: its machine code, its weights (read-only data) and a
 * small runtime (a thread pool, math functions); it needs only libc, libm and pthread.
 *
 *   kiln_model *m;
 *   if (kiln_model_create(0, &m) != KILN_OK) ...;          // 0 threads: one per online CPU
 *   const void *in[] = { input0 };  void *out[] = { output0 };
 *   int32_t status = kiln_model_run(m, in, out);           // KILN_OK or an error code
 *   kiln_model_destroy(m);
 *
 * Tensors are dense, row-major, little-endian buffers of the declared dtype and shape (see
 * kiln_model_input_info / kiln_model_output_info); bool is one byte, 0 or 1. Inputs are only
 * read; outputs are written whole and must not overlap inputs or each other. A context owns the
 * model's working memory (one arena) and its threads: one context runs one call at a time, and
 * any number of contexts may run concurrently from different threads. No function aborts or
 * exits the process: every failure is a returned status.
 */
#ifndef KILN_MODEL_H
#define KILN_MODEL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Definitions shared by every Kiln library's header (guarded on their own, so the headers of
 * several models, compiled with `kiln compile --prefix`, can be included together). */
#ifndef KILN_ABI_DEFINITIONS
#define KILN_ABI_DEFINITIONS

/* Version of this ABI: kiln_abi_version() of a library built for this header. */
#define KILN_ABI_VERSION 2

/* Status codes. */
#define KILN_OK 0
#define KILN_ERROR_INVALID_ARGUMENT 1 /* a null pointer, an index out of range */
#define KILN_ERROR_OUT_OF_MEMORY 2    /* the arena or a local buffer could not be allocated */
#define KILN_ERROR_DIVISION_BY_ZERO 3 /* an integer division by zero in the model */
#define KILN_ERROR_THREADS 4          /* worker threads could not be started */
#define KILN_ERROR_INTERNAL 5         /* a kernel returned an unknown status */
#define KILN_ERROR_UNSUPPORTED_CPU 6  /* this CPU lacks an instruction set extension the
                                         library's code uses: kiln_model_missing_cpu_feature() */

/* Element types. */
#define KILN_DTYPE_F32 0
#define KILN_DTYPE_F16 1
#define KILN_DTYPE_I8 2
#define KILN_DTYPE_U8 3
#define KILN_DTYPE_I16 4
#define KILN_DTYPE_I32 5
#define KILN_DTYPE_I64 6
#define KILN_DTYPE_BOOL 7
#define KILN_DTYPE_F64 8
#define KILN_DTYPE_BF16 9
#define KILN_DTYPE_U16 10
#define KILN_DTYPE_U32 11
#define KILN_DTYPE_U64 12

/* One input or output of the model. The strings and arrays live as long as the library. */
typedef struct kiln_tensor_info {
    const char *name;     /* the ONNX value name */
    int32_t dtype;        /* KILN_DTYPE_* */
    int32_t rank;         /* number of dimensions */
    const int64_t *shape; /* rank dimensions */
    size_t bytes;         /* size of the dense buffer */
} kiln_tensor_info;

/* An execution context: the arena and the threads of one model instance. */
typedef struct kiln_model kiln_model;

#endif /* KILN_ABI_DEFINITIONS */

/* KILN_ABI_VERSION of the library. */
uint32_t kiln_abi_version(void);

/* Number of model inputs and outputs. */
int32_t kiln_model_num_inputs(void);
int32_t kiln_model_num_outputs(void);

/* Describes input (output) `index` in *info; KILN_ERROR_INVALID_ARGUMENT when the index is out
 * of range or info is null. */
int32_t kiln_model_input_info(int32_t index, kiln_tensor_info *info);
int32_t kiln_model_output_info(int32_t index, kiln_tensor_info *info);

/* Bytes of working memory each context allocates. */
size_t kiln_model_arena_bytes(void);

/* The CPU features the library's code executes, space-separated in GCC's
 * __builtin_cpu_supports names (e.g. "avx avx2 fma avx512f"; empty when the architecture's
 * baseline suffices). */
const char *kiln_model_cpu_features(void);

/* The first of those features this CPU lacks, or null when it has them all. */
const char *kiln_model_missing_cpu_feature(void);

/* Creates a context running parallel loops on `num_threads` threads (the caller's included;
 * 0 picks one per online CPU, 1 runs everything on the caller's thread). On success *out holds
 * the context; on failure *out is null. On a CPU without a feature the code needs it returns
 * KILN_ERROR_UNSUPPORTED_CPU (kiln_model_missing_cpu_feature() names the feature) and runs
 * nothing. */
int32_t kiln_model_create(int32_t num_threads, kiln_model **out);

/* Runs the model: inputs[i] points to input i, outputs[j] to output j (see the infos for sizes).
 * Returns KILN_OK, or an error status (the outputs are then unspecified). */
int32_t kiln_model_run(kiln_model *model, const void *const *inputs, void *const *outputs);

/* Frees a context (its threads are joined). Null is ignored. */
void kiln_model_destroy(kiln_model *model);

/* A constant English description of a status code. */
const char *kiln_status_string(int32_t status);

#ifdef __cplusplus
}
#endif

#endif /* KILN_MODEL_H */
