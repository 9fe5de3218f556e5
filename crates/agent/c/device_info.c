/* The device description of the INFO message (see device_info.h). */
#define _GNU_SOURCE
#include "device_info.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#if defined(__x86_64__)
#define ARCH "x86_64"
#elif defined(__aarch64__)
#define ARCH "aarch64"
#else
#define ARCH "unknown"
#endif

typedef struct {
    char *buf;
    size_t cap, len;
} out_t;

static void put(out_t *o, const char *s) {
    size_t n = strlen(s);
    if (o->len + n + 1 > o->cap) n = o->cap > o->len + 1 ? o->cap - o->len - 1 : 0;
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    o->buf[o->len] = 0;
}

/* A JSON string: quotes, backslashes and control bytes escaped, non-ASCII bytes replaced. */
static void put_str(out_t *o, const char *s) {
    char tmp[8];
    put(o, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)c;
            tmp[2] = 0;
        } else if (c < 0x20 || c >= 0x7f) {
            snprintf(tmp, sizeof tmp, "\\u%04x", c < 0x20 ? c : 0xfffd);
        } else {
            tmp[0] = (char)c;
            tmp[1] = 0;
        }
        put(o, tmp);
    }
    put(o, "\"");
}

static void put_num(out_t *o, unsigned long long v) {
    char tmp[32];
    snprintf(tmp, sizeof tmp, "%llu", v);
    put(o, tmp);
}

/* The value of the first /proc/cpuinfo line whose key is `key`, trimmed; "" when none. */
static void cpuinfo_value(const char *key, char *out, size_t cap) {
    out[0] = 0;
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char *line = NULL;
    size_t n = 0;
    size_t klen = strlen(key);
    while (getline(&line, &n, f) > 0) {
        if (strncmp(line, key, klen) != 0) continue;
        char *p = line + klen;
        while (*p == ' ' || *p == '\t') p++;
        if (*p != ':') continue;
        p++;
        while (*p == ' ' || *p == '\t') p++;
        size_t len = strcspn(p, "\n");
        if (len >= cap) len = cap - 1;
        memcpy(out, p, len);
        out[len] = 0;
        break;
    }
    free(line);
    fclose(f);
}

/* The first line of a small file, trimmed; "" when unreadable. */
static void read_line(const char *path, char *out, size_t cap) {
    out[0] = 0;
    FILE *f = fopen(path, "r");
    if (!f) return;
    if (fgets(out, (int)cap, f)) out[strcspn(out, "\n")] = 0;
    fclose(f);
}

/* "32K", "1024K", "8M" -> bytes. */
static unsigned long long size_of(const char *s) {
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end == 'K') v <<= 10;
    else if (*end == 'M') v <<= 20;
    else if (*end == 'G') v <<= 30;
    return v;
}

size_t device_info_json(char *buf, size_t cap, const char *agent_version,
                        unsigned long long max_upload) {
    out_t o = {buf, cap, 0};
    if (cap) buf[0] = 0;
    char model[256], features[8192], tmp[256];
    cpuinfo_value("model name", model, sizeof model);
    if (!model[0]) cpuinfo_value("Model", model, sizeof model);
    if (!model[0]) cpuinfo_value("Hardware", model, sizeof model);
    if (!model[0]) {
        /* aarch64 boards without a model line: implementer and part numbers. */
        char impl[32], part[32];
        cpuinfo_value("CPU implementer", impl, sizeof impl);
        cpuinfo_value("CPU part", part, sizeof part);
        if (impl[0]) snprintf(model, sizeof model, "implementer %s part %s", impl, part);
    }
    cpuinfo_value("flags", features, sizeof features);
    if (!features[0]) cpuinfo_value("Features", features, sizeof features);
    struct utsname u;
    put(&o, "{\"agent_version\":");
    put_str(&o, agent_version);
    put(&o, ",\"protocol_version\":1,\"arch\":");
    put_str(&o, ARCH);
    put(&o, ",\"kernel\":");
    put_str(&o, uname(&u) == 0 ? u.release : "");
    put(&o, ",\"cpu_model\":");
    put_str(&o, model);
    put(&o, ",\"cores\":");
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    put_num(&o, cores > 0 ? (unsigned long long)cores : 0);
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    put(&o, ",\"memory_bytes\":");
    put_num(&o, pages > 0 && page > 0 ? (unsigned long long)pages * (unsigned long long)page : 0);
    /* The maximum clock (cpufreq, kHz), else what /proc/cpuinfo says now (MHz). */
    read_line("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq", tmp, sizeof tmp);
    unsigned long long mhz = strtoull(tmp, NULL, 10) / 1000;
    if (!mhz) {
        cpuinfo_value("cpu MHz", tmp, sizeof tmp);
        mhz = strtoull(tmp, NULL, 10);
    }
    put(&o, ",\"clock_mhz\":");
    put_num(&o, mhz);
    put(&o, ",\"max_upload_bytes\":");
    put_num(&o, max_upload);
    put(&o, ",\"caches\":[");
    for (int i = 0, first = 1; i < 8; i++) {
        char path[96], level[16], type[32], size[32];
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/level", i);
        read_line(path, level, sizeof level);
        if (!level[0]) break;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/type", i);
        read_line(path, type, sizeof type);
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
        read_line(path, size, sizeof size);
        put(&o, first ? "{\"level\":" : ",{\"level\":");
        first = 0;
        put_num(&o, strtoull(level, NULL, 10));
        put(&o, ",\"type\":");
        put_str(&o, type);
        put(&o, ",\"bytes\":");
        put_num(&o, size_of(size));
        put(&o, "}");
    }
    put(&o, "],\"features\":[");
    /* Cut at an element boundary if the list does not fit: the closing brackets need room. */
    size_t reserve = 4;
    char *save = NULL;
    int first = 1;
    for (char *f = strtok_r(features, " \t", &save); f; f = strtok_r(NULL, " \t", &save)) {
        if (o.len + strlen(f) + 4 + reserve >= cap) break;
        if (!first) put(&o, ",");
        first = 0;
        put_str(&o, f);
    }
    put(&o, "]}");
    return o.len;
}
