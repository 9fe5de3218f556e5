/* Kiln RPC wire format, device side (see wire.h and docs/rpc-protocol.md). */
#include "wire.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t MAGIC[8] = {'K', 'I', 'L', 'N', 'R', 'P', 'C', 0};

const char *wire_strerror(int r) {
    switch (r) {
    case WIRE_OK: return "ok";
    case WIRE_CLOSED: return "the peer closed the connection";
    case WIRE_TRUNCATED: return "the stream ended inside a frame";
    case WIRE_TOO_LONG: return "frame length refused";
    case WIRE_IO: return "i/o error or deadline";
    case WIRE_MALFORMED: return "malformed handshake message";
    case WIRE_NOT_KILN: return "the peer is not a Kiln RPC endpoint";
    case WIRE_VERSION: return "protocol version mismatch";
    case WIRE_AUTH: return "authentication failed";
    case WIRE_BAD_MAC: return "frame failed verification";
    case WIRE_PEER_ERROR: return "the peer ended the session";
    case WIRE_POISONED: return "the session ended after an earlier error";
    case WIRE_NO_MEMORY: return "out of memory";
    case WIRE_CRYPTO: return "libcrypto failed";
    default: return "unknown error";
    }
}

static int is_space(uint8_t c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

int wire_key_parse(wire_key *key, const uint8_t *data, size_t len, const char **why) {
    size_t start = 0, end = len;
    while (start < end && is_space(data[start])) start++;
    while (end > start && is_space(data[end - 1])) end--;
    if (end - start < KILN_MIN_KEY_BYTES) {
        *why = "a key needs at least 16 bytes";
        return -1;
    }
    if (end - start > KILN_MAX_KEY_BYTES) {
        *why = "a key has at most 4096 bytes";
        return -1;
    }
    memcpy(key->bytes, data + start, end - start);
    key->len = end - start;
    return 0;
}

int wire_hmac(const uint8_t *key, size_t key_len, const uint8_t *const parts[],
              const size_t lens[], uint8_t out[KILN_TAG_BYTES]) {
    int ok = 0;
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    if (ctx && EVP_MAC_init(ctx, key, key_len, params)) {
        ok = 1;
        for (size_t i = 0; parts[i] && ok; i++) ok = EVP_MAC_update(ctx, parts[i], lens[i]);
        size_t n = 0;
        ok = ok && EVP_MAC_final(ctx, out, &n, KILN_TAG_BYTES) && n == KILN_TAG_BYTES;
    }
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);
    return ok ? WIRE_OK : WIRE_CRYPTO;
}

static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

int wire_read_frame(const wire_io *io, uint64_t cap, uint8_t **body, size_t *len) {
    uint8_t prefix[8];
    *body = NULL;
    *len = 0;
    long got = io->read(io->ctx, prefix, sizeof prefix);
    if (got == 0) return WIRE_CLOSED;
    if (got < 0) return WIRE_IO;
    if (got < (long)sizeof prefix) return WIRE_TRUNCATED;
    uint64_t n = get_u64(prefix);
    /* The length is checked before anything is allocated or read. */
    if (n == 0 || n > cap || n > (uint64_t)SIZE_MAX) return WIRE_TOO_LONG;
    uint8_t *b = malloc((size_t)n);
    if (!b) return WIRE_NO_MEMORY;
    got = io->read(io->ctx, b, (size_t)n);
    if (got != (long)n) {
        free(b);
        return got < 0 ? WIRE_IO : WIRE_TRUNCATED;
    }
    *body = b;
    *len = (size_t)n;
    return WIRE_OK;
}

int wire_write_frame(const wire_io *io, const uint8_t *body, size_t len) {
    uint8_t prefix[8];
    put_u64(prefix, len);
    if (io->write(io->ctx, prefix, sizeof prefix) || io->write(io->ctx, body, len)) return WIRE_IO;
    return WIRE_OK;
}

static int fail(wire_session *s, int r, const char *why) {
    s->poisoned = 1;
    snprintf(s->error, sizeof s->error, "%s%s%s", wire_strerror(r), why ? ": " : "", why ? why : "");
    return r;
}

/* Best effort: the peer learns why before the connection closes. */
static void send_error(const wire_io *io, const char *reason) {
    uint8_t body[200];
    size_t n = strlen(reason);
    if (n > sizeof body - 1) n = sizeof body - 1;
    body[0] = KILN_ERROR;
    memcpy(body + 1, reason, n);
    (void)wire_write_frame(io, body, n + 1);
}

static int tag_of(const uint8_t *key, size_t key_len, const char *label, const uint8_t *cn,
                  const uint8_t *sn, uint8_t out[KILN_TAG_BYTES]) {
    const uint8_t *parts[] = {(const uint8_t *)label, cn, sn, NULL};
    size_t lens[] = {strlen(label), KILN_NONCE_BYTES, KILN_NONCE_BYTES, 0};
    return wire_hmac(key, key_len, parts, lens, out);
}

