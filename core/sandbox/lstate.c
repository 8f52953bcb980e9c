/*
 * lstate.c — in-process tool states: accounting allocator, instruction hook,
 * breach recording. See lstate.h.
 */
#include "sandbox/lstate.h"
#include "sandbox/pattern.h"

#include <lauxlib.h>
#include <lualib.h>
#include <luajit.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

/* Instructions between two hook checks. Small enough that a breach is seen
 * within microseconds, large enough to cost little (a read of the
 * monotonic clock, in the vDSO; the thread's CPU clock, a system call, is
 * read only when the CPU budget could be spent, see hook()). */
#define HOOK_COUNT 1000
/* C stack a run may use below where it was armed. Tool code can recurse in
 * C (string.gsub callbacks, table.sort comparators), which LuaJIT does not
 * bound; threads running tools have at least 8 MiB, and one hook interval
 * can add a few hundred KiB. Past this, the hook raises "C stack overflow"
 * (a plain error, like Lua's own "stack overflow"). */
#define CSTACK_LIMIT ((size_t)4 << 20)

/* Arena size classes: 16 << k bytes, k < ARENA_CLASSES. */
#define ARENA_CLASSES 40

struct rd_lstate {
  lua_State *L;
  size_t heap, peak, max_memory;
  int armed;
  double cpu_limit_ms, cpu_start_ms;
  int cpu_start_known;   /* 0: armed without a reading (see rd__lstate_arm_at) */
  uint64_t deadline_ns;
  atomic_int stop_req;   /* rd_breach asked for by another thread */
  rd_breach breach;      /* recorded on the thread running the state */
  char breach_msg[256];  /* what the first breach since arm said */
  const char *stack_base; /* a frame address of the thread when armed */
  uint64_t arm_ns;       /* rd__mono_ns() when armed */
  uint64_t cpu_check_ns; /* the hook reads the CPU clock from then on */
  int hooked;            /* the hook ran since arm */
  /* the arena (opts.arena): base and cap fixed, the rest is restored */
  char *a_base;
  size_t a_cap, a_top;
  void *a_free[ARENA_CLASSES];
  size_t a_floor;        /* rd__lstate_forked: blocks below are never reused */
  size_t a_outside;      /* live allocations from malloc */
  /* without an arena: LuaJIT's own allocator, one heap per state */
  lua_Alloc inner;
  void *inner_ud;
  /* the snapshot: a copy of this struct and of a_base[0, a_top) */
  struct rd_lstate *snap;
  char *snap_mem;
};

const char *rd__breach_kind(rd_breach b) {
  switch (b) {
    case RD_BREACH_MEMORY: return "memory_limit";
    case RD_BREACH_CPU: return "cpu_limit";
    case RD_BREACH_TIMEOUT: return "timeout";
    case RD_BREACH_CANCEL: return "cancelled";
    case RD_BREACH_VIOLATION: return "sandbox_violation";
    case RD_BREACH_OUTPUT: return "output_limit";
    default: return "";
  }
}

static const char *breach_text(rd_breach b) {
  switch (b) {
    case RD_BREACH_MEMORY: return "memory limit reached";
    case RD_BREACH_CPU: return "CPU budget spent";
    case RD_BREACH_TIMEOUT: return "deadline passed";
    case RD_BREACH_CANCEL: return "cancelled by the caller";
    case RD_BREACH_VIOLATION: return "sandbox violation";
    case RD_BREACH_OUTPUT: return "output limit reached";
    default: return "";
  }
}

/* ---- the arena ---------------------------------------------------------------- */

static unsigned a_class(size_t n) {
  unsigned k = 0;
  while (((size_t)16 << k) < n) k++;
  return k;
}

static int in_arena(rd_lstate *s, void *p) {
  return s->a_base && (char *)p >= s->a_base && (char *)p < s->a_base + s->a_cap;
}

static void *a_alloc(rd_lstate *s, size_t n) {
  unsigned k = a_class(n);
  if (k < ARENA_CLASSES) {
    void *p = s->a_free[k];
    if (p) {
      s->a_free[k] = *(void **)p;
      return p;
    }
    size_t sz = (size_t)16 << k;
    if (sz <= s->a_cap - s->a_top) {
      p = s->a_base + s->a_top;
      s->a_top += sz;
      return p;
    }
  }
  void *p = rd__malloc(n);
  if (p) s->a_outside++;
  return p;
}

static void a_free(rd_lstate *s, void *p, size_t osize) {
  if (!in_arena(s, p)) {
    rd__freemem(p);
    s->a_outside--;
    return;
  }
  if ((char *)p < s->a_base + s->a_floor) return; /* inherited: see forked */
  unsigned k = a_class(osize);
  *(void **)p = s->a_free[k];
  s->a_free[k] = p;
}

