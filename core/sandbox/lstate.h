/*
 * lstate.h — in-process tool states (levels `relaxed` and `none`).
 *
 * A tool state is a LuaJIT state of its own, separate from the engine's host
 * state, that holds one tool: its evaluated definition, handler and
 * constraints. It is created with an accounting allocator (memory cap and
 * high-water mark), runs tool code with an instruction hook that enforces a
 * CPU budget, a wall-clock deadline and cancellation, and records every
 * breach in C so that `pcall`, `xpcall` or coroutines inside the tool cannot
 * turn a breach into success: once a breach is recorded, the hook raises
 * again at the next instruction count, and the result of the call is
 * replaced by the breach.
 *
 * Threading: a tool state is used by one thread at a time. The engine runs
 * calls on the libuv thread pool (off the event loop) and reads results on
 * the loop thread. rd__lstate_request_stop() may be called from any thread.
 */
#ifndef RD_LSTATE_H
#define RD_LSTATE_H

#include "rd.h"
#include <lua.h>

typedef enum rd_breach {
  RD_BREACH_NONE = 0,
  RD_BREACH_MEMORY,      /* -> memory_limit */
  RD_BREACH_CPU,         /* -> cpu_limit */
  RD_BREACH_TIMEOUT,     /* -> timeout */
  RD_BREACH_CANCEL,      /* -> cancelled */
  RD_BREACH_VIOLATION,   /* -> sandbox_violation */
  RD_BREACH_OUTPUT       /* -> output_limit */
} rd_breach;

/* Error kind of a breach ("memory_limit", ...), "" for RD_BREACH_NONE. */
const char *rd__breach_kind(rd_breach b);

typedef struct rd_lstate rd_lstate;

typedef struct rd_lstate_opts {
  size_t max_memory;     /* Lua heap cap in bytes; 0: unlimited */
  int jit;               /* 0: JIT off (count hooks fire everywhere) */
  size_t arena;          /* bytes of address space to reserve for the heap
                          * (0: plain malloc); see rd__lstate_snapshot */
} rd_lstate_opts;

/* Create a tool state with the standard libraries opened. *out is owned by
 * the caller: rd__lstate_free(). Errors: RD_ENOMEM. */
int rd__lstate_new(rd_lstate **out, const rd_lstate_opts *opts, rd_error *err);
void rd__lstate_free(rd_lstate *s);

/* A state made with opts.arena keeps its whole Lua heap in one reserved
 * region (power-of-two size classes, free lists inside the region; what
 * does not fit comes from malloc). rd__lstate_snapshot copies the region
 * and the accounting aside; rd__lstate_restore puts the copy back, byte
 * for byte: the state is then exactly what it was at the snapshot, with
 * nothing a later run did left in it. Restore refuses (RD_EINVAL) when the
 * state holds memory from outside the region, or heap objects whose
 * finalizers hold outside resources could be involved: use it only for
 * states whose snapshot holds no userdata with __gc (no fs roots). Errors:
 * RD_EINVAL (no arena, or outside memory live), RD_ENOMEM. */
int rd__lstate_snapshot(rd_lstate *s, rd_error *err);
int rd__lstate_restore(rd_lstate *s, rd_error *err);

/* For a process forked from the one that made s (with opts.arena), which
 * uses s for one run and then exits (a strict worker forked from its
 * tool's template): from now on the heap blocks allocated before the fork
 * are never reused and freeing one writes nothing (its bytes still leave
 * the accounting: the memory cap sees it freed), and new blocks come from
 * the region's never touched end, then from what this process freed. After
 * a fork every page is shared, and each one written costs a page fault:
 * this way a run writes the pages of its own objects, packed together,
 * instead of a free block here and there across the inherited heap. The
 * inherited blocks stay allocated until the process exits: at most the
 * heap the state had at the fork. `touch` bytes of that untouched end
 * (rounded up to pages, within the region) are written now: a process
 * that prepares itself before its run (a stocked worker) takes those page
 * faults then rather than during the run. Without an arena: no effect. */
void rd__lstate_forked(rd_lstate *s, size_t touch);

/* The Lua state inside (borrowed, valid until rd__lstate_free). */
lua_State *rd__lstate_L(rd_lstate *s);

/* The tool state that owns L (any thread of it), or NULL if L is not one. */
rd_lstate *rd__lstate_from(lua_State *L);

/* Forget any stop asked for earlier. Call it when a run is being prepared,
 * before the run can be stopped (e.g. before queueing it to a thread):
 * rd__lstate_arm does not clear stops, so none asked in between is lost. */
