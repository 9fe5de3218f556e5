/* kiln-agent: the device side of Kiln's remote measurement (docs/rpc-protocol.md).
 *
 *   kiln-agent --listen ADDR:PORT --key-file FILE [--work-dir DIR] [--max-sessions N]
 *              [--session-timeout-s S] [--tracker HOST:PORT --device-key NAME
 *              [--advertise-host HOST]]
 *
 * Each connection is served by a forked child, so a session that fails (a bad frame, a wrong
 * key, a crash) ends only that child; the parent keeps accepting. Every read and write has a
 * deadline (the socket's timeouts). Messages: INFO (what the device is), a chunked upload of a
 * library (size capped, SHA-256 checked, stored as HASH.so in the session's own directory),
 * MEASURE (timed in a forked grandchild with resource limits and a watchdog, measure.c),
 * DELETE and BYE; anything else is answered with FAILED and the session goes on. With
 * --tracker, a registrar process (register.c) keeps the agent in the tracker's pool.
 *
 * Invariant: nothing the peer sends is acted on before the handshake authenticated it
 * (wire.c), the key is never printed, the parent never reads from a client, no path comes from
 * the peer (files are named by their content hash inside work/session-PID), and a session's
 * directory is removed when it ends (by the child, or by the parent when it reaps a child that
 * could not). */
#define _GNU_SOURCE
#include "device_info.h"
#include "measure.h"
#include "net.h"
#include "register.h"
#include "wire.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <openssl/evp.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define AGENT_VERSION "0.1.0"
/* The largest frame after the handshake; uploads are chunked below it. */
#define SESSION_CAP (1u << 20)
/* The largest library a session may upload. */
#define MAX_UPLOAD (256ull << 20)
#define HANDSHAKE_TIMEOUT_S 10

/* What one session may keep stored at once. */
#define SESSION_STORE (1ull << 30)
/* The address-space limit of a measured library when the request gives none. */
#define DEFAULT_MEMORY_MB 4096ull

enum {
    MSG_INFO_REQUEST = 16,
    MSG_INFO = 17,
    MSG_UPLOAD_BEGIN = 18,
    MSG_UPLOAD_READY = 19,
    MSG_UPLOAD_CHUNK = 20,
    MSG_UPLOAD_END = 21,
    MSG_UPLOADED = 22,
    MSG_MEASURE = 23,
    MSG_MEASURED = 24,
    MSG_DELETE = 25,
    MSG_DELETED = 26,
    MSG_FAILED = 30,
    MSG_BYE = 31,
};

/* The upload in progress in a session. */
typedef struct {
    FILE *file;
    uint64_t total, received;
    uint8_t hash[32];
    EVP_MD_CTX *md;
    char failed[160];
} upload_t;

/* A session's state: its directory (work/session-PID, removed when it ends), the upload in
 * progress and the bytes it has stored. */
typedef struct {
    char dir[4200];
    upload_t up;
    uint64_t stored;
} session_t;

static void send_failed(wire_session *s, const char *why) {
    (void)wire_send(s, MSG_FAILED, (const uint8_t *)why, strlen(why));
}

static uint64_t get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void hex(const uint8_t hash[32], char out[65]) {
    for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", hash[i]);
}

/* The stored library of content hash `hash` (a name the agent makes, never the peer's). */
static void library_path(const session_t *ss, const uint8_t hash[32], char *out, size_t cap) {
    char h[65];
    hex(hash, h);
    snprintf(out, cap, "%s/%s.so", ss->dir, h);
}

/* Removes a session directory and the files in it (it holds no subdirectories). */
static void remove_session_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char path[4600];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

static void upload_reset(session_t *ss) {
    upload_t *u = &ss->up;
    if (u->file) fclose(u->file);
    if (u->md) EVP_MD_CTX_free(u->md);
    char part[4300];
    snprintf(part, sizeof part, "%s/upload.part", ss->dir);
    unlink(part);
    memset(u, 0, sizeof *u);
}