/* Reads the peer's HELLO into `nonce`; a version mismatch is reported to the peer. */
static int read_hello(wire_session *s, const wire_io *io, uint8_t nonce[KILN_NONCE_BYTES]) {
    uint8_t *body;
    size_t len;
    int r = wire_read_frame(io, KILN_PREAUTH_MAX, &body, &len);
    if (r) return fail(s, r, "reading HELLO");
    if (body[0] == KILN_ERROR) {
        free(body);
        return fail(s, WIRE_PEER_ERROR, NULL);
    }
    if (body[0] != KILN_HELLO) {
        free(body);
        return fail(s, WIRE_MALFORMED, "not a HELLO");
    }
    if (len < 9 || memcmp(body + 1, MAGIC, 8) != 0) {
        free(body);
        return fail(s, WIRE_NOT_KILN, NULL);
    }
    /* The version first: a later version may send a longer HELLO. */
    if (len < 11) {
        free(body);
        return fail(s, WIRE_MALFORMED, "no version");
    }
    unsigned version = body[9] | (unsigned)body[10] << 8;
    if (version != KILN_PROTOCOL_VERSION) {
        free(body);
        char reason[120];
        snprintf(reason, sizeof reason,
                 "protocol version mismatch: this side speaks version %d, the peer version %u",
                 KILN_PROTOCOL_VERSION, version);
        send_error(io, reason);
        s->peer_version = version;
        return fail(s, WIRE_VERSION, reason);
    }
    if (len != 11 + KILN_NONCE_BYTES) {
        free(body);
        return fail(s, WIRE_MALFORMED, "a HELLO of the wrong length");
    }
    memcpy(nonce, body + 11, KILN_NONCE_BYTES);
    free(body);

    return WIRE_OK;
}

/* Sends our HELLO with a fresh nonce. */
static int send_hello(wire_session *s, const wire_io *io, uint8_t nonce[KILN_NONCE_BYTES]) {
    if (RAND_bytes(nonce, KILN_NONCE_BYTES) != 1)
        return fail(s, WIRE_CRYPTO, "no randomness for a nonce");
    uint8_t hello[1 + 8 + 2 + KILN_NONCE_BYTES];
    hello[0] = KILN_HELLO;
    memcpy(hello + 1, MAGIC, 8);
    hello[9] = KILN_PROTOCOL_VERSION & 0xff;
    hello[10] = KILN_PROTOCOL_VERSION >> 8;
    memcpy(hello + 11, nonce, KILN_NONCE_BYTES);
    int r = wire_write_frame(io, hello, sizeof hello);
    return r ? fail(s, r, "sending HELLO") : WIRE_OK;
}

/* Starts a session: our HELLO (nonce `ours`) sent, the peer's (nonce `theirs`) read. */
static int exchange_hellos(wire_session *s, const wire_io *io, uint64_t cap,
                           uint8_t ours[KILN_NONCE_BYTES], uint8_t theirs[KILN_NONCE_BYTES]) {
    memset(s, 0, sizeof *s);
    s->io = *io;
    s->cap = cap;
    int r = send_hello(s, io, ours);
    return r ? r : read_hello(s, io, theirs);
}

int wire_accept(wire_session *s, const wire_io *io, const wire_key *key, uint64_t cap) {
    uint8_t sn[KILN_NONCE_BYTES], cn[KILN_NONCE_BYTES];
    int r = exchange_hellos(s, io, cap, sn, cn);
    if (r) return r;

    uint8_t *body;
    size_t len;
    /* The client proves it holds the key first; the server answers only a correct proof. */
    r = wire_read_frame(io, KILN_PREAUTH_MAX, &body, &len);
    if (r) return fail(s, r, "reading AUTH");
    if (body[0] == KILN_ERROR) {
        free(body);
        return fail(s, WIRE_PEER_ERROR, NULL);
    }
    if (body[0] != KILN_AUTH || len != 1 + KILN_TAG_BYTES) {
        free(body);
        return fail(s, WIRE_MALFORMED, "not an AUTH");
    }
    uint8_t want[KILN_TAG_BYTES];
    r = tag_of(key->bytes, key->len, "kiln-rpc client auth", cn, sn, want);
    int good = r == WIRE_OK && CRYPTO_memcmp(want, body + 1, KILN_TAG_BYTES) == 0;
    free(body);
    if (r) return fail(s, r, "computing a tag");
    if (!good) {
        send_error(io, "authentication failed: the peer does not hold the same key");
        return fail(s, WIRE_AUTH, "the client does not hold the key");
    }
    uint8_t auth[1 + KILN_TAG_BYTES];
    auth[0] = KILN_AUTH;
    if ((r = tag_of(key->bytes, key->len, "kiln-rpc server auth", cn, sn, auth + 1)) ||
        (r = tag_of(key->bytes, key->len, "kiln-rpc client->server", cn, sn, s->recv_key)) ||
        (r = tag_of(key->bytes, key->len, "kiln-rpc server->client", cn, sn, s->send_key)))
        return fail(s, r, "computing keys");
    r = wire_write_frame(io, auth, sizeof auth);
    if (r) return fail(s, r, "sending AUTH");
    return WIRE_OK;
}

