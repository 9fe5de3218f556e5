/* Sockets for the agent (net.h). */
#define _GNU_SOURCE
#include "net.h"

#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

void net_log(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "kiln-agent[%d]: %s\n", (int)getpid(), line);
}

long net_read(void *ctx, void *buf, size_t n) {
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

int net_write(void *ctx, const void *buf, size_t n) {
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

void net_set_deadline(int fd, int seconds) {
    struct timeval tv = {seconds, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

int net_split_addr(char *s, char **host, char **port) {
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
    return **port && **host ? 0 : -1;
}

int net_connect(const char *host_port, int seconds, const char **why) {
    char addr[300];
    snprintf(addr, sizeof addr, "%s", host_port);
    char *host, *port;
    if (net_split_addr(addr, &host, &port)) {
        *why = "not HOST:PORT";
        return -1;
    }
    struct addrinfo hints = {0}, *ai, *a;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    if (getaddrinfo(host, port, &hints, &ai)) {
        *why = "the host does not resolve";
        return -1;
    }
    int fd = -1;
    *why = "the connection was refused or timed out";
    for (a = ai; a; a = a->ai_next) {
        fd = socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) continue;
        /* Linux applies the send timeout to connect() too. */
        net_set_deadline(fd, seconds);
        if (!connect(fd, a->ai_addr, a->ai_addrlen)) break;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    return fd;
}