static int on_upload_begin(wire_session *s, session_t *ss, const uint8_t *p, size_t len) {
    upload_reset(ss);
    if (len != 8 + 32) {
        send_failed(s, "UPLOAD_BEGIN takes a size and a SHA-256");
        return s->poisoned;
    }
    uint64_t total = get_u64(p);
    char why[160];
    if (total == 0 || total > MAX_UPLOAD || ss->stored + total > SESSION_STORE) {
        snprintf(why, sizeof why,
                 "an upload of %llu bytes refused: at most %llu bytes, %llu per session",
                 (unsigned long long)total, MAX_UPLOAD, SESSION_STORE);
        send_failed(s, why);
        return s->poisoned;
    }
    char part[4300];
    snprintf(part, sizeof part, "%s/upload.part", ss->dir);
    int fd = open(part, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    upload_t *u = &ss->up;
    u->file = fd >= 0 ? fdopen(fd, "wb") : NULL;
    u->md = EVP_MD_CTX_new();
    if (!u->file || !u->md || !EVP_DigestInit_ex(u->md, EVP_sha256(), NULL)) {
        if (fd >= 0 && !u->file) close(fd);
        upload_reset(ss);
        send_failed(s, "cannot store an upload in the work dir");
        return s->poisoned;
    }
    u->total = total;
    memcpy(u->hash, p + 8, 32);
    uint8_t ready[4];
    /* Chunks that fit a frame with their kind and tag. */
    put_u32(ready, SESSION_CAP - 1 - KILN_TAG_BYTES);
    return wire_send(s, MSG_UPLOAD_READY, ready, sizeof ready);
}

/* Chunks have no reply: a failure is remembered and reported at UPLOAD_END. */
static void on_upload_chunk(session_t *ss, const uint8_t *p, size_t len) {
    upload_t *u = &ss->up;
    if (!u->file || u->failed[0]) {
        if (!u->failed[0]) snprintf(u->failed, sizeof u->failed, "a chunk without UPLOAD_BEGIN");
        return;
    }
    if (len > u->total - u->received) {
        snprintf(u->failed, sizeof u->failed, "more bytes than the %llu announced",
                 (unsigned long long)u->total);
        return;
    }
    if (fwrite(p, 1, len, u->file) != len || !EVP_DigestUpdate(u->md, p, len)) {
        snprintf(u->failed, sizeof u->failed, "cannot write the upload: %s", strerror(errno));
        return;
    }
    u->received += len;
}

static int on_upload_end(wire_session *s, session_t *ss) {
    upload_t *u = &ss->up;
    char why[200];
    uint8_t got[32];
    unsigned n = 0;
    int flushed = u->file && fflush(u->file) == 0 && fsync(fileno(u->file)) == 0;
    if (!u->file && !u->failed[0]) snprintf(u->failed, sizeof u->failed, "no upload in progress");
    else if (!u->failed[0] && u->received != u->total)
        snprintf(u->failed, sizeof u->failed, "%llu of %llu bytes received",
                 (unsigned long long)u->received, (unsigned long long)u->total);
    else if (!u->failed[0] && (!flushed || !EVP_DigestFinal_ex(u->md, got, &n)))
        snprintf(u->failed, sizeof u->failed, "cannot finish the upload");
    else if (!u->failed[0] && memcmp(got, u->hash, 32) != 0)
        snprintf(u->failed, sizeof u->failed, "the content does not have the announced SHA-256");
    if (u->failed[0]) {
        snprintf(why, sizeof why, "upload failed: %s", u->failed);
        upload_reset(ss);
        send_failed(s, why);
        return s->poisoned;
    }
    char part[4300], lib[4300];
    snprintf(part, sizeof part, "%s/upload.part", ss->dir);
    library_path(ss, u->hash, lib, sizeof lib);
    fclose(u->file);
    u->file = NULL;
    uint64_t total = u->total;
    uint8_t hash[32];
    memcpy(hash, u->hash, 32);
    int moved = chmod(part, 0700) == 0 && rename(part, lib) == 0;
    upload_reset(ss);
    if (!moved) {
        send_failed(s, "cannot store the upload");
        return s->poisoned;
    }
    ss->stored += total;
    return wire_send(s, MSG_UPLOADED, hash, 32);
}

static int on_measure(wire_session *s, session_t *ss, const uint8_t *p, size_t len) {
    if (len != 32 + 6 * 4 + 16) {
        send_failed(s, "MEASURE takes a SHA-256 and the timing parameters");
        return s->poisoned;
    }
    char lib[4300];
    library_path(ss, p, lib, sizeof lib);
    if (access(lib, R_OK)) {
        send_failed(s, "no library of that SHA-256 was uploaded in this session");
        return s->poisoned;
    }
    const uint8_t *q = p + 32;
    measure_request req = {
        .threads = (int32_t)get_u32(q),
        .number = get_u32(q + 4),
        .repeat = get_u32(q + 8),
        .min_repeat_ms = get_u32(q + 12),
        .warmup = get_u32(q + 16),
        .timeout_ms = get_u32(q + 20),
        .seed = get_u64(q + 24),
        .memory_mb = get_u64(q + 32),
    };
    if (req.timeout_ms == 0 || req.timeout_ms > 3600u * 1000u) req.timeout_ms = 60000;
    static measure_result r;
    measure_library(lib, &req, DEFAULT_MEMORY_MB, &r);
    /* status u8 | checksum [32] | number u32 | count u32 | f64 x count | message */
    static uint8_t out[1 + 32 + 8 + 8 * MEASURE_MAX_REPEAT + sizeof r.message];
    size_t n = 0;
    out[n++] = (uint8_t)r.status;
    memcpy(out + n, r.checksum, 32);
    n += 32;
    put_u32(out + n, r.number);
    put_u32(out + n + 4, r.count);
    n += 8;
    for (uint32_t i = 0; i < r.count && i < MEASURE_MAX_REPEAT; i++) {
        uint64_t bits;
        memcpy(&bits, &r.seconds[i], 8);
        for (int b = 0; b < 8; b++) out[n++] = (uint8_t)(bits >> (8 * b));
    }
    size_t m = strnlen(r.message, sizeof r.message);
    memcpy(out + n, r.message, m);
    n += m;
    net_log("measured %.16s...: status %d, %u timings of %u calls%s%s", lib + strlen(ss->dir) + 1,
          r.status, r.count, r.number, m ? ": " : "", r.message);
    return wire_send(s, MSG_MEASURED, out, n);
}

static int on_delete(wire_session *s, session_t *ss, const uint8_t *p, size_t len) {
    char lib[4300];
    struct stat st;
    if (len != 32) {
        send_failed(s, "DELETE takes a SHA-256");
        return s->poisoned;
    }
    library_path(ss, p, lib, sizeof lib);
    if (stat(lib, &st) || unlink(lib)) {
        send_failed(s, "no library of that SHA-256 is stored in this session");
        return s->poisoned;
    }
    ss->stored -= (uint64_t)st.st_size <= ss->stored ? (uint64_t)st.st_size : ss->stored;
    return wire_send(s, MSG_DELETED, p, 32);
}

/* Serves one connection; returns the process exit status. */
static int session_loop(wire_session *s, session_t *ss, const char *peer);

static int serve(int fd, const char *peer, const wire_key *key, int session_timeout_s,
                 const char *work_dir) {
    wire_io io = {net_read, net_write, &fd};
    wire_session s;
    net_set_deadline(fd, HANDSHAKE_TIMEOUT_S);
    int r = wire_accept(&s, &io, key, SESSION_CAP);
    if (r) {
        net_log("session from %s refused: %s", peer, s.error);
        return 1;
    }
    net_set_deadline(fd, session_timeout_s);
    net_log("session from %s authenticated", peer);
    static session_t ss;
    memset(&ss, 0, sizeof ss);
    snprintf(ss.dir, sizeof ss.dir, "%s/session-%d", work_dir, (int)getpid());
    if (mkdir(ss.dir, 0700) && errno != EEXIST) {
        net_log("session from %s: cannot create %s", peer, ss.dir);
        return 1;
    }
    int status = session_loop(&s, &ss, peer);
    /* What the session stored goes with it. */
    upload_reset(&ss);
    remove_session_dir(ss.dir);
    return status;
}

static int session_loop(wire_session *s, session_t *ss, const char *peer) {
    int r;
    for (;;) {
        uint8_t kind, *payload;
        size_t len;
        r = wire_recv(s, &kind, &payload, &len);
        if (r == WIRE_CLOSED) {
            net_log("session from %s: the client closed the connection", peer);
            return 0;
        }
        if (r) {
            net_log("session from %s ended: %s", peer, s->error);
            return 1;
        }
        switch (kind) {
        case MSG_UPLOAD_BEGIN:
            r = on_upload_begin(s, ss, payload, len) ? WIRE_IO : WIRE_OK;
            break;
        case MSG_UPLOAD_CHUNK:
            on_upload_chunk(ss, payload, len);
            r = WIRE_OK;
            break;
        case MSG_UPLOAD_END:
            r = on_upload_end(s, ss) ? WIRE_IO : WIRE_OK;
            break;
        case MSG_MEASURE:
            r = on_measure(s, ss, payload, len) ? WIRE_IO : WIRE_OK;
            break;
        case MSG_DELETE:
            r = on_delete(s, ss, payload, len) ? WIRE_IO : WIRE_OK;
            break;
        case MSG_INFO_REQUEST: {
            static char json[16384];
            size_t n = device_info_json(json, sizeof json, AGENT_VERSION, MAX_UPLOAD);
            r = wire_send(s, MSG_INFO, (const uint8_t *)json, n);
            break;
        }
        case MSG_BYE:
            free(payload);
            net_log("session from %s: bye", peer);
            return 0;
        default: {
            char why[64];
            snprintf(why, sizeof why, "unknown message kind %u", kind);
            send_failed(s, why);
            r = s->poisoned ? WIRE_IO : WIRE_OK;
        }
        }
        free(payload);
        if (r) {
            net_log("session from %s ended: %s", peer, s->error);
            return 1;
        }
    }
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: kiln-agent --listen ADDR:PORT --key-file FILE [--work-dir DIR]\n"
            "                  [--max-sessions N] [--session-timeout-s S]\n"
            "                  [--tracker HOST:PORT --device-key NAME [--advertise-host HOST]]\n"
            "Serves Kiln's remote measurement protocol (version %d) on ADDR:PORT (port 0 picks a\n"
            "free one; the line 'listening on ADDR:PORT' on stdout says which). FILE holds the\n"
            "pre-shared key (at least 16 bytes; keep it chmod 600). With --tracker the agent\n"
            "joins that tracker's pool under NAME; clients reach it at the address the tracker\n"
            "sees its registration come from (or HOST) and the port it listens on.\n",
            KILN_PROTOCOL_VERSION);
}

