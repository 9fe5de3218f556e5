/* A library with Kiln's model C ABI (kiln_model.h) whose run copies its one f32[4] input to its
 * output and then does FAKE_BODY: the misbehaving candidates of the agent's and the remote
 * runner's tests (`cc -shared -fPIC -DFAKE_BODY='...'`). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef FAKE_BODY
#define FAKE_BODY
#endif

typedef struct {
    const char *name;
    int32_t dtype, rank;
    const int64_t *shape;
    size_t bytes;
} info;

static const int64_t shape[1] = {4};

int32_t kiln_model_num_inputs(void) { return 1; }
int32_t kiln_model_num_outputs(void) { return 1; }
int32_t kiln_model_input_info(int32_t i, info *t) {
    t->name = "x";
    t->dtype = 0;
    t->rank = 1;
    t->shape = shape;
    t->bytes = 16;
    return i != 0;
}
int32_t kiln_model_output_info(int32_t i, info *t) { return kiln_model_input_info(i, t); }
int32_t kiln_model_create(int32_t n, void **m) {
    (void)n;
    *m = malloc(1);
    return 0;
}
void kiln_model_destroy(void *m) { free(m); }
int32_t kiln_model_run(void *m, const void *const *in, void *const *out) {
    (void)m;
    memcpy(out[0], in[0], 16);
    FAKE_BODY;
    return 0;
}
