/* Keeping the agent in a tracker's pool (docs/rpc-protocol.md, "Tracker messages").
 *
 * Invariant: the registrar holds no state a client depends on: it runs in its own process,
 * reconnects (with a growing pause, at most 30 s) whenever the tracker cannot be reached or
 * stops answering heartbeats, and ends with the agent (PR_SET_PDEATHSIG). */
#ifndef KILN_REGISTER_H
#define KILN_REGISTER_H

#include "wire.h"

typedef struct {
    const char *tracker;    /* HOST:PORT */
    const char *device_key; /* [A-Za-z0-9._-]{1,64} */
    const char *host;       /* the host clients should reach this agent at, or NULL */
    int port;               /* the port the agent listens on */
    const char *info_json;  /* the agent's INFO report */
    const wire_key *key;
} registrar_config;

/* Whether `s` is a valid device key (or, with `host` set, a valid advertised host). */
int registrar_valid_name(const char *s, int host);

/* Registers and sends heartbeats forever (it returns only if the agent's parent is gone). */
void registrar_run(const registrar_config *c);

#endif
