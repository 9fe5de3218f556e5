/* Two models compiled by Kiln, linked into one program.
 *
 *   kiln compile resnet8_cifar.onnx -o libresnet8.so --header resnet8.h --prefix resnet8
 *   kiln compile dscnn_kws.onnx     -o libkws.so     --header kws.h     --prefix kws
 *   cc two_models.c -o two_models -L. -lresnet8 -lkws -Wl,-rpath,'$ORIGIN'
 *   ./two_models resnet8_input.bin kws_input.bin OUT_DIR
 *
 * Each library exports its functions under its prefix (resnet8_model_run, kws_model_run, ...);
 * both headers share the ABI's definitions (kiln_tensor_info, KILN_OK, ...). The file is C99 and
 * C++11 alike. It reads each model's one input (raw little-endian bytes of its declared type),
 * runs both models and writes OUT_DIR/resnet8_output_J.bin and OUT_DIR/kws_output_J.bin. Any
 * error is a message on stderr and exit status 1.
 */
#include "resnet8.h"
#include "kws.h"

#include <stdio.h>
#include <stdlib.h>

/* The functions of one library, so one piece of code runs either. */
typedef struct model_api {
    const char *name;
    int32_t (*num_inputs)(void);
    int32_t (*num_outputs)(void);
    int32_t (*input_info)(int32_t, kiln_tensor_info *);
    int32_t (*output_info)(int32_t, kiln_tensor_info *);
    int32_t (*create)(int32_t, kiln_model **);
    int32_t (*run)(kiln_model *, const void *const *, void *const *);
    void (*destroy)(kiln_model *);
    const char *(*status_string)(int32_t);
} model_api;

static void *read_exact(const char *path, size_t bytes) {
    FILE *f = fopen(path, "rb");
    void *buf = malloc(bytes ? bytes : 1);
    if (f == NULL || buf == NULL || fread(buf, 1, bytes, f) != bytes || fgetc(f) != EOF) {
        fprintf(stderr, "%s: cannot read exactly %lu bytes\n", path, (unsigned long)bytes);
        if (f != NULL) fclose(f);
        free(buf);
        return NULL;
    }
    fclose(f);
    return buf;
}

/* Runs the model of `api` on the input in `input_path`; writes its outputs into `out_dir`. */
static int run_one(const model_api *api, const char *input_path, const char *out_dir) {
    kiln_tensor_info info;
    kiln_model *model = NULL;
    void *input = NULL;
    void *outputs[16] = {0};
    int32_t j, n = api->num_outputs(), status;
    int ok = 0;
    if (api->num_inputs() != 1 || n > 16) {
        fprintf(stderr, "%s: this example runs models of one input and at most 16 outputs\n",
                api->name);
        return 0;
    }
    if (api->input_info(0, &info) != KILN_OK || (input = read_exact(input_path, info.bytes)) == NULL)
        goto done;
    for (j = 0; j < n; j++) {
        if (api->output_info(j, &info) != KILN_OK || (outputs[j] = malloc(info.bytes ? info.bytes : 1)) == NULL)
            goto done;
    }
    if ((status = api->create(1, &model)) != KILN_OK) {
        fprintf(stderr, "%s: create: %s\n", api->name, api->status_string(status));
        goto done;
    }
    {
        const void *ins[1];
        ins[0] = input;
        if ((status = api->run(model, ins, outputs)) != KILN_OK) {
            fprintf(stderr, "%s: run: %s\n", api->name, api->status_string(status));
            goto done;
        }
    }
    for (j = 0; j < n; j++) {
        char path[4096];
        FILE *f;
        api->output_info(j, &info);
        snprintf(path, sizeof path, "%s/%s_output_%d.bin", out_dir, api->name, (int)j);
        f = fopen(path, "wb");
        if (f == NULL || fwrite(outputs[j], 1, info.bytes, f) != info.bytes) {
            fprintf(stderr, "%s: cannot write\n", path);
            if (f != NULL) fclose(f);
            goto done;
        }
        fclose(f);
    }
    ok = 1;
done:
    api->destroy(model);
    free(input);
    for (j = 0; j < 16; j++) free(outputs[j]);
    return ok;
}

int main(int argc, char **argv) {
    model_api resnet8 = {"resnet8", resnet8_model_num_inputs, resnet8_model_num_outputs,
                         resnet8_model_input_info, resnet8_model_output_info,
                         resnet8_model_create, resnet8_model_run, resnet8_model_destroy,
                         resnet8_status_string};
    model_api kws = {"kws", kws_model_num_inputs, kws_model_num_outputs, kws_model_input_info,
                     kws_model_output_info, kws_model_create, kws_model_run, kws_model_destroy,
                     kws_status_string};
    if (argc != 4) {
        fprintf(stderr, "usage: two_models RESNET8_INPUT.bin KWS_INPUT.bin OUT_DIR\n");
        return 2;
    }
    if (resnet8_abi_version() != KILN_ABI_VERSION || kws_abi_version() != KILN_ABI_VERSION) {
        fprintf(stderr, "a library was built for another ABI version\n");
        return 1;
    }
    return run_one(&resnet8, argv[1], argv[3]) && run_one(&kws, argv[2], argv[3]) ? 0 : 1;
}