static int die(const char *fmt, const char *arg) {
    fprintf(stderr, "kiln-agent: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    return 2;
}

static int read_key(const char *path, wire_key *key) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return die("cannot read the key file %s", path);
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        return die("the key file %s is not a regular file", path);
    }
    if (st.st_mode & 077)
        fprintf(stderr, "kiln-agent: warning: the key file %s is readable by others (chmod 600 it)\n",
                path);
    uint8_t buf[KILN_MAX_KEY_BYTES + 64];
    ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    if (n < 0) return die("cannot read the key file %s", path);
    const char *why;
    if (wire_key_parse(key, buf, (size_t)n, &why)) {
        fprintf(stderr, "kiln-agent: the key file %s: %s\n", path, why);
        return 2;
    }
    memset(buf, 0, sizeof buf);
    return 0;
}

/* Removes the session directories an agent killed with its sessions left behind: those whose
 * process is gone (another agent may share the work dir). */
static void remove_stale_sessions(const char *work_dir) {
    DIR *d = opendir(work_dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, "session-", 8) != 0) continue;
        long pid = strtol(e->d_name + 8, NULL, 10);
        if (pid <= 0 || kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        char dir[4200];
        snprintf(dir, sizeof dir, "%.4096s/session-%ld", work_dir, pid);
        remove_session_dir(dir);
    }
    closedir(d);
}

