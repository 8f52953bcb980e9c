/*
 * proto.h — the wire between the engine and its worker processes.
 *
 * Worker socket (SOCK_STREAM socketpair, one per worker): frames of
 * [u32 length, little endian][length bytes of JSON text], at most
 * RD_FRAME_MAX bytes. The engine sends:
 *   {"op":"tool","mode":"once"|"pool","file":F,"source":S,
 *    "security":{"max_memory":N,"max_cpu":MS,"max_file_size":N,
 *                "allowed_paths":[...]},"max_calls":N}
 *   {"op":"call","arg":{"params":{...},"ctx":{...}},
 *    "limits":{"cpu_ms":MS,"timeout_ms":MS,"max_output":N}}
 * and the worker answers:
 *   {"op":"ready","report":TEXT}          after "tool": limits are in force
 *   {"op":"note","kind":K,"a":N,"b":N,"text":T}   ctx.log / ctx.progress
 *   {"op":"result","ok":true,"status":{...},"output":V,"stats":{...}}
 *   {"op":"result","ok":false,"kind":K,"message":M,"stats":{...}}
 *   {"op":"error","message":M}            the worker cannot go on
 * A worker in "once" mode exits after its first result; in "pool" mode it
 * serves calls until max_calls, a breach, or the engine closes the socket.
 * In "template" mode (a strict tool's template, worker.h) it sandboxes
 * itself with the spawner filter, defines the tool, answers "ready" (or
 * "error"), and from then on the same socket carries zygote control
 * records (below) instead of frames, a record possibly in pieces (it is a
 * stream): 'S' asks it for workers, 'R' hands one over (its socket as
 * SCM_RIGHTS; the tool is defined in it, no "tool" message, its first frame
 * is the call), 'X' reports one's exit. The template sends nothing between
 * "ready" and the first 'S'.
 *
 * Zygote control socket (SOCK_SEQPACKET): fixed rd_zmsg records.
 *   engine -> zygote  'S' n: fork n more ready workers
 *   zygote -> engine  'R' pid (+ the engine's end of the worker's socket
 *                     as SCM_RIGHTS): a worker is ready for its "tool"
 *                     'X' pid status: a worker exited (waitpid status)
 *                     'W' 0 0 + text: a warning (a kernel feature missing)
 */
#ifndef RD_PROTO_H
#define RD_PROTO_H

#include "rd.h"
#include <stdint.h>

#define RD_FRAME_MAX (64u * 1024u * 1024u)

typedef struct rd_zmsg {
  char type;
  char pad[3];
  int32_t pid;
  int32_t status;
  char text[244];
} rd_zmsg;

/* Blocking helpers for the worker side (EINTR handled). */
int rd__write_full(int fd, const void *p, size_t n);        /* 0 or -1 */
int rd__read_full(int fd, void *p, size_t n);               /* 0, -1, or 1 on EOF */
/* Send one frame; 0 or -1 (errno set). */
int rd__frame_send(int fd, const char *p, size_t n);
/* Receive one frame into *b (reset first). 0, 1 on clean EOF, -1 on error
 * or a frame larger than RD_FRAME_MAX. */
int rd__frame_recv(int fd, rd_buf *b);

#endif
