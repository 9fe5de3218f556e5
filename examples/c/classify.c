/* The smallest program around a model compiled by Kiln: link the library, run the model on one
 * input, print the top class of its first output.
 *
 *   kiln compile model.onnx -o libmodel.so --header model.h [--target aarch64-linux-gnu]
 *   cc -std=c99 classify.c -o classify -L. -lmodel -Wl,-rpath,'$ORIGIN'
 *   ./classify input.bin      (the raw input tensor, e.g. numpy's x.tofile("input.bin"))
 *
 * It prints "class N (score S)". Any error is a message on stderr and exit status 1 (2 for bad
 * usage). C99 and C++ alike.
 */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    kiln_tensor_info in, out;
    kiln_model *model = NULL;
    void *x = NULL;
    float *y = NULL;
    FILE *f = NULL;
    int32_t status;
    size_t i, best = 0;
    int rc = 1;
    if (argc != 2) {
        fprintf(stderr, "usage: classify INPUT.bin\n");
        return 2;
    }
    if (kiln_model_num_inputs() != 1 || kiln_model_input_info(0, &in) != KILN_OK ||
        kiln_model_output_info(0, &out) != KILN_OK || out.dtype != KILN_DTYPE_F32) {
        fprintf(stderr, "classify runs models of one input and a float32 first output\n");
        return 1;
    }
    x = malloc(in.bytes ? in.bytes : 1);
    y = (float *)malloc(out.bytes ? out.bytes : 1);
    if (x == NULL || y == NULL) goto done;
    if ((f = fopen(argv[1], "rb")) == NULL || fread(x, 1, in.bytes, f) != in.bytes) {
        fprintf(stderr, "%s: cannot read %lu bytes of input `%s`\n", argv[1],
                (unsigned long)in.bytes, in.name);
        goto done;
    }
    /* 0 threads: one per online CPU. */
    if ((status = kiln_model_create(0, &model)) != KILN_OK) {
        fprintf(stderr, "kiln_model_create: %s\n", kiln_status_string(status));
        goto done;
    }
    {
        const void *inputs[1];
        void *outputs[KILN_MODEL_NUM_OUTPUTS] = {0};
        int32_t j;
        inputs[0] = x;
        outputs[0] = y;
        for (j = 1; j < KILN_MODEL_NUM_OUTPUTS; j++) {
            kiln_tensor_info o;
            kiln_model_output_info(j, &o);
            if ((outputs[j] = malloc(o.bytes ? o.bytes : 1)) == NULL) goto done;
        }
        status = kiln_model_run(model, inputs, outputs);
        for (j = 1; j < KILN_MODEL_NUM_OUTPUTS; j++) free(outputs[j]);
        if (status != KILN_OK) {
            fprintf(stderr, "kiln_model_run: %s\n", kiln_status_string(status));
            goto done;
        }
    }
    for (i = 1; i < out.bytes / sizeof(float); i++) {
        if (y[i] > y[best]) best = i;
    }
    printf("class %lu (score %g)\n", (unsigned long)best, (double)y[best]);
    rc = 0;
done:
    if (f != NULL) fclose(f);
    kiln_model_destroy(model);
    free(x);
    free(y);
    return rc;
}
