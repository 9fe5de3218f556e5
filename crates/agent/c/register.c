/* Keeping the agent in a tracker's pool (register.h). */
#define _GNU_SOURCE
#include "register.h"
#include "net.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum {
    MSG_FAILED = 30,
    MSG_REGISTER = 40,
    MSG_REGISTERED = 41,
    MSG_HEARTBEAT = 42,
    MSG_HEARTBEAT_ACK = 43,
};

#define TRACKER_CAP (64u << 10)
#define IO_TIMEOUT_S 10
#define MAX_PAUSE_S 30

int registrar_valid_name(const char *s, int host) {
    size_t n = strlen(s);
    if (n == 0 || n > 64) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '-' || (!host && c == '_') || (host && c == ':');
        if (!ok) return 0;
    }
    return 1;
}

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&t, &t)) {
    }
}

/* The payload of the next message, NUL-terminated, when it is of kind `want`; NULL otherwise
 * (a FAILED reason is logged). */
static char *expect(wire_session *s, uint8_t want) {
    uint8_t kind, *payload;
    size_t len;
    if (wire_recv(s, &kind, &payload, &len)) return NULL;
    char *text = malloc(len + 1);
    if (!text) {
        free(payload);
        return NULL;
    }
    if (len) memcpy(text, payload, len);
    text[len] = 0;
    free(payload);
    if (kind == want) return text;
    if (kind == MSG_FAILED) {
        for (size_t i = 0; i < len; i++)
            if (text[i] < 0x20 || text[i] > 0x7e) text[i] = '?';
        net_log("the tracker refused: %.200s", text);
    } else {
        net_log("the tracker answered with message kind %u", kind);
    }
    free(text);
    return NULL;
}

/* One connection to the tracker: register, then heartbeats until it fails. Returns 1 when it
 * registered (the next attempt starts with a short pause), 0 when it did not. */
static int session(const registrar_config *c) {
    const char *why;
    int fd = net_connect(c->tracker, IO_TIMEOUT_S, &why);
    if (fd < 0) {
        net_log("tracker %s: %s", c->tracker, why);
        return 0;
    }
    wire_io io = {net_read, net_write, &fd};
    wire_session s;
    if (wire_connect(&s, &io, c->key, TRACKER_CAP)) {
        net_log("tracker %s: %s", c->tracker, s.error);
        close(fd);
        return 0;
    }
    size_t cap = strlen(c->info_json) + 512;
    char *msg = malloc(cap);
    if (!msg) {
        close(fd);
        return 0;
    }
    int n = snprintf(msg, cap, "{\"device_key\":\"%s\",\"port\":%d%s%s%s,\"info\":%s}",
                     c->device_key, c->port, c->host ? ",\"host\":\"" : "", c->host ? c->host : "",
                     c->host ? "\"" : "", c->info_json);
    int r = n > 0 && (size_t)n < cap ? wire_send(&s, MSG_REGISTER, (uint8_t *)msg, (size_t)n)
                                     : WIRE_NO_MEMORY;
    free(msg);
    char *reply = r ? NULL : expect(&s, MSG_REGISTERED);
    if (!reply) {
        net_log("tracker %s: registration failed%s%s", c->tracker, s.error[0] ? ": " : "", s.error);
        close(fd);
        return 0;
    }
    unsigned long long id = 0;
    long heartbeat_ms = 2000;
    const char *at = strstr(reply, "\"device_id\":");
    if (at) id = strtoull(at + 12, NULL, 10);
    at = strstr(reply, "\"heartbeat_ms\":");
    if (at) heartbeat_ms = strtol(at + 15, NULL, 10);
    free(reply);
    if (heartbeat_ms < 10 || heartbeat_ms > 60000) heartbeat_ms = 2000;
    net_log("registered with tracker %s as device %llu (key %s), heartbeat every %ld ms",
            c->tracker, id, c->device_key, heartbeat_ms);
    for (;;) {
        sleep_ms(heartbeat_ms);
        if (getppid() == 1) break;
        char *ack = wire_send(&s, MSG_HEARTBEAT, NULL, 0) ? NULL : expect(&s, MSG_HEARTBEAT_ACK);
        if (!ack) break;
        free(ack);
    }
    net_log("lost tracker %s%s%s", c->tracker, s.error[0] ? ": " : "", s.error);
    close(fd);
    return 1;
}

void registrar_run(const registrar_config *c) {
    int pause_s = 1;
    while (getppid() != 1) {
        if (session(c)) pause_s = 1;
        sleep_ms(pause_s * 1000L);
        pause_s = pause_s * 2 > MAX_PAUSE_S ? MAX_PAUSE_S : pause_s * 2;
    }
}
