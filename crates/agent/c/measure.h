/* Timing a compiled library (Kiln's C ABI, kiln_model.h) in a forked child with resource
 * limits and a watchdog, as TVM's time evaluator does: warm-up calls, then `repeat` timings of
 * `number` calls each, `number` grown (x1.618, or to what the last timing says is needed)
 * until one timing lasts at least `min_repeat_ms`; monotonic clock.
 *
 * Invariant: whatever the library does (crash, hang, allocate without bound, exit), the caller
 * gets a result with a status and the child is gone: a crash is reported with its signal, a
 * hang is killed at the deadline, and memory is capped by RLIMIT_AS. Inputs are generated from
 * the seed (docs/rpc-protocol.md, MEASURE), so results are reproducible on the host. */
#ifndef KILN_MEASURE_H
#define KILN_MEASURE_H

#include <stdint.h>

#define MEASURE_MAX_REPEAT 64

enum {
    MEASURE_OK = 0,
    MEASURE_CRASHED = 1,   /* killed by a signal (the message names it) */
    MEASURE_TIMEOUT = 2,   /* still running at the deadline: killed */
    MEASURE_ERROR = 3,     /* could not load or run it (the message says why) */
};

typedef struct {
    int32_t threads;        /* 0: one per online CPU */
    uint32_t number;        /* calls per timing, at least 1 (grown by min_repeat_ms) */
    uint32_t repeat;        /* timings, 1..MEASURE_MAX_REPEAT */
    uint32_t min_repeat_ms; /* a timing shorter than this is redone with more calls */
    uint32_t warmup;        /* untimed calls first */
    uint32_t timeout_ms;    /* the whole measurement's deadline */
    uint64_t seed;          /* of the inputs */
    uint64_t memory_mb;     /* address-space limit of the child; 0: the agent's default */
} measure_request;

typedef struct {
    int32_t status;
    char message[200];
    uint8_t checksum[32];   /* SHA-256 of the outputs, in order, after the last call */
    uint32_t number;        /* calls per timing in the end */
    uint32_t count;         /* timings */
    double seconds[MEASURE_MAX_REPEAT]; /* per call, one per timing */
} measure_result;

/* Measures the library at `path`; always fills `out`. */
void measure_library(const char *path, const measure_request *req, uint64_t default_memory_mb,
                     measure_result *out);

/* Fills `buf` (`bytes` bytes of element type `dtype`, kiln_model.h's codes) from `*state` as the
 * protocol specifies: floats uniform in [0, 1), every other type zero. */
void measure_fill(void *buf, uint64_t bytes, int32_t dtype, uint64_t *state);

#endif