int wire_connect(wire_session *s, const wire_io *io, const wire_key *key, uint64_t cap) {
    uint8_t sn[KILN_NONCE_BYTES], cn[KILN_NONCE_BYTES];
    int r = exchange_hellos(s, io, cap, cn, sn);
    if (r) return r;
    uint8_t auth[1 + KILN_TAG_BYTES];
    auth[0] = KILN_AUTH;
    if ((r = tag_of(key->bytes, key->len, "kiln-rpc client auth", cn, sn, auth + 1)))
        return fail(s, r, "computing a tag");
    r = wire_write_frame(io, auth, sizeof auth);
    if (r) return fail(s, r, "sending AUTH");
    uint8_t *body;
    size_t len;
    r = wire_read_frame(io, KILN_PREAUTH_MAX, &body, &len);
    if (r) return fail(s, r, "reading AUTH");
    if (body[0] == KILN_ERROR) {
        char reason[120];
        size_t n = len - 1 < sizeof reason - 1 ? len - 1 : sizeof reason - 1;
        memcpy(reason, body + 1, n);
        reason[n] = 0;
        for (size_t i = 0; i < n; i++)
            if (reason[i] < 0x20 || reason[i] > 0x7e) reason[i] = '?';
        free(body);
        return fail(s, WIRE_PEER_ERROR, reason);
    }
    uint8_t want[KILN_TAG_BYTES];
    r = tag_of(key->bytes, key->len, "kiln-rpc server auth", cn, sn, want);
    int good = r == WIRE_OK && body[0] == KILN_AUTH && len == 1 + KILN_TAG_BYTES &&
               CRYPTO_memcmp(want, body + 1, KILN_TAG_BYTES) == 0;
    free(body);
    if (!good) return fail(s, WIRE_AUTH, "the server does not hold the key");
    if ((r = tag_of(key->bytes, key->len, "kiln-rpc client->server", cn, sn, s->send_key)) ||
        (r = tag_of(key->bytes, key->len, "kiln-rpc server->client", cn, sn, s->recv_key)))
        return fail(s, r, "computing keys");
    return WIRE_OK;
}

static int message_tag(const uint8_t key[KILN_TAG_BYTES], uint64_t seq, uint8_t kind,
                       const uint8_t *payload, size_t len, uint8_t out[KILN_TAG_BYTES]) {
    uint8_t seq_le[8];
    put_u64(seq_le, seq);
    const uint8_t *parts[] = {seq_le, &kind, len ? payload : (const uint8_t *)"", NULL};
    size_t lens[] = {8, 1, len, 0};
    return wire_hmac(key, KILN_TAG_BYTES, parts, lens, out);
}

int wire_send(wire_session *s, uint8_t kind, const uint8_t *payload, size_t len) {
    if (s->poisoned) return WIRE_POISONED;
    if (kind < KILN_FIRST_APP_KIND) return fail(s, WIRE_MALFORMED, "a reserved kind");
    if (len > s->cap || 1 + len + KILN_TAG_BYTES > s->cap) return fail(s, WIRE_TOO_LONG, "sending");
    size_t n = 1 + len + KILN_TAG_BYTES;
    uint8_t *body = malloc(n);
    if (!body) return fail(s, WIRE_NO_MEMORY, NULL);
    body[0] = kind;
    if (len) memcpy(body + 1, payload, len);
    int r = message_tag(s->send_key, s->send_seq, kind, payload, len, body + 1 + len);
    if (!r) r = wire_write_frame(&s->io, body, n);
    free(body);
    if (r) return fail(s, r, "sending");
    s->send_seq++;
    return WIRE_OK;
}

int wire_recv(wire_session *s, uint8_t *kind, uint8_t **payload, size_t *len) {
    *payload = NULL;
    *len = 0;
    if (s->poisoned) return WIRE_POISONED;
    uint8_t *body;
    size_t n;
    int r = wire_read_frame(&s->io, s->cap, &body, &n);
    if (r) return fail(s, r, "receiving");
    if (n < 1 + KILN_TAG_BYTES) {
        free(body);
        return fail(s, WIRE_BAD_MAC, "a frame shorter than a tag");
    }
    size_t plen = n - 1 - KILN_TAG_BYTES;
    uint8_t want[KILN_TAG_BYTES];
    r = message_tag(s->recv_key, s->recv_seq, body[0], body + 1, plen, want);
    if (r || CRYPTO_memcmp(want, body + 1 + plen, KILN_TAG_BYTES) != 0) {
        free(body);
        char why[64];
        snprintf(why, sizeof why, "frame %llu", (unsigned long long)s->recv_seq);
        return fail(s, r ? r : WIRE_BAD_MAC, why);
    }
    s->recv_seq++;
    *kind = body[0];
    if (plen) {
        memmove(body, body + 1, plen);
        *payload = body;
    } else {
        free(body);
    }
    *len = plen;
    return WIRE_OK;
}
