/* Kiln RPC wire format, device side: frames, the handshake and authenticated messages, as
 * docs/rpc-protocol.md specifies them (the host side is crates/rpc).
 *
 * Invariant: no byte from the peer is trusted before it is checked. A frame's length is checked
 * against the cap before anything is allocated or read (256 bytes before authentication); a
 * message is returned only after its HMAC-SHA256 tag verified with the next expected sequence
 * number; any error poisons the session, which then refuses every later call. The reading side
 * is a callback so the same code runs on sockets (the agent) and on memory (the fuzz harness). */
#ifndef KILN_WIRE_H
#define KILN_WIRE_H

#include <stddef.h>
#include <stdint.h>

#define KILN_PROTOCOL_VERSION 1
#define KILN_PREAUTH_MAX 256u
#define KILN_NONCE_BYTES 32
#define KILN_TAG_BYTES 32
#define KILN_MIN_KEY_BYTES 16
#define KILN_MAX_KEY_BYTES 4096

enum {
    KILN_HELLO = 1,
    KILN_AUTH = 2,
    KILN_ERROR = 3,
    KILN_FIRST_APP_KIND = 16,
};

/* Results of the wire functions: 0 is success. */
enum {
    WIRE_OK = 0,
    WIRE_CLOSED = -1,     /* the peer closed before a frame began */
    WIRE_TRUNCATED = -2,  /* the stream ended inside a frame */
    WIRE_TOO_LONG = -3,   /* a length of 0 or over the cap */
    WIRE_IO = -4,         /* a read or write failed (a deadline passed) */
    WIRE_MALFORMED = -5,  /* a handshake message of the wrong form */
    WIRE_NOT_KILN = -6,   /* bad magic */
    WIRE_VERSION = -7,    /* another protocol version */
    WIRE_AUTH = -8,       /* a wrong key */
    WIRE_BAD_MAC = -9,    /* tampered, replayed, reordered or dropped */
    WIRE_PEER_ERROR = -10, /* the peer sent ERROR */
    WIRE_POISONED = -11,  /* an earlier error ended the session */
    WIRE_NO_MEMORY = -12,
    WIRE_CRYPTO = -13,    /* libcrypto failed */
};

/* Reads exactly `n` bytes into `buf`: returns n, 0 when the stream ended before the first
 * byte, a count in 1..n-1 when it ended inside, or -1 on an error. */
typedef long (*wire_read_fn)(void *ctx, void *buf, size_t n);
/* Writes all `n` bytes: 0, or -1 on an error. */
typedef int (*wire_write_fn)(void *ctx, const void *buf, size_t n);

typedef struct {
    wire_read_fn read;
    wire_write_fn write;
    void *ctx;
} wire_io;

/* The pre-shared key: a key file's bytes with surrounding ASCII whitespace removed. */
typedef struct {
    uint8_t bytes[KILN_MAX_KEY_BYTES];
    size_t len;
} wire_key;

/* Parses a key file's contents; 0, or -1 with `why` set when too short or too long. */
int wire_key_parse(wire_key *key, const uint8_t *data, size_t len, const char **why);

/* An authenticated session. */
typedef struct {
    wire_io io;
    uint8_t send_key[KILN_TAG_BYTES];
    uint8_t recv_key[KILN_TAG_BYTES];
    uint64_t send_seq, recv_seq;
    uint64_t cap;
    int poisoned;
    /* Why the last call failed, for the log (never the key). */
    char error[160];
    /* The peer's protocol version when the handshake failed on it. */
    unsigned peer_version;
} wire_session;

/* Reads one frame of at most `cap` bytes into a fresh buffer (`*body`, freed by the caller). */
int wire_read_frame(const wire_io *io, uint64_t cap, uint8_t **body, size_t *len);
int wire_write_frame(const wire_io *io, const uint8_t *body, size_t len);

/* Runs the server side of the handshake with `key` (a wrong key gets an ERROR before the
 * close); frames afterwards are capped at `cap` bytes. */
int wire_accept(wire_session *s, const wire_io *io, const wire_key *key, uint64_t cap);

/* Runs the client side of the handshake with `key` (the agent registering with a tracker). */
int wire_connect(wire_session *s, const wire_io *io, const wire_key *key, uint64_t cap);

/* Sends one message of application kind `kind` (>= KILN_FIRST_APP_KIND). */
int wire_send(wire_session *s, uint8_t kind, const uint8_t *payload, size_t len);
/* Receives the next message: its kind, and its payload in a fresh buffer (freed by the caller;
 * NULL when empty). */
int wire_recv(wire_session *s, uint8_t *kind, uint8_t **payload, size_t *len);

/* A short description of result `r`. */
const char *wire_strerror(int r);

/* HMAC-SHA256 of the concatenation of up to 4 parts (NULL-terminated); 0 or WIRE_CRYPTO. */
int wire_hmac(const uint8_t *key, size_t key_len, const uint8_t *const parts[],
              const size_t lens[], uint8_t out[KILN_TAG_BYTES]);

#endif
