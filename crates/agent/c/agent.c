/* kiln-agent: the device side of Kiln's remote measurement (docs/rpc-protocol.md).
 *
 *   kiln-agent --listen ADDR:PORT --key-file FILE [--work-dir DIR] [--max-sessions N]
 *              [--session-timeout-s S]
 *
 * Each connection is served by a forked child, so a session that fails (a bad frame, a wrong
 * key, a crash) ends only that child; the parent keeps accepting. Every read and write has a
 * deadline (the socket's timeouts). Messages of this version: INFO (what the device is) and
 * BYE; anything else is answered with FAILED and the session goes on.
 *
 * Invariant: nothing the peer sends is acted on before the handshake authenticated it
 * (wire.c), the key is never printed, and the parent never reads from a client. */
#define _GNU_SOURCE
#include "device_info.h"
#include "wire.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

enum {
    MSG_INFO_REQUEST = 16,
    MSG_INFO = 17,
    MSG_FAILED = 30,
    MSG_BYE = 31,
};

static void logf_(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "kiln-agent[%d]: %s\n", (int)getpid(), line);
}

static long fd_read(void *ctx, void *buf, size_t n) {
    int fd = *(int *)ctx;
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r == 0) return (long)got;
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        got += (size_t)r;
    }
    return (long)got;
}

static int fd_write(void *ctx, const void *buf, size_t n) {
    int fd = *(int *)ctx;
    size_t put = 0;
    while (put < n) {
        ssize_t r = send(fd, (const char *)buf + put, n - put, MSG_NOSIGNAL);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        put += (size_t)r;
    }
    return 0;
}

static void set_deadline(int fd, int seconds) {
    struct timeval tv = {seconds, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static void send_failed(wire_session *s, const char *why) {
    (void)wire_send(s, MSG_FAILED, (const uint8_t *)why, strlen(why));
}

/* Serves one connection; returns the process exit status. */
static int serve(int fd, const char *peer, const wire_key *key, int session_timeout_s) {
    wire_io io = {fd_read, fd_write, &fd};
    wire_session s;
    set_deadline(fd, HANDSHAKE_TIMEOUT_S);
    int r = wire_accept(&s, &io, key, SESSION_CAP);
    if (r) {
        logf_("session from %s refused: %s", peer, s.error);
        return 1;
    }
    set_deadline(fd, session_timeout_s);
    logf_("session from %s authenticated", peer);
    for (;;) {
        uint8_t kind, *payload;
        size_t len;
        r = wire_recv(&s, &kind, &payload, &len);
        if (r == WIRE_CLOSED) {
            logf_("session from %s: the client closed the connection", peer);
            return 0;
        }
        if (r) {
            logf_("session from %s ended: %s", peer, s.error);
            return 1;
        }
        free(payload);
        switch (kind) {
        case MSG_INFO_REQUEST: {
            static char json[16384];
            size_t n = device_info_json(json, sizeof json, AGENT_VERSION, MAX_UPLOAD);
            r = wire_send(&s, MSG_INFO, (const uint8_t *)json, n);
            break;
        }
        case MSG_BYE:
            logf_("session from %s: bye", peer);
            return 0;
        default: {
            char why[64];
            snprintf(why, sizeof why, "unknown message kind %u", kind);
            send_failed(&s, why);
            r = s.poisoned ? WIRE_IO : WIRE_OK;
        }
        }
        if (r) {
            logf_("session from %s ended: %s", peer, s.error);
            return 1;
        }
    }
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: kiln-agent --listen ADDR:PORT --key-file FILE [--work-dir DIR]\n"
            "                  [--max-sessions N] [--session-timeout-s S]\n"
            "Serves Kiln's remote measurement protocol (version %d) on ADDR:PORT (port 0 picks a\n"
            "free one; the line 'listening on ADDR:PORT' on stdout says which). FILE holds the\n"
            "pre-shared key (at least 16 bytes; keep it chmod 600).\n",
            KILN_PROTOCOL_VERSION);
}

static int die(const char *fmt, const char *arg) {
    fprintf(stderr, "kiln-agent: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    return 2;
}

/* Splits "host:port" (or "[v6]:port") in place. */
static int split_addr(char *s, char **host, char **port) {
    char *colon = strrchr(s, ':');
    if (!colon) return -1;
    *colon = 0;
    *port = colon + 1;
    *host = s;
    if (s[0] == '[') {
        size_t n = strlen(s);
        if (n < 2 || s[n - 1] != ']') return -1;
        s[n - 1] = 0;
        *host = s + 1;
    }
    return **port ? 0 : -1;
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

int main(int argc, char **argv) {
    const char *listen_arg = NULL, *key_file = NULL, *work_dir = NULL;
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

    char addr[300];
    snprintf(addr, sizeof addr, "%s", listen_arg);
    char *host, *port;
    if (split_addr(addr, &host, &port)) return die("--listen %s is not ADDR:PORT", listen_arg);
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

    int active = 0;
    for (;;) {
        while (waitpid(-1, NULL, WNOHANG) > 0) active--;
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
            wire_io io = {fd_read, fd_write, &fd};
            set_deadline(fd, 1);
            (void)wire_write_frame(&io, busy, sizeof busy - 1);
            close(fd);
            logf_("refused %s: %d sessions active", peer, active);
            continue;
        }
        pid_t pid = fork();
        if (pid == 0) {
            close(lfd);
            int status = serve(fd, peer, &key, session_timeout_s);
            close(fd);
            _exit(status);
        }
        close(fd);
        if (pid > 0) active++;
        else logf_("cannot fork for %s", peer);
    }
}