void rd__lstate_clear_stop(rd_lstate *s);

/* Limits of the next run. cpu_ms 0: none; deadline_ns 0: none (monotonic,
 * rd__mono_ns() clock). Reads the thread's CPU clock (a system call). */
void rd__lstate_arm(rd_lstate *s, double cpu_ms, uint64_t deadline_ns);
/* The same, with the thread's CPU time (rd__thread_cpu_ms) read by the
 * caller beforehand, at a moment after which the thread did nothing that
 * should not count (e.g. just before it waited for the call): spares the
 * clock's system call on the way into a call. A stale reading only makes
 * the run's CPU count larger, never smaller. cpu_start_ms < 0: no reading
 * at all; the first check of the CPU budget (at the hook's first run)
 * reads the clock and charges the run its wall time up to then (an upper
 * bound of its CPU time), and rd__lstate_cpu_start() is -1 until then: a
 * caller that must tell CPU from wall time from another thread (a call
 * stuck in C before its first check) passes a reading. */
void rd__lstate_arm_at(rd_lstate *s, double cpu_ms, uint64_t deadline_ns,
                       double cpu_start_ms);
/* Remove the limits; returns the breach recorded while armed (and clears it).
 * *cpu_ms and *peak_bytes (may be NULL) get the CPU time used since arm and
 * the heap high-water mark since arm. A run that ended before the hook's
 * first check (under HOOK_COUNT instructions, see lstate.c) reports its
 * wall time as *cpu_ms, an upper bound of its CPU time, without a read of
 * the CPU clock (a system call, microseconds on a VM); so does a run armed
 * without a reading (cpu_start_ms < 0) that had no CPU budget to check. */
rd_breach rd__lstate_disarm(rd_lstate *s, double *cpu_ms, size_t *peak_bytes);

/* What the breach returned by the last rd__lstate_disarm said ("fs.read:
 * access denied: ..."), or NULL when none was recorded with a message.
 * Valid until the next rd__lstate_arm. */
const char *rd__lstate_breach_message(rd_lstate *s);

/* Ask the running code to stop (thread-safe): `why` is RD_BREACH_TIMEOUT or
 * RD_BREACH_CANCEL; it is recorded and the hook raises at the next count. */
void rd__lstate_request_stop(rd_lstate *s, rd_breach why);

/* Record a breach for the tool state owning L (if any) and raise a Lua
 * error "<kind>: <message>". Never returns. Usable from C functions that a
 * tool calls (fs.*): e.g.
 *   return rd__lstate_breach(L, RD_BREACH_VIOLATION, "fs.read: access denied");
 * On a plain lua_State (not a tool state) it only raises. */
int rd__lstate_breach(lua_State *L, rd_breach kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* For C code that tool code calls and that may run long without a Lua
 * instruction (the pattern matcher, pattern.c): apply the hook's checks
 * (stop request, deadline, CPU budget) now. On a breach, record it and
 * raise like the hook does (never returns); else return 0. Cheap: the
 * monotonic clock, and the CPU clock only when the budget could be
 * spent. A no-op (returns 0) on a plain lua_State or an unarmed state. */
int rd__lstate_poll(lua_State *L);

/* Change the heap cap (0: unlimited) and return the previous one. A state
 * already above it fails its next growing allocation. The engine lifts the
 * cap while it moves data in and out of a state (trusted code, where an
 * allocation failure would be an unprotected Lua error) and restores it
 * before tool code runs. */
size_t rd__lstate_set_max_memory(rd_lstate *s, size_t max_memory);

/* Sleep `ms` milliseconds on behalf of tool code running in L, in short
 * slices, waking early to raise the breach if a stop is requested or the
 * deadline passes (a count hook cannot fire while C sleeps). Returns 0, or
 * raises like rd__lstate_breach. On a plain lua_State it just sleeps. */
int rd__lstate_sleep(lua_State *L, double ms);

/* CPU time (ms, of the thread that armed it) when the current run was
 * armed, or -1 when it was armed without a reading that no check has
 * read yet (rd__lstate_arm_at). Readable from another thread (a racy
 * read of a double written once per run), with pthread_getcpuclockid, to
 * tell CPU from wall time. */
double rd__lstate_cpu_start(rd_lstate *s);

/* Heap bytes currently allocated by the state. */
size_t rd__lstate_heap(rd_lstate *s);

#endif
