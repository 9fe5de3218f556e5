/* libFuzzer harness of the agent's wire decoder (wire.c): the input is what a peer sends on a
 * fresh connection. It runs the server handshake on it (fixed key; the agent's HELLO and any
 * ERROR go nowhere) and, past a handshake (never, short of forging HMAC-SHA256), the message
 * loop; then the client handshake (the registrar's, towards a tracker) on the same bytes; then
 * it reads them as a stream of frames under a small and a large cap.
 * Every path must end in a status, never a crash, a leak or a read past the input.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined crates/agent/c/fuzz_wire.c \
 *         crates/agent/c/wire.c -lcrypto -o fuzz_wire && ./fuzz_wire -max_total_time=600 */
#include "wire.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    const uint8_t *data;
    size_t size, pos;
} memory;

static long mem_read(void *ctx, void *buf, size_t n) {
    memory *m = ctx;
    size_t left = m->size - m->pos;
    size_t k = n < left ? n : left;
    memcpy(buf, m->data + m->pos, k);
    m->pos += k;
    return (long)k;
}

static int mem_write(void *ctx, const void *buf, size_t n) {
    (void)ctx;
    (void)buf;
    (void)n;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const uint8_t key_file[] = "fuzzing-key-of-enough-bytes\n";
    wire_key key;
    const char *why;
    if (wire_key_parse(&key, key_file, sizeof key_file - 1, &why)) abort();
    memory m = {data, size, 0};
    wire_io io = {mem_read, mem_write, &m};
    wire_session s;
    if (wire_accept(&s, &io, &key, 1u << 20) == WIRE_OK) {
        uint8_t kind, *payload;
        size_t len;
        while (wire_recv(&s, &kind, &payload, &len) == WIRE_OK) free(payload);
    }
    m.pos = 0;
    if (wire_connect(&s, &io, &key, 64u << 10) == WIRE_OK) {
        uint8_t kind, *payload;
        size_t len;
        while (wire_recv(&s, &kind, &payload, &len) == WIRE_OK) free(payload);
    }
    static const uint64_t caps[] = {KILN_PREAUTH_MAX, 1u << 20};
    for (int c = 0; c < 2; c++) {
        m.pos = 0;
        uint8_t *body;
        size_t len;
        while (wire_read_frame(&io, caps[c], &body, &len) == WIRE_OK) {
            if (!body || len == 0 || len > caps[c]) abort();
            free(body);
        }
    }
    /* Key files of every shape. */
    (void)wire_key_parse(&key, data, size, &why);
    return 0;
}