/* Forks the process that keeps the agent registered with its tracker (it dies with the agent). */
static pid_t start_registrar(const registrar_config *c, int lfd, pid_t agent) {
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != agent) _exit(0);
        close(lfd);
        registrar_run(c);
        _exit(0);
    }
    if (pid < 0) net_log("cannot fork the registrar");
    return pid;
}

int main(int argc, char **argv) {
    const char *listen_arg = NULL, *key_file = NULL, *work_dir = NULL;
    const char *tracker = NULL, *device_key = NULL, *advertise = NULL;
    int max_sessions = 4, session_timeout_s = 120;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--version")) {
            printf("kiln-agent %s (protocol %d)\n", AGENT_VERSION, KILN_PROTOCOL_VERSION);
            return 0;
        }
        if (!v) {
            usage(stderr);
            return die("%s needs a value", a);
        }
        if (!strcmp(a, "--listen")) listen_arg = v;
        else if (!strcmp(a, "--key-file")) key_file = v;
        else if (!strcmp(a, "--work-dir")) work_dir = v;
        else if (!strcmp(a, "--max-sessions")) max_sessions = atoi(v);
        else if (!strcmp(a, "--session-timeout-s")) session_timeout_s = atoi(v);
        else if (!strcmp(a, "--tracker")) tracker = v;
        else if (!strcmp(a, "--device-key")) device_key = v;
        else if (!strcmp(a, "--advertise-host")) advertise = v;
        else {
            usage(stderr);
            return die("unknown argument %s", a);
        }
        i++;
    }
    if (!listen_arg || !key_file) {
        usage(stderr);
        return die("%s", "--listen and --key-file are required");
    }
    if (max_sessions < 1 || session_timeout_s < 1)
        return die("%s", "--max-sessions and --session-timeout-s must be positive");
    if (!tracker != !device_key)
        return die("%s", "--tracker and --device-key go together");
    if (device_key && !registrar_valid_name(device_key, 0))
        return die("--device-key %s: use 1-64 of A-Z a-z 0-9 . _ -", device_key);
    if (advertise && (!tracker || !registrar_valid_name(advertise, 1)))
        return die("--advertise-host %s: a host name or address, with --tracker", advertise);
    wire_key key;
    int rc = read_key(key_file, &key);
    if (rc) return rc;
    char work[4096];
    if (!work_dir) {
        const char *tmp = getenv("TMPDIR");
        snprintf(work, sizeof work, "%s/kiln-agent-%d", tmp && *tmp ? tmp : "/tmp", (int)getuid());
        work_dir = work;
    }
    if (mkdir(work_dir, 0700) && errno != EEXIST) return die("cannot create the work dir %s", work_dir);
    remove_stale_sessions(work_dir);

    char addr[300];
    snprintf(addr, sizeof addr, "%s", listen_arg);
    char *host, *port;
    if (net_split_addr(addr, &host, &port)) return die("--listen %s is not ADDR:PORT", listen_arg);
    struct addrinfo hints = {0}, *ai;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV;
    if (getaddrinfo(host, port, &hints, &ai)) return die("--listen %s is not a numeric ADDR:PORT", listen_arg);
    int lfd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
        bind(lfd, ai->ai_addr, ai->ai_addrlen) || listen(lfd, 16)) {
        freeaddrinfo(ai);
        return die("cannot listen on %s", listen_arg);
    }
    freeaddrinfo(ai);
    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    char bhost[INET6_ADDRSTRLEN] = "?", bport[16] = "?";
    if (!getsockname(lfd, (struct sockaddr *)&bound, &blen))
        getnameinfo((struct sockaddr *)&bound, blen, bhost, sizeof bhost, bport, sizeof bport,
                    NI_NUMERICHOST | NI_NUMERICSERV);
    signal(SIGPIPE, SIG_IGN);
    printf("kiln-agent %s: listening on %s%s%s:%s (protocol %d, work dir %s)\n", AGENT_VERSION,
           strchr(bhost, ':') ? "[" : "", bhost, strchr(bhost, ':') ? "]" : "", bport,
           KILN_PROTOCOL_VERSION, work_dir);
    fflush(stdout);

    registrar_config registrar = {tracker, device_key, advertise, atoi(bport), NULL, &key};
    static char info[16384];
    if (tracker) {
        device_info_json(info, sizeof info, AGENT_VERSION, MAX_UPLOAD);
        registrar.info_json = info;
    }
    pid_t agent = getpid(), registrar_pid = tracker ? start_registrar(&registrar, lfd, agent) : 0;
    int active = 0;
    for (;;) {
        pid_t done;
        while ((done = waitpid(-1, NULL, WNOHANG)) > 0) {
            if (done == registrar_pid) {
                net_log("the registrar ended; starting another");
                registrar_pid = start_registrar(&registrar, lfd, agent);
                continue;
            }
            active--;
            /* A child killed before it cleaned up leaves its session directory behind. */
            char dir[4200];
            snprintf(dir, sizeof dir, "%s/session-%d", work_dir, (int)done);
            remove_session_dir(dir);
        }
        struct pollfd p = {lfd, POLLIN, 0};
        int ready = poll(&p, 1, 500);
        if (ready <= 0) continue;
        struct sockaddr_storage from;
        socklen_t flen = sizeof from;
        int fd = accept4(lfd, (struct sockaddr *)&from, &flen, SOCK_CLOEXEC);
        if (fd < 0) continue;
        char fhost[INET6_ADDRSTRLEN] = "?", fport[16] = "?", peer[80];
        getnameinfo((struct sockaddr *)&from, flen, fhost, sizeof fhost, fport, sizeof fport,
                    NI_NUMERICHOST | NI_NUMERICSERV);
        snprintf(peer, sizeof peer, "%s:%s", fhost, fport);
        if (active >= max_sessions) {
            /* Before authentication, so only the fixed reason goes out. */
            static const uint8_t busy[] = "\x03" "the agent is busy: all sessions are in use";
            wire_io io = {net_read, net_write, &fd};
            net_set_deadline(fd, 1);
            (void)wire_write_frame(&io, busy, sizeof busy - 1);
            close(fd);
            net_log("refused %s: %d sessions active", peer, active);
            continue;
        }
        pid_t pid = fork();
        if (pid == 0) {
            /* A session ends with its agent: a killed agent is a lost device, not one that
             * goes on measuring unseen. */
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != agent) _exit(1);
            close(lfd);
            int status = serve(fd, peer, &key, session_timeout_s, work_dir);
            close(fd);
            _exit(status);
        }
        close(fd);
        if (pid > 0) active++;
        else net_log("cannot fork for %s", peer);
    }
}
