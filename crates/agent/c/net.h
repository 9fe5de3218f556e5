/* Sockets for the agent: blocking reads and writes with deadlines, an outgoing connection,
 * and the agent's log line.
 *
 * Invariant: every socket the agent reads from or writes to has a deadline (net_set_deadline)
 * before its first read or write, so no peer can stall the agent forever. */
#ifndef KILN_NET_H
#define KILN_NET_H

#include <stddef.h>

/* wire_io callbacks over a socket whose descriptor `ctx` points to. */
long net_read(void *ctx, void *buf, size_t n);
int net_write(void *ctx, const void *buf, size_t n);

/* Read and write timeouts of `fd`, in seconds. */
void net_set_deadline(int fd, int seconds);

/* Connects to HOST:PORT (a name or a numeric address; "[v6]:port" too) within `seconds`;
 * the socket has that deadline. Returns the descriptor, or -1 with `why` set. */
int net_connect(const char *host_port, int seconds, const char **why);

/* Splits "host:port" (or "[v6]:port") in place: 0, or -1 when it is not of that form. */
int net_split_addr(char *s, char **host, char **port);

/* One line on stderr, prefixed with the agent's name and PID. */
void net_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
