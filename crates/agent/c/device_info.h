/* What the agent reports about its machine (docs/rpc-protocol.md, INFO): read from Linux's
 * /proc and /sys, every field optional on machines that do not expose it.
 *
 * Invariant: the result is one JSON object, valid UTF-8 with every string escaped, at most
 * `cap` bytes (longer lists are cut at an element boundary). */
#ifndef KILN_DEVICE_INFO_H
#define KILN_DEVICE_INFO_H

#include <stddef.h>

/* Writes the JSON object into `out` (NUL-terminated); returns its length. */
size_t device_info_json(char *out, size_t cap, const char *agent_version, unsigned long long max_upload);

#endif