static void *a_realloc(rd_lstate *s, void *p, size_t osize, size_t nsize) {
  if (!p) return a_alloc(s, nsize);
  if (in_arena(s, p) && a_class(osize) == a_class(nsize)) return p;
  void *q = a_alloc(s, nsize);
  if (!q) return NULL;
  memcpy(q, p, osize < nsize ? osize : nsize);
  a_free(s, p, osize);
  return q;
}

static void *lalloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  rd_lstate *s = ud;
  if (nsize == 0) {
    if (s->a_base) {
      if (ptr) a_free(s, ptr, osize);
    } else if (ptr) {
      s->inner(s->inner_ud, ptr, osize, 0);
    }
    s->heap -= osize;
    return NULL;
  }
  if (ptr == NULL) osize = 0;
  if (nsize > osize && s->max_memory &&
      s->heap - osize + nsize > s->max_memory) {
    if (s->breach == RD_BREACH_NONE) s->breach = RD_BREACH_MEMORY;
    return NULL; /* Lua raises "not enough memory" */
  }
  void *p = s->a_base ? a_realloc(s, ptr, osize, nsize) : s->inner(s->inner_ud, ptr, osize, nsize);
  if (!p) return NULL; /* a shrink never fails (glibc, LuaJIT); a grow may */
  s->heap = s->heap - osize + nsize;
  if (s->heap > s->peak) s->peak = s->heap;
  return p;
}

rd_lstate *rd__lstate_from(lua_State *L) {
  void *ud = NULL;
  lua_Alloc f = lua_getallocf(L, &ud);
  return f == lalloc ? (rd_lstate *)ud : NULL;
}

/* The checks of a hook run (and of rd__lstate_poll) on an armed state:
 * records a breach for a stop request, the deadline or the CPU budget. */
static void check_limits(rd_lstate *s) {
  s->hooked = 1;
  if (s->breach != RD_BREACH_NONE) return;
  int req = atomic_load(&s->stop_req);
  uint64_t now = s->deadline_ns || s->cpu_limit_ms > 0 ? rd__mono_ns() : 0;
  if (req != RD_BREACH_NONE) {
    s->breach = (rd_breach)req;
  } else if (s->deadline_ns && now >= s->deadline_ns) {
    s->breach = RD_BREACH_TIMEOUT;
  } else if (s->cpu_limit_ms > 0 && now >= s->cpu_check_ns) {
    /* The thread's CPU clock is a system call (microseconds on a VM,
     * as much as a thousand instructions of Lua): read it only when
     * the budget could be spent. A thread's CPU time grows no faster
     * than wall time, so with `left` ms of budget no breach can come
     * before `left` ms of wall time have passed. */
    double cpu = rd__thread_cpu_ms();
    if (!s->cpu_start_known) {
      /* Armed without a reading: charge the run its wall time up to
       * now (an upper bound of its CPU time) and count from here. */
      s->cpu_start_ms = cpu - (double)(now - s->arm_ns) / 1e6;
      s->cpu_start_known = 1;
    }
    double used = cpu - s->cpu_start_ms;
    if (used > s->cpu_limit_ms) s->breach = RD_BREACH_CPU;
    else s->cpu_check_ns = now + (uint64_t)((s->cpu_limit_ms - used) * 1e6);
  }
}

static void hook(lua_State *L, lua_Debug *ar);

/* Raise the recorded breach (never returns). */
static void raise_breach(lua_State *L, rd_lstate *s) {
  if (!s->breach_msg[0])
    snprintf(s->breach_msg, sizeof s->breach_msg, "%s", breach_text(s->breach));
  /* Fire at every instruction from now on: a pcall that swallows this
   * error gets the next one immediately. */
  lua_sethook(L, hook, LUA_MASKCOUNT, 1);
  luaL_error(L, "%s: %s", rd__breach_kind(s->breach), breach_text(s->breach));
}

static void hook(lua_State *L, lua_Debug *ar) {
  RD_UNUSED(ar);
  rd_lstate *s = rd__lstate_from(L);
  if (!s || !s->armed) return;
  check_limits(s);
  if (s->breach == RD_BREACH_NONE && s->stack_base) {
    const char *here = __builtin_frame_address(0);
    if (here < s->stack_base && (size_t)(s->stack_base - here) > CSTACK_LIMIT)
      luaL_error(L, "C stack overflow (recursion through C functions deeper than %d KiB)",
                 (int)(CSTACK_LIMIT >> 10));
  }
  if (s->breach != RD_BREACH_NONE) raise_breach(L, s);
}

int rd__lstate_poll(lua_State *L) {
  rd_lstate *s = rd__lstate_from(L);
  if (!s || !s->armed) return 0;
  check_limits(s);
  if (s->breach != RD_BREACH_NONE) raise_breach(L, s);
  return 0;
}

