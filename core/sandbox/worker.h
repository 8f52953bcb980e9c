/*
 * worker.h — sandboxed worker processes for levels strict and balanced.
 *
 * The engine starts one zygote per engine (`rduck-worker --zygote`, a small
 * executable, so forking it costs little). The zygote enters fresh network,
 * IPC and UTS namespaces once, compiles the seccomp filter once, compiles
 * the tool-state bootstrap to bytecode once, and then keeps workers ready:
 * forked children that have dropped everything they do not need and wait
 * for their tool. On the tool message a worker applies, in this order,
 * rlimits (address space, CPU, file size, open files, no processes),
 * no_new_privs, Landlock beneath the tool's allowed_paths, and the seccomp
 * allow-list; then it runs calls, each in a fresh Lua state with the
 * in-process limits too (allocator cap, count hook). See proto.h for the
 * wire. A kernel that lacks a mechanism gets a warning ('W' message), never
 * a silent downgrade.
 *
 * A strict tool's workers come from its TEMPLATE: one ready worker that
 * got the tool in mode "template" applies the limits above (RLIMIT_NPROC
 * left as it is, RLIMIT_CPU covering the definition only) with the
 * spawner variant of the seccomp filter (the worker policy plus fork-only
 * clone, socketpair(AF_UNIX), wait4, ... — seccomp_linux.c), defines the
 * tool once, and then forks single-use workers on the engine's request.
 * Each such worker, before it reads its call: RLIMIT_CPU counted from its
 * fork and RLIMIT_NPROC = 0 (rd__limits_apply), its heaps switched to
 * "forked" mode (rd__lstate_forked: new objects packed at the arenas'
 * untouched ends, inherited blocks never rewritten), a prefault of the pages its call writes (page faults off
 * the call's path; skipped when the call is already waiting), the normal
 * scheduling policy (it was prepared as SCHED_BATCH), and the small drop
 * program stacked on the template's spawner program — together exactly
 * the worker policy (seccomp_linux.c) — so it runs under the worker
 * policy, with a state no execution has touched. Every page such a worker
 * writes is a page fault (the fork shares them all), so it writes as few as
 * it can. A worker lowers its priority to nice 19 before it exits, so its
 * teardown yields to calls.
 */
#ifndef RD_WORKER_H
#define RD_WORKER_H

#include "rd.h"

/* Run the zygote on control socket `ctrl_fd` (SOCK_SEQPACKET), loading the
 * bootstrap from `lua_dir`. Returns the process exit status when the engine
 * closes the socket (its workers are killed first). */
int rd__zygote_main(int ctrl_fd, const char *lua_dir);

#endif