int rd__lstate_new(rd_lstate **out, const rd_lstate_opts *opts, rd_error *err) {
  rd_lstate *s = rd__calloc(1, sizeof *s);
  if (!s) return rd_error_set(err, RD_ENOMEM, "cannot allocate a tool state");
  atomic_init(&s->stop_req, RD_BREACH_NONE);
  if (opts && opts->arena) {
    void *m = mmap(NULL, opts->arena, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m != MAP_FAILED) { /* else: plain malloc, no snapshots */
      s->a_base = m;
      s->a_cap = opts->arena;
    }
  }
  if (s->a_base) {
    s->L = lua_newstate(lalloc, s);
  } else if ((s->L = luaL_newstate()) != NULL) {
    /* LuaJIT's allocator, with a heap of its own for this state (glibc's
     * malloc is shared by the process's threads: a state copied into on
     * the loop thread and run on a call thread paid its locking, and its
     * blocks lay among every other state's). lalloc keeps the counting
     * and the cap in front of it; what LuaJIT made so far is counted. */
    s->inner = lua_getallocf(s->L, &s->inner_ud);
    s->heap = (size_t)lua_gc(s->L, LUA_GCCOUNT, 0) * 1024 + (size_t)lua_gc(s->L, LUA_GCCOUNTB, 0);
    s->peak = s->heap;
    lua_setallocf(s->L, lalloc, s);
  }
  if (!s->L) {
    if (s->a_base) munmap(s->a_base, s->a_cap);
    rd__freemem(s);
    return rd_error_set(err, RD_ENOMEM, "cannot create a Lua state");
  }
  luaL_openlibs(s->L);
  rd__pattern_install(s->L); /* string.find ... with a step budget (pattern.h) */
  if (!opts || !opts->jit)
    luaJIT_setmode(s->L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
  /* The cap applies from here on: the libraries are not counted against it
   * only in the sense that they are already in `heap`. */
  s->max_memory = opts ? opts->max_memory : 0;
  lua_sethook(s->L, hook, LUA_MASKCOUNT, HOOK_COUNT);
  *out = s;
  return RD_OK;
}

void rd__lstate_free(rd_lstate *s) {
  if (!s) return;
  s->max_memory = 0;
  s->armed = 0;
  /* LuaJIT frees its own heap whole when it closes a state it made */
  if (s->inner) lua_setallocf(s->L, s->inner, s->inner_ud);
  lua_close(s->L);
  if (s->a_base) munmap(s->a_base, s->a_cap);
  rd__freemem(s->snap);
  rd__freemem(s->snap_mem);
  rd__freemem(s);
}

int rd__lstate_snapshot(rd_lstate *s, rd_error *err) {
  if (!s->a_base || s->a_outside)
    return rd_error_set(err, RD_EINVAL, "tool state: no snapshot without an arena holding all of it");
  rd__freemem(s->snap_mem);
  rd__freemem(s->snap);
  s->snap_mem = NULL;
  s->snap = rd__malloc(sizeof *s);
  char *mem = rd__malloc(s->a_top ? s->a_top : 1);
  if (!s->snap || !mem) {
    rd__freemem(mem);
    rd__freemem(s->snap);
    s->snap = NULL;
    return rd_error_set(err, RD_ENOMEM, "tool state: no memory for a snapshot");
  }
  memcpy(mem, s->a_base, s->a_top);
  memcpy(s->snap, s, sizeof *s);
  s->snap_mem = mem;
  return RD_OK;
}

int rd__lstate_restore(rd_lstate *s, rd_error *err) {
  if (!s->snap || s->a_outside)
    return rd_error_set(err, RD_EINVAL, "tool state: cannot restore (no snapshot, or memory outside the arena)");
  rd_lstate *snap = s->snap;
  char *mem = s->snap_mem;
  memcpy(s->a_base, mem, snap->a_top);
  memcpy(s, snap, sizeof *s);
  s->snap = snap;
  s->snap_mem = mem;
  atomic_store(&s->stop_req, RD_BREACH_NONE);
  return RD_OK;
}

void rd__lstate_forked(rd_lstate *s, size_t touch) {
  if (!s || !s->a_base) return;
  s->a_floor = s->a_top;
  for (unsigned k = 0; k < ARENA_CLASSES; k++) s->a_free[k] = NULL;
  if (touch > s->a_cap - s->a_top) touch = s->a_cap - s->a_top;
  volatile char *p = s->a_base + s->a_top;
  for (size_t i = 0; i < touch; i += 4096) p[i] = 0; /* never handed out yet */
}

lua_State *rd__lstate_L(rd_lstate *s) { return s->L; }

const char *rd__lstate_breach_message(rd_lstate *s) {
  if (s->breach_msg[0]) return s->breach_msg;
  return NULL;
}

size_t rd__lstate_set_max_memory(rd_lstate *s, size_t max_memory) {
  size_t old = s->max_memory;
  s->max_memory = max_memory;
  return old;
}

double rd__lstate_cpu_start(rd_lstate *s) { return s->cpu_start_known ? s->cpu_start_ms : -1; }

size_t rd__lstate_heap(rd_lstate *s) { return s->heap; }

void rd__lstate_clear_stop(rd_lstate *s) {
  atomic_store(&s->stop_req, RD_BREACH_NONE);
}

void rd__lstate_arm(rd_lstate *s, double cpu_ms, uint64_t deadline_ns) {
  rd__lstate_arm_at(s, cpu_ms, deadline_ns, rd__thread_cpu_ms());
}

void rd__lstate_arm_at(rd_lstate *s, double cpu_ms, uint64_t deadline_ns,
                       double cpu_start_ms) {
  /* stop_req is not cleared here: a stop asked for between the caller's
   * rd__lstate_clear_stop and now (a cancel racing the thread pool) must
   * still stop this run. */
  s->breach = RD_BREACH_NONE;
  s->breach_msg[0] = '\0';
  s->cpu_limit_ms = cpu_ms;
  s->cpu_start_ms = cpu_start_ms;
  s->cpu_start_known = cpu_start_ms >= 0;
  s->arm_ns = rd__mono_ns();
  /* The first check reads the clock: cpu_start_ms may be older than
   * this arm (see lstate.h), so part of the budget may be spent already. */
  s->cpu_check_ns = s->arm_ns;
  s->hooked = 0;
  s->deadline_ns = deadline_ns;
  s->peak = s->heap;
  s->stack_base = __builtin_frame_address(0);
  s->armed = 1;
  lua_sethook(s->L, hook, LUA_MASKCOUNT, HOOK_COUNT);
}

rd_breach rd__lstate_disarm(rd_lstate *s, double *cpu_ms, size_t *peak_bytes) {
  s->armed = 0;
  lua_sethook(s->L, hook, LUA_MASKCOUNT, HOOK_COUNT);
  if (cpu_ms) {
    /* CPU time never exceeds wall time on one thread: a run too short for
     * the hook to have run reports its wall time (no clock system call). */
    if (s->hooked && s->cpu_start_known) *cpu_ms = rd__thread_cpu_ms() - s->cpu_start_ms;
    else *cpu_ms = (double)(rd__mono_ns() - s->arm_ns) / 1e6;
  }
  if (peak_bytes) *peak_bytes = s->peak;
  rd_breach b = s->breach;
  if (b == RD_BREACH_NONE) {
    /* A stop asked for after the last hook check still counts. */
    int req = atomic_load(&s->stop_req);
    if (req != RD_BREACH_NONE) b = (rd_breach)req;
  }
  s->breach = RD_BREACH_NONE;
  atomic_store(&s->stop_req, RD_BREACH_NONE);
  return b;
}

void rd__lstate_request_stop(rd_lstate *s, rd_breach why) {
  int none = RD_BREACH_NONE;
  atomic_compare_exchange_strong(&s->stop_req, &none, (int)why);
}

int rd__lstate_breach(lua_State *L, rd_breach kind, const char *fmt, ...) {
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  rd_lstate *s = rd__lstate_from(L);
  if (s && s->breach == RD_BREACH_NONE) {
    s->breach = kind;
    snprintf(s->breach_msg, sizeof s->breach_msg, "%s", msg);
  }
  if (s && s->armed) lua_sethook(L, hook, LUA_MASKCOUNT, 1);
  return luaL_error(L, "%s: %s", rd__breach_kind(kind), msg);
}

int rd__lstate_sleep(lua_State *L, double ms) {
  rd_lstate *s = rd__lstate_from(L);
  uint64_t until = rd__mono_ns() + (uint64_t)(ms > 0 ? ms * 1e6 : 0);
  for (;;) {
    uint64_t now = rd__mono_ns();
    if (s && s->armed) {
      int req = atomic_load(&s->stop_req);
      if (req != RD_BREACH_NONE)
        return rd__lstate_breach(L, (rd_breach)req, "%s", breach_text((rd_breach)req));
      if (s->deadline_ns && now >= s->deadline_ns)
        return rd__lstate_breach(L, RD_BREACH_TIMEOUT, "%s", breach_text(RD_BREACH_TIMEOUT));
    }
    if (now >= until) return 0;
    uint64_t left = until - now;
    if (left > 5000000u) left = 5000000u; /* 5 ms slices */
    struct timespec ts = {0, (long)left};
    nanosleep(&ts, NULL);
  }
}
