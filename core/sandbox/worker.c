/*
 * worker.c — the zygote and its workers. See worker.h and proto.h.
 */
#include "rd.h"
#include "json.h"
#include "results.h"
#include "sandbox/limits.h"
#include "sandbox/lstate.h"
#include "sandbox/proto.h"
#include "sandbox/toolcore.h"
#include "sandbox/worker.h"
#include "sandbox/xcopy.h"

#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <lualib.h>
#include <malloc.h>
#include <math.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The bootstrap modules a tool state needs, compiled to bytecode once. */
static const char *const BOOT_MODULES[] = {
  "rubberduck.env", "rubberduck.dsl", "rubberduck.toolstate",
};
#define N_BOOT (sizeof BOOT_MODULES / sizeof BOOT_MODULES[0])

typedef struct blob {
  char *data;
  size_t len;
} blob;

static blob boot[N_BOOT];
static rd_seccomp_prog *seccomp_prog;
static rd_seccomp_prog *spawner_prog;   /* a template's (the policy + fork) */
static rd_seccomp_prog *drop_prog;      /* its workers' (spawner + drop = policy) */
/* The control state's (W.C) allocator: an arena, so that a worker forked
 * from a template writes few pages (rd__lstate_forked). What does not fit
 * comes from malloc. */
static rd_lstate *control;
#define CONTROL_ARENA (32u * 1024 * 1024)
static int ctrl = -1;

/* Memory a worker needs besides the tool's Lua heap: the binary, libc,
 * LuaJIT, stacks, the bootstrap. RLIMIT_AS = max_memory + this. */
#define AS_OVERHEAD (512ull * 1024 * 1024)
#define DEFINE_CPU_MS 250.0

static double proc_cpu_ms(void);
static void warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void warn(const char *fmt, ...) {
  rd_zmsg m;
  memset(&m, 0, sizeof m);
  m.type = 'W';
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(m.text, sizeof m.text, fmt, ap);
  va_end(ap);
  if (ctrl >= 0) send(ctrl, &m, sizeof m, MSG_NOSIGNAL);
}

/* ---- bootstrap bytecode ------------------------------------------------------ */

static int dump_writer(lua_State *L, const void *p, size_t sz, void *ud) {
  RD_UNUSED(L);
  rd__buf_append(ud, p, sz);
  return 0;
}

static int load_boot(const char *lua_dir) {
  lua_State *L = luaL_newstate();
  if (!L) return -1;
  for (size_t i = 0; i < N_BOOT; i++) {
    char path[4096];
    char rel[128];
    snprintf(rel, sizeof rel, "%s", BOOT_MODULES[i]);
    for (char *p = rel; *p; p++) if (*p == '.') *p = '/';
    snprintf(path, sizeof path, "%s/%s.lua", lua_dir, rel);
    char chunk[200];
    snprintf(chunk, sizeof chunk, "@%s.lua", rel);
    FILE *f = fopen(path, "rb");
    if (!f) {
      fprintf(stderr, "rduck-worker: cannot read %s: %s\n", path, strerror(errno));
      lua_close(L);
      return -1;
    }
    rd_buf src = RD_BUF_INIT;
    char tmp[8192];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0) rd__buf_append(&src, tmp, n);
    fclose(f);
    if (src.oom || luaL_loadbuffer(L, src.data ? src.data : "", src.len, chunk) != 0) {
      fprintf(stderr, "rduck-worker: %s: %s\n", path, lua_tostring(L, -1));
      rd__buf_free(&src);
      lua_close(L);
      return -1;
    }
    rd__buf_free(&src);
    rd_buf out = RD_BUF_INIT;
    lua_dump(L, dump_writer, &out);
    lua_pop(L, 1);
    if (out.oom) {
      lua_close(L);
      return -1;
    }
    boot[i].len = out.len;
    boot[i].data = rd__buf_steal(&out, NULL);
  }
  lua_close(L);
  return 0;
}

/* ---- a worker ----------------------------------------------------------------- */

typedef struct worker {
  int fd;
  lua_State *C;          /* control state: decodes and encodes frames */
  int tool_ref;          /* the "tool" message, in C's registry */
  int once;
  int template;          /* a strict tool's template: forks the workers */
  double child_cpu_s;    /* a template's workers: RLIMIT_CPU, seconds */
  int max_calls, calls;
  double max_memory;
  /* The next call's state: fresh, with the tool already defined in it
   * (made while the worker waits, so a call only runs the handler). */
  rd_lstate *next;
  int next_ok;           /* the definition loaded in `next` */
  double def_cpu, def_ms;
  size_t def_peak;
  double cpu_idle;       /* thread CPU (ms) when it began to wait for a frame,
                          * or CPU_UNREAD (see next_frame) */
  uint64_t t_recv;       /* CLOCK_MONOTONIC (ns) when the call's frame was read */
  /* Pool mode, a tool without allowed_paths: its states live in an arena
   * (rd__lstate_snapshot), and after a call the state used is restored to
   * its snapshot taken right after the definition, instead of being
   * rebuilt (a fresh state costs ~150 µs, a restore a copy of ~100 KiB). */
  size_t arena;          /* bytes to reserve per state; 0: no snapshots */
  rd_lstate *used;       /* the state of the call just served */
  char report[512];
} worker;

/* The zygote makes the control state and a first tool state (bootstrap
 * loaded) before it forks, so every worker starts with both. */
static worker W;

static void send_json(worker *w, int idx) {
  rd_buf b = RD_BUF_INIT;
  rd_error err;
  if (rd__json_encode(w->C, idx, &b, NULL, &err) != RD_OK) {
    rd__buf_free(&b);
    static const char fallback[] =
        "{\"op\":\"error\",\"message\":\"worker could not encode its answer\"}";
    rd__frame_send(w->fd, fallback, sizeof fallback - 1);
    return;
  }
  if (rd__frame_send(w->fd, b.data, b.len) != 0) _exit(3); /* engine gone */
  rd__buf_free(&b);
}

static void send_error(worker *w, const char *msg) {
  lua_State *C = w->C;
  lua_createtable(C, 0, 2);
  lua_pushliteral(C, "error");
  lua_setfield(C, -2, "op");
  lua_pushstring(C, msg);
  lua_setfield(C, -2, "message");
  send_json(w, -1);
  lua_pop(C, 1);
}

static void on_note(void *ud, const char *kind, double a, double b,
                    const char *text, size_t len) {
  worker *w = ud;
  lua_State *C = w->C;
  lua_createtable(C, 0, 5);
  lua_pushliteral(C, "note");
  lua_setfield(C, -2, "op");
  lua_pushstring(C, kind);
  lua_setfield(C, -2, "kind");
  lua_pushnumber(C, a);
  lua_setfield(C, -2, "a");
  lua_pushnumber(C, b);
  lua_setfield(C, -2, "b");
  lua_pushlstring(C, text, len);
  lua_setfield(C, -2, "text");
  send_json(w, -1);
  lua_pop(C, 1);
}

static double num_field(lua_State *L, int idx, const char *k, double dflt) {
  lua_getfield(L, idx, k);
  double v = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : dflt;
  lua_pop(L, 1);
  return v;
}

/* A template's RLIMIT_CPU: soft `seconds` from now (SIGXCPU ends a
 * definition that loops where the count hook cannot see), hard unlimited so
 * that it can be lifted after the definition (0: lift it). 0 or -1. */
static int set_template_cpu(double seconds, rd_error *err) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_CPU, &rl) != 0) goto fail;
  rl.rlim_cur = seconds > 0 ? (rlim_t)(ceil(proc_cpu_ms() / 1000.0) + seconds) : rl.rlim_max;
  if (rl.rlim_max != RLIM_INFINITY && rl.rlim_cur > rl.rlim_max) rl.rlim_cur = rl.rlim_max;
  if (setrlimit(RLIMIT_CPU, &rl) != 0) goto fail;
  return 0;
fail:
  rd_error_set(err, RD_EIO, "template: setrlimit(RLIMIT_CPU): %s", strerror(errno));
  return -1;
}

/* Apply the tool's limits, in the order of the design: rlimits,
 * no_new_privs, Landlock, seccomp. Returns 0 or -1 (message sent). */
static int enter_sandbox(worker *w, int tidx) {
  lua_State *C = w->C;
  rd_error err;
  char *rp = w->report;
  size_t rl = sizeof w->report;
  lua_getfield(C, tidx, "security");
  int sidx = lua_gettop(C);
  double max_memory = num_field(C, sidx, "max_memory", 64.0 * 1024 * 1024);
  double max_cpu = num_field(C, sidx, "max_cpu", 5000);
  double max_file = num_field(C, sidx, "max_file_size", 10.0 * 1024 * 1024);
  w->max_memory = max_memory;

  rd_limits lim;
  memset(&lim, 0, sizeof lim);
#if !defined(__SANITIZE_ADDRESS__)
  lim.address_space = (uint64_t)max_memory + AS_OVERHEAD;
#endif
  /* CPU: the hook enforces each call's budget; RLIMIT_CPU is the backstop
   * for the process's whole life (a pool worker serves max_calls calls). */
  double calls = w->once ? 1 : (double)w->max_calls;
  lim.cpu_seconds = ceil((max_cpu + DEFINE_CPU_MS) / 1000.0 * calls) + 1;
  lim.file_size = (uint64_t)max_file;
  lim.open_files = 64;
  if (w->template) {
    /* A template forks its workers (each sets nproc = 0 and its own CPU
     * limit, counted from its fork); its own CPU limit covers the
     * definition only and is lifted after it (set_template_cpu). */
    w->child_cpu_s = ceil(max_cpu / 1000.0) + 1;
    lim.keep_nproc = 1;
    lim.cpu_seconds = 0;
  }
  if (rd__limits_apply(&lim, &err) != RD_OK) {
    send_error(w, err.message);
    return -1;
  }
  if (w->template && set_template_cpu(ceil(DEFINE_CPU_MS / 1000.0) + 1, &err) != 0) {
    send_error(w, err.message);
    return -1;
  }
  if (rd__limits_no_new_privs(&err) != RD_OK) {
    send_error(w, err.message);
    return -1;
  }

  const char *paths[64];
  size_t np = 0;
  lua_getfield(C, sidx, "allowed_paths");
  if (lua_istable(C, -1)) {
    size_t n = lua_objlen(C, -1);
    for (size_t i = 1; i <= n && np < 64; i++) {
      lua_rawgeti(C, -1, (int)i);
      if (lua_type(C, -1) == LUA_TSTRING) paths[np++] = lua_tostring(C, -1);
      lua_pop(C, 1); /* strings stay alive in the table */
    }
  }
  int rc = rd__landlock_restrict(paths, np, &err);
  lua_pop(C, 2); /* allowed_paths, security */
  /* fs roots hold descriptors (closed by __gc): no snapshots for those */
  /* A template's state lives in an arena too, not for snapshots: so that
   * each worker forked from it writes few pages (rd__lstate_forked). */
  if ((!w->once && np == 0) || w->template) {
    double a = 2 * max_memory + 64.0 * 1024 * 1024;
    double b = max_memory + 256.0 * 1024 * 1024;
    w->arena = (size_t)(a < b ? a : b);
  }
  if (rc == RD_ENOSYS) {
    int k = snprintf(rp, rl, "landlock unavailable (%s); ", err.message);
    if (k > 0 && (size_t)k < rl) { rp += k; rl -= (size_t)k; }
  } else if (rc != RD_OK) {
    send_error(w, err.message);
    return -1;
  }
  if (w->template && !spawner_prog) {
    send_error(w, "no seccomp program for a template");
    return -1;
  }
  if (!seccomp_prog) {
    snprintf(rp, rl, "seccomp unavailable");
  } else if (rd__seccomp_apply(w->template ? spawner_prog : seccomp_prog, &err) != RD_OK) {
    send_error(w, err.message);
    return -1;
  }
  return 0;
}

/* A fresh tool state with the bootstrap from bytecode. NULL on failure. */
static rd_lstate *fresh_state(worker *w) {
  rd_lstate *s;
  rd_lstate_opts o = {0, 0, w->arena};
  rd_error err;
  if (rd__lstate_new(&s, &o, &err) != RD_OK) return NULL;
  lua_State *T = rd__lstate_L(s);
  rd__toolcore_preload(T, on_note, w);
  lua_getglobal(T, "package");
  lua_pushliteral(T, "");
  lua_setfield(T, -2, "path");
  lua_pushliteral(T, "");
  lua_setfield(T, -2, "cpath");
  lua_getfield(T, -1, "preload");
  for (size_t i = 0; i < N_BOOT; i++) {
    if (luaL_loadbuffer(T, boot[i].data, boot[i].len, BOOT_MODULES[i]) != 0) {
      rd__lstate_free(s);
      return NULL;
    }
    lua_setfield(T, -2, BOOT_MODULES[i]);
  }
  lua_pop(T, 2);
  lua_getglobal(T, "require");
  lua_pushliteral(T, "rubberduck.toolstate");
  if (lua_pcall(T, 1, 1, 0) != 0) {
    rd__lstate_free(s);
    return NULL;
  }
  lua_setfield(T, LUA_REGISTRYINDEX, "rubberduck.toolstate");
  return s;
}

/* A run's CPU start, for run_in: a thread CPU reading (ms), or one of
 * these: CPU_READ reads the clock when the run is armed; CPU_UNREAD arms
 * without a reading (rd__lstate_arm_at with -1: the hook charges the run
 * its wall time until its first CPU check, an upper bound of its CPU). */
#define CPU_READ (-1.0)
#define CPU_UNREAD (-2.0)

/* Call toolstate.<fname>(arg at C index aidx) in T under limits; leaves
 * the two results on T's stack. Returns the breach; *status the pcall's. */
static rd_breach run_in(rd_lstate *s, const char *fname, lua_State *C, int aidx,
                        double cpu_ms, double timeout_ms, double cpu_start,
                        int *status, double *used_cpu, size_t *peak, rd_error *err) {
  lua_State *T = rd__lstate_L(s);
  lua_settop(T, 0);
  lua_getfield(T, LUA_REGISTRYINDEX, "rubberduck.toolstate");
  lua_getfield(T, -1, fname);
  lua_remove(T, -2);
  size_t cap = rd__lstate_set_max_memory(s, 0);
  int rc = rd__xcopy(C, aidx, T, NULL, NULL, err);
  rd__lstate_set_max_memory(s, cap);
  if (rc != RD_OK) {
    *status = -1;
    return RD_BREACH_NONE;
  }
  uint64_t deadline = timeout_ms > 0 ? rd__mono_ns() + (uint64_t)(timeout_ms * 1e6) : 0;
  rd__lstate_clear_stop(s);
  if (cpu_start == CPU_READ) rd__lstate_arm(s, cpu_ms, deadline);
  else rd__lstate_arm_at(s, cpu_ms, deadline, cpu_start < 0 ? -1 : cpu_start);
  *status = lua_pcall(T, 1, 2, 0);
  return rd__lstate_disarm(s, used_cpu, peak);
}

static double proc_cpu_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Milliseconds to the microsecond: such a number encodes and decodes as a
 * short decimal (json.c's fast paths), where a raw clock difference takes
 * up to three snprintf and strtod calls on each side of the socket. */
static double ms_us(double ms) { return floor(ms * 1000.0 + 0.5) / 1000.0; }

static void push_stats(lua_State *C, double cpu, size_t peak) {
  lua_createtable(C, 0, 3);
  lua_pushnumber(C, ms_us(proc_cpu_ms()));
  lua_setfield(C, -2, "proc_cpu_ms");
  lua_pushnumber(C, ms_us(cpu));
  lua_setfield(C, -2, "cpu_ms");
  lua_pushnumber(C, (double)peak);
  lua_setfield(C, -2, "peak_memory_bytes");
}

/* Text of a failed pcall in T, without running metamethods. */
static void push_error_text(lua_State *C, lua_State *T) {
  if (lua_type(T, -1) == LUA_TSTRING) {
    size_t n;
    const char *s = lua_tolstring(T, -1, &n);
    lua_pushlstring(C, s, n > 4096 ? 4096 : n);
  } else {
    lua_pushfstring(C, "error object of type %s", lua_typename(T, lua_type(T, -1)));
  }
}

/* Make the answer at `ans` a failure: ok = false, kind, and the message on
 * top of C's stack (popped). */
static void set_failure(lua_State *C, int ans, const char *kind) {
  lua_setfield(C, ans, "message");
  lua_pushboolean(C, 0);
  lua_setfield(C, ans, "ok");
  lua_pushstring(C, kind);
  lua_setfield(C, ans, "kind");
}

/* Define the tool in the fresh state `s` (NULL: none could be made) and
 * keep it as the next call's state. The definition runs under the load
 * budget and inside the sandbox (the worker is sandboxed by now). */
static void make_next(worker *w, rd_lstate *s) {
  lua_State *C = w->C;
  w->next = s;
  w->next_ok = 0;
  w->def_cpu = w->def_ms = 0;
  w->def_peak = 0;
  if (!s) return;
  uint64_t t0 = rd__mono_ns();
  rd__lstate_set_max_memory(s, 64u * 1024 * 1024); /* for the definition */
  lua_State *T = rd__lstate_L(s);
  int top = lua_gettop(C);
  lua_createtable(C, 0, 3);
  lua_rawgeti(C, LUA_REGISTRYINDEX, w->tool_ref);
  lua_getfield(C, -1, "source");
  lua_setfield(C, -3, "source");
  lua_getfield(C, -1, "file");
  lua_pushfstring(C, "@%s", lua_tostring(C, -1));
  lua_setfield(C, -4, "chunkname");
  lua_setfield(C, -3, "file");
  lua_pop(C, 1);
  /* The engine loaded this very source before it sent it (registry.lua):
   * its dangerous-function scan has passed, no need to scan it again. */
  lua_pushboolean(C, 1);
  lua_setfield(C, -2, "scanned");
  int status;
  rd_error err;
  rd_breach br = run_in(s, "define", C, lua_gettop(C), DEFINE_CPU_MS, 2000, CPU_READ,
                        &status, &w->def_cpu, &w->def_peak, &err);
  lua_settop(C, top);
  if (br == RD_BREACH_NONE && status == 0 && lua_istable(T, -2)) {
    lua_getfield(T, -2, "ok");
    w->next_ok = lua_toboolean(T, -1);
    lua_pop(T, 1);
  }
  lua_settop(T, 0);
  /* The tool's own heap counts from here. */
  if (w->next_ok) rd__lstate_set_max_memory(s, rd__lstate_heap(s) + (size_t)w->max_memory);
  w->def_ms = (double)(rd__mono_ns() - t0) / 1e6;
}

/* One call: run the handler in the state defined beforehand, answer. Returns 1 if the worker
 * must not serve another call (a breach poisons nothing, but a process that
 * hit RLIMIT-adjacent limits is better replaced). */
static int serve_call(worker *w, int cidx) {
  rd_lstate *s = w->next;
  w->next = NULL;
  lua_State *C = w->C;
  lua_getfield(C, cidx, "limits");
  int lidx = lua_gettop(C);
  double cpu_ms = num_field(C, lidx, "cpu_ms", 5000);
  double timeout_ms = num_field(C, lidx, "timeout_ms", 0);
  double max_output = num_field(C, lidx, "max_output", 16.0 * 1024 * 1024);

  int base = lua_gettop(C);
  lua_createtable(C, 0, 6); /* the answer */
  int ans = lua_gettop(C);
  lua_pushliteral(C, "result");
  lua_setfield(C, ans, "op");

  rd_error err;
  int retire = 0;
  if (!s) {
    lua_pushliteral(C, "worker could not make a tool state");
    set_failure(C, ans, "internal");
    push_stats(C, 0, 0);
    lua_setfield(C, ans, "stats");
    send_json(w, ans);
    lua_settop(C, base - 1);
    return 1;
  }
  lua_State *T = rd__lstate_L(s);
  int status;
  double used2 = 0;
  size_t peak2 = 0;
  if (!w->next_ok) {
    lua_pushliteral(C, "the tool's definition did not load in the worker");
    set_failure(C, ans, "internal");
    push_stats(C, w->def_cpu, w->def_peak);
    lua_setfield(C, ans, "stats");
    send_json(w, ans);
    rd__lstate_free(s);
    lua_settop(C, base - 1);
    return 1;
  }
  rd_breach br;

  uint64_t t_run = rd__mono_ns();
  lua_getfield(C, cidx, "arg");
  br = run_in(s, "execute", C, lua_gettop(C), cpu_ms, timeout_ms, w->cpu_idle,
              &status, &used2, &peak2, &err);
  lua_pop(C, 1);
  size_t cap = rd__lstate_set_max_memory(s, 0);
  if (status == -1) {
    lua_pushstring(C, err.message);
    set_failure(C, ans, "internal");
  } else if (br != RD_BREACH_NONE) {
    const char *msg = rd__lstate_breach_message(s);
    if (msg) lua_pushstring(C, msg);
    else if (status != 0) push_error_text(C, T);
    else lua_pushstring(C, rd__breach_kind(br));
    set_failure(C, ans, rd__breach_kind(br));
    retire = 1;
  } else if (status != 0) {
    push_error_text(C, T);
    set_failure(C, ans, "error");
  } else {
    int rc = rd__xcopy(T, -2, C, NULL, NULL, &err);
    if (rc == RD_OK) {
      lua_setfield(C, ans, "status");
      rd_xcopy_opts oo = {0, (size_t)max_output, 0};
      rc = rd__xcopy(T, -1, C, &oo, NULL, &err);
      if (rc == RD_OK) {
        /* The same normalization as in-process levels (results.h); binary
         * strings travel as base64, their pointers beside them. */
        rc = rd__result_normalize(C, -1, NULL, &err);
        if (rc == RD_OK) {
          lua_setfield(C, ans, "binary_paths");
          lua_setfield(C, ans, "output");
        }
        lua_pop(C, 1);   /* the raw copy */
      }
    }
    if (rc == RD_OK) {
      lua_pushboolean(C, 1);
      lua_setfield(C, ans, "ok");
    } else {
      lua_pushnil(C);
      lua_setfield(C, ans, "status");
      lua_pushstring(C, err.message);
      set_failure(C, ans, rc == RD_ELIMIT && strstr(err.message, "larger than")
                              ? "output_limit" : "invalid_output");
    }
  }
  rd__lstate_set_max_memory(s, cap);
  push_stats(C, used2, peak2);
  /* where the worker's time went (for the sandbox benchmark) */
  lua_pushnumber(C, ms_us(w->def_ms));
  lua_setfield(C, -2, "define_ms");
  lua_pushnumber(C, ms_us((double)(rd__mono_ns() - t_run) / 1e6));
  lua_setfield(C, -2, "execute_ms");
  /* CLOCK_MONOTONIC (ms, as core.mono_ms) when the call was read and when
   * the answer went out: with the engine's clock, the two hand-offs */
  lua_pushnumber(C, (double)w->t_recv / 1e6);
  lua_setfield(C, -2, "recv_at_ms");
  lua_pushnumber(C, (double)rd__mono_ns() / 1e6);
  lua_setfield(C, -2, "answer_at_ms");
  lua_setfield(C, ans, "stats");
  /* Tell the engine when this worker will not serve another call, so it
   * does not send one to a process that is exiting. */
  if (retire || w->once || w->calls + 1 >= w->max_calls) {
    retire = 1;
    lua_pushboolean(C, 1);
    lua_setfield(C, ans, "last");
  }
  /* The output is normalized: it encodes (one level below the answer;
   * binary strings as base64). */
  rd_buf b = RD_BUF_INIT;
  rd_json_opts jo = {.max_depth = RD_JSON_MAX_DEPTH + 1, .binary = 1};
  if (rd__json_encode(C, ans, &b, &jo, &err) != RD_OK) {
    rd__buf_free(&b);
    lua_pushnil(C);
    lua_setfield(C, ans, "output");
    lua_pushnil(C);
    lua_setfield(C, ans, "status");
    lua_pushstring(C, err.message);
    set_failure(C, ans, "invalid_output");
    send_json(w, ans);
  } else {
    if (rd__frame_send(w->fd, b.data, b.len) != 0) _exit(3);
    rd__buf_free(&b);
  }
  lua_settop(C, base - 1);
  /* Freed once the answer is out; a retiring worker just exits. */
  if (!retire) w->used = s;
  return retire;
}

/* A pooled worker that has answered watches its socket this long before
 * it blocks in read(): a caller sending calls one after another then finds
 * it awake (waking a blocked process costs tens to hundreds of µs on a
 * busy VM). */
#define WORKER_SPIN_NS 300000u
/* The engine's next frame, taken from the socket with as few system calls
 * as can be: each look is one recv() that takes whatever has come (a call,
 * or several frames at once), kept in `in` between calls; no peek, no
 * separate reads of the length and the text. With spin_ns, the worker
 * looks without blocking for up to that long (the first 20 µs only look:
 * the engine on another core answers within that; then each look yields
 * to any runnable process), then blocks. *p, *n: the frame's text, valid
 * until the next call; *used: the bytes to drop before the next one.
 * Sets w->cpu_idle: without a spin, a thread CPU reading taken before the
 * wait (a strict call's budget counts from there); after a spin,
 * CPU_UNREAD, so that no CPU clock is read (a system call) on the way to
 * the call: its run is armed without a reading, like an in-process
 * call's, and never charged the spin. 0, 1 on a clean EOF, -1 on error
 * or a frame larger than RD_FRAME_MAX. */
static int next_frame(worker *w, rd_buf *in, size_t *used, uint64_t spin_ns,
                      const char **p, size_t *n) {
  if (*used) {
    memmove(in->data, in->data + *used, in->len - *used);
    in->len -= *used;
    *used = 0;
  }
  w->cpu_idle = spin_ns ? CPU_UNREAD : rd__thread_cpu_ms();
  uint64_t start = spin_ns ? rd__mono_ns() : 0;
  int flags = spin_ns ? MSG_DONTWAIT : 0;
  for (;;) {
    size_t need = 4;
    if (in->len >= 4) {
      const unsigned char *h = (const unsigned char *)in->data;
      uint32_t len = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 |
                     (uint32_t)h[3] << 24;
      if (len > RD_FRAME_MAX) {
        errno = EMSGSIZE;
        return -1;
      }
      if (in->len - 4 >= len) {
        *p = in->data + 4;
        *n = len;
        *used = 4 + (size_t)len;
        return 0;
      }
      need = 4 + (size_t)len;
    }
    size_t want = need - in->len < 4096 ? 4096 : need - in->len;
    if (rd__buf_reserve(in, want) != RD_OK) {
      errno = ENOMEM;
      return -1;
    }
    ssize_t r = recv(w->fd, in->data + in->len, in->cap - 1 - in->len, flags);
    if (r > 0) {
      in->len += (size_t)r;
      continue;
    }
    if (r == 0) return in->len == 0 ? 1 : -1;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
    uint64_t now = rd__mono_ns();
    if (now - start >= spin_ns) flags = 0; /* spun long enough: block */
    else if (now - start >= 20000u) sched_yield();
  }
}

/* After a pool call: the next call's state, restored from the snapshot
 * when the used one has one, else made and defined afresh (and then
 * snapshotted when the tool allows it). */
static void next_state(worker *w) {
  rd_lstate *s = w->used;
  w->used = NULL;
  rd_error err;
  uint64_t t0 = rd__mono_ns();
  if (s && w->arena && rd__lstate_restore(s, &err) == RD_OK) {
    w->next = s;
    w->next_ok = 1; /* the snapshot was taken of a defined state */
    w->def_cpu = 0;
    w->def_peak = 0;
    w->def_ms = (double)(rd__mono_ns() - t0) / 1e6;
    return;
  }
  rd__lstate_free(s);
  make_next(w, fresh_state(w));
  if (w->arena && w->next && w->next_ok && rd__lstate_snapshot(w->next, &err) != RD_OK) {
    /* no snapshot: this state is freed after its call, like any other */
  }
}

/* Made by the zygote before it forks (see W): a tool state with the
 * bootstrap loaded, never used, so each worker inherits a pristine copy. */
static rd_lstate *zygote_state;

static void template_main(int fd) __attribute__((noreturn));
static void prefault(void);

/* A pool worker readied ahead of need ("ahead" in its tool message:
 * workers.lua readies the replacement of a balanced worker that nears its
 * last call). Its first call would otherwise run on the state inherited
 * from the zygote, paying a copy-on-write fault for each page it writes
 * (1-2 ms on the reference VM), and the snapshotted state would be built
 * after it. Build that state now, take a call's way through it once
 * (prefault: decode, copies in and out, encode) and restore it from its
 * snapshot: the first call then costs what a later one does. */
static void ready_ahead(worker *w) {
  w->used = w->next;
  w->next = NULL;
  next_state(w); /* the inherited state has no snapshot: a fresh one */
  w->def_ms = 0;  /* not on any call's path */
  if (!w->next || !w->next_ok) return;
  prefault();
  rd_error err;
  /* no snapshot (memory outside the arena): the dummy's copies are mere
   * garbage in it, and the state is rebuilt after its call as usual */
  (void)rd__lstate_restore(w->next, &err);
}

/* A template's workers read their call into this buffer, allocated by the
 * template before it forks them: a worker that mallocs it itself pays
 * for the allocator's first larger request in a forked heap (it sorts the
 * free chunks the template left, writing headers on page after page: a
 * copy-on-write fault each, 1-3 ms of CPU per worker on the reference
 * VM). The template's own request sorts them once, for all its workers. */
#define FRAME_RESERVE (16 * 1024)
static rd_buf frame_in = RD_BUF_INIT;

/* The life of a worker after fork. Never returns. */
static void worker_main(int fd) {
  worker *w = &W;
  w->fd = fd;
  if (!w->C) _exit(4);
  rd_buf in = frame_in;
  frame_in = (rd_buf)RD_BUF_INIT;
  size_t used = 0;
  /* The first call's state: the copy of the zygote's (no work at all), or
   * made here if the zygote could not make one. */
  rd_lstate *warm = NULL;
  if (w->tool_ref == LUA_NOREF) { /* not a template's worker: its tool comes */
    warm = zygote_state ? zygote_state : fresh_state(w);
  }
  zygote_state = NULL;
  uint64_t spin = 0; /* none before the tool message and a strict call */
  for (;;) {
    const char *text;
    size_t tlen;
    int rc = next_frame(w, &in, &used, spin, &text, &tlen);
    if (rc != 0) _exit(rc == 1 ? 0 : 5);
    w->t_recv = rd__mono_ns();
    rd_error err;
    lua_settop(w->C, 0);
    if (rd__json_decode(w->C, text, tlen, NULL, &err) != RD_OK || !lua_istable(w->C, 1)) {
      send_error(w, "worker got a malformed message");
      _exit(6);
    }
    lua_getfield(w->C, 1, "op");
    const char *op = lua_tostring(w->C, -1);
    lua_pop(w->C, 1);
    if (op && strcmp(op, "tool") == 0 && w->tool_ref == LUA_NOREF) {
      lua_getfield(w->C, 1, "mode");
      const char *mode = lua_tostring(w->C, -1);
      w->template = mode && strcmp(mode, "template") == 0;
      w->once = w->template || (mode && strcmp(mode, "once") == 0);
      lua_pop(w->C, 1);
      w->max_calls = (int)num_field(w->C, 1, "max_calls", 100);
      lua_getfield(w->C, 1, "ahead");
      int ahead = lua_toboolean(w->C, -1);
      lua_pop(w->C, 1);
      if (w->max_calls < 1) w->max_calls = 1;
      if (enter_sandbox(w, 1) != 0) _exit(7);
      lua_pushvalue(w->C, 1);
      w->tool_ref = luaL_ref(w->C, LUA_REGISTRYINDEX);
      /* Define the tool now, inside the sandbox, so the call finds it
       * ready: the engine may send this message long before the call. */
      if (w->template && warm) {
        /* the warm state has no arena: a template makes its own */
        rd__lstate_free(warm);
        warm = fresh_state(w);
      }
      make_next(w, warm);
      warm = NULL;
      if (w->template) {
        rd_error e2;
        if (!w->next_ok) {
          send_error(w, "the tool's definition did not load in its template");
          _exit(8);
        }
        /* the definition is done: the template's own CPU limit goes (its
         * workers set theirs), then it serves spawn requests for good */
        if (set_template_cpu(0, &e2) != 0) {
          send_error(w, e2.message);
          _exit(7);
        }
      }
      lua_createtable(w->C, 0, 2);
      lua_pushliteral(w->C, "ready");
      lua_setfield(w->C, -2, "op");
      lua_pushstring(w->C, w->report);
      lua_setfield(w->C, -2, "report");
      lua_pushnumber(w->C, proc_cpu_ms());
      lua_setfield(w->C, -2, "proc_cpu_ms");
      send_json(w, -1);
      if (w->template) template_main(fd); /* never returns */
      if (ahead && !w->once && w->arena && w->next_ok) ready_ahead(w);
    } else if (op && strcmp(op, "call") == 0 && w->tool_ref != LUA_NOREF) {
      int retire = serve_call(w, 1); /* frees the state */
      w->calls++;
      if (w->once || retire || w->calls >= w->max_calls) {
        /* The answer is out: the teardown of this process (milliseconds
         * of page-table work on some virtual machines) must not compete
         * with the engine reading it, nor with the next call. */
        (void)setpriority(PRIO_PROCESS, 0, 19);
        /* A strict process waits for the engine to close its socket
         * (it does once it has read the answer) before it exits: its
         * teardown then runs after the engine's wake-up, not beside it. */
        if (w->once) {
          char c;
          while (read(fd, &c, 1) > 0) {}
        }
        _exit(0);
      }
      /* The next call's state, while the engine has no call for us. */
      next_state(w);
      spin = WORKER_SPIN_NS;
    } else {
      send_error(w, "worker got an unexpected message");
      _exit(6);
    }
  }
}

/* ---- the zygote -------------------------------------------------------------------- */

#define MAX_CHILDREN 4096
static pid_t children[MAX_CHILDREN];
static size_t n_children;

static void forget(pid_t pid) {
  for (size_t i = 0; i < n_children; i++)
    if (children[i] == pid) {
      children[i] = children[--n_children];
      return;
    }
}

/* Fork one worker with a socketpair: the child runs child(its end) and
 * never returns; the engine's end goes to the engine over ctrl ('R'). */
static int spawn_one(int sigfd, void (*child)(int)) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return -1;
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    close(sv[0]);
    close(sv[1]);
    return -1;
  }
  if (pid == 0) {
    /* the worker: keep only its socket */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(0); /* the parent died before prctl */
    close(sv[0]);
    close(ctrl);
    close(sigfd);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_IGN);
    child(sv[1]);
  }
  close(sv[1]);
  if (n_children < MAX_CHILDREN) children[n_children++] = pid;
  rd_zmsg m;
  memset(&m, 0, sizeof m);
  m.type = 'R';
  m.pid = pid;
  struct iovec iov = {&m, sizeof m};
  char cbuf[CMSG_SPACE(sizeof(int))];
  memset(cbuf, 0, sizeof cbuf);
  struct msghdr mh;
  memset(&mh, 0, sizeof mh);
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = cbuf;
  mh.msg_controllen = sizeof cbuf;
  struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
  cm->cmsg_level = SOL_SOCKET;
  cm->cmsg_type = SCM_RIGHTS;
  cm->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(cm), &sv[0], sizeof(int));
  ssize_t r = sendmsg(ctrl, &mh, MSG_NOSIGNAL);
  close(sv[0]);
  /* a template's socket is a stream: the rest of a record cut short */
  if (r > 0 && (size_t)r < sizeof m &&
      rd__write_full(ctrl, (char *)&m + r, sizeof m - (size_t)r) != 0)
    return -1;
  return r < 0 ? -1 : 0;
}

/* One control record; a template's socket is a stream, so a record may
 * come in pieces. >0, or <= 0 when the engine is gone. */
static ssize_t recv_zmsg(rd_zmsg *m) {
  ssize_t r = recv(ctrl, m, sizeof *m, 0);
  if (r > 0 && (size_t)r < sizeof *m &&
      rd__read_full(ctrl, (char *)m + r, sizeof *m - (size_t)r) != 0)
    return -1;
  return r;
}

/* Serve the engine's spawn requests on ctrl and report the children's
 * exits, until the engine closes ctrl. Every worker asked for is forked
 * (the engine counts on each one: a call waits for it), SPAWN_BATCH at a
 * time, with the exits and requests that came meanwhile served between
 * batches. */
#define SPAWN_BATCH 16
static void serve_spawns(int sigfd, void (*child)(int)) {
  long owed = 0; /* workers asked for and not forked yet */
  for (;;) {
    if (owed > 0) {
      for (int i = 0; i < SPAWN_BATCH && owed > 0; i++, owed--)
        if (spawn_one(sigfd, child) != 0) {
          warn("cannot start a worker: %s", strerror(errno));
          owed = 0;
        }
    }
    struct pollfd pf[2] = {{ctrl, POLLIN, 0}, {sigfd, POLLIN, 0}};
    if (poll(pf, 2, owed > 0 ? 0 : -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (pf[1].revents & POLLIN) {
      struct signalfd_siginfo si;
      while (read(sigfd, &si, sizeof si) == (ssize_t)sizeof si) {}
      int st;
      pid_t pid;
      while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        forget(pid);
        rd_zmsg m;
        memset(&m, 0, sizeof m);
        m.type = 'X';
        m.pid = pid;
        m.status = st;
        if (send(ctrl, &m, sizeof m, MSG_NOSIGNAL) < 0 && errno == EPIPE) return;
      }
    }
    if (pf[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      rd_zmsg m;
      if (recv_zmsg(&m) <= 0) break; /* the engine is gone */
      if (m.type == 'S' && m.pid > 0 && owed < MAX_CHILDREN)
        owed += m.pid < MAX_CHILDREN ? m.pid : MAX_CHILDREN;
    }
  }
}

static int sigchld_fd(void) {
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigprocmask(SIG_BLOCK, &mask, NULL);
  return signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
}

/* Make present, while the worker waits in stock, the pages its call will
 * write: after fork every page is shared with the template, and the first
 * write to each costs a page fault (14 µs each on the reference virtual
 * machine) that would otherwise land on the call's path. A dummy call's
 * data takes the call's way (JSON decode, copies into the tool state and
 * back, encode) without running anything of the tool: it writes what a
 * call writes in the inherited heaps (string tables, registries, the
 * allocators' state), which is most of it. Then PREFAULT_ARENA bytes of
 * each state's arena beyond what the dummy took, where the call's own
 * objects go (rd__lstate_forked). No more than that: every page written
 * here is a fault this process pays whether its call needs the page or
 * not, and a page its exit frees (touching 256 KiB of free heap and 48 KiB
 * of stack as well took 16 more faults per process and saved the trivial
 * call none). */
#define PREFAULT_ARENA (8 * 1024)
static void __attribute__((noinline)) prefault(void) {
  lua_State *C = W.C;
  rd_error err;
  static const char call[] =
      "{\"op\":\"call\",\"arg\":{\"params\":{\"a\":[1,2.5,\"x\"],\"s\":\"xxxxxxxxxxxxxxxxxxxx\"},"
      "\"ctx\":{\"k\":\"v\",\"n\":1}},\"limits\":{\"cpu_ms\":1,\"timeout_ms\":1}}";
  int top = lua_gettop(C);
  if (W.next && rd__json_decode(C, call, sizeof call - 1, NULL, &err) == RD_OK) {
    /* a call's way: decoded in C, copied into the tool state and back,
     * encoded; the copies are garbage the call's collector may take */
    lua_State *T = rd__lstate_L(W.next);
    lua_getfield(C, -1, "arg");
    size_t cap = rd__lstate_set_max_memory(W.next, 0);
    if (rd__xcopy(C, -1, T, NULL, NULL, &err) == RD_OK) {
      rd__xcopy(T, -1, C, NULL, NULL, &err);
      lua_pop(T, 1);
    }
    rd__lstate_set_max_memory(W.next, cap);
    rd_buf b = RD_BUF_INIT;
    rd__json_encode(C, -1, &b, NULL, &err);
    rd__buf_free(&b);
  }
  lua_settop(C, top);
}

/* A worker forked by a template: the tool is defined (W.next), the
 * template's limits are inherited; what is per process comes now, before
 * the call is read: RLIMIT_CPU from zero and nproc = 0 (quiet: this
 * process reports nothing, and formatting a report writes pages), then the
 * drop program on top of the template's spawner program, which together
 * are the worker policy (seccomp_linux.c). */
static void template_child(int fd) {
  W.def_ms = 0; /* the definition was the template's, not this call's */
  rd_limits lim;
  memset(&lim, 0, sizeof lim);
  lim.cpu_seconds = W.child_cpu_s;
  lim.quiet = 1;
  rd_error err;
  if (rd__limits_apply(&lim, &err) != RD_OK) _exit(7);
  /* Write as few of the pages shared with the template as can be: the
   * states' new blocks come from their arenas' untouched ends. (The
   * control state's collector stays on: it hardly ever runs in a call, and
   * what it holds grows with what the tool does: ctx.progress notes.) */
  rd__lstate_forked(control, 0);
  if (W.next) rd__lstate_forked(W.next, 0);
  /* A call already waiting (the stock ran dry): no prefault, the call
   * takes only the faults it needs. */
  char c;
  if (recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) != 1) {
    if (frame_in.data) memset(frame_in.data, 0, 4096);
    prefault();
    /* the dummy's objects are garbage: the call's come after them */
    rd__lstate_forked(control, PREFAULT_ARENA);
    if (W.next) rd__lstate_forked(W.next, PREFAULT_ARENA);
  }
  /* Ready: back to the normal policy (the template forks and this child
   * got ready as SCHED_BATCH, never preempting a call; a call woken on a
   * busy machine should run at once). Refused: it stays batch. */
  struct sched_param sp = {0};
  (void)sched_setscheduler(0, SCHED_OTHER, &sp);
  /* a template exists only with the spawner program, which comes with
   * the drop program (rd__zygote_main) */
  if (!drop_prog || rd__seccomp_stack(drop_prog, &err) != RD_OK) _exit(7);
  worker_main(fd);
  _exit(0);
}

/* A strict tool's template, after its "ready": sandboxed (with the
 * spawner filter), the tool defined in W.next. From now on its socket
 * carries zygote control records (proto.h): it forks single-use workers
 * that inherit the defined state, until the engine closes the socket;
 * then it exits and its workers die with it (PR_SET_PDEATHSIG). */
static void template_main(int fd) {
  /* No fastbins in a template (and so in its workers): a worker's first
   * larger malloc would otherwise consolidate every fastbin chunk the
   * template left, writing headers across its heap: a copy-on-write fault
   * per page, 1-3 ms of CPU per worker on the reference VM. mallopt
   * consolidates them here, once; freed chunks then merge at once. */
  (void)mallopt(M_MXFAST, 0);
  (void)rd__buf_reserve(&frame_in, FRAME_RESERVE);
  ctrl = fd;
  n_children = 0;
  int sigfd = sigchld_fd();
  if (sigfd < 0) _exit(4);
  serve_spawns(sigfd, template_child);
  _exit(0);
}

int rd__zygote_main(int ctrl_fd, const char *lua_dir) {
  ctrl = ctrl_fd;
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  tzset(); /* os.date needs the zone; Landlock hides /etc/localtime later */
  /* SCHED_BATCH (inherited by every worker): a worker woken by a message
   * from the engine does not preempt the engine's thread on its core (a
   * stocked strict worker defining its tool would otherwise run first,
   * for milliseconds, while the engine is still answering its caller).
   * Same priority otherwise. A speed hint, not a protection: where it is
   * refused the workers keep the default policy, without a warning. */
  {
    struct sched_param sp = {0};
    (void)sched_setscheduler(0, SCHED_BATCH, &sp);
  }
  signal(SIGPIPE, SIG_IGN);
  /* Memory freed stays with the process (a worker's prefault, below, is
   * not given back before its call), and blocks up to a few MB come from
   * the heap rather than from mmap (a fresh mapping faults afresh). */
  mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024);
  mallopt(M_MMAP_THRESHOLD, 4 * 1024 * 1024);
  if (load_boot(lua_dir) != 0) return 3;
  W.fd = -1;
  W.tool_ref = LUA_NOREF;
  {
    rd_lstate_opts co = {0, 0, CONTROL_ARENA};
    rd_error e0;
    if (rd__lstate_new(&control, &co, &e0) != RD_OK) return 3;
    W.C = rd__lstate_L(control);
  }
  rd__json_init(W.C);
  zygote_state = fresh_state(&W); /* NULL: each worker makes its own */

  rd_error err;
  if (rd__limits_namespaces(RD_NS_NET | RD_NS_IPC | RD_NS_UTS, &err) != RD_OK)
    warn("namespaces: %s (workers keep the engine's network)", err.message);
  if (rd__seccomp_compile(&seccomp_prog, &err) != RD_OK) {
    seccomp_prog = NULL;
    warn("seccomp: %s (workers run without a syscall filter)", err.message);
  } else if (rd__seccomp_compile_spawner(&spawner_prog, &err) != RD_OK ||
             rd__seccomp_compile_drop(&drop_prog, &err) != RD_OK) {
    rd__seccomp_free(spawner_prog);
    spawner_prog = NULL; /* strict tools then get no template */
  }
  {
    /* Probe Landlock once so a missing one is reported at start. */
    pid_t p = fork();
    if (p == 0) {
      rd_error e2;
      _exit(rd__landlock_restrict(NULL, 0, &e2) == RD_ENOSYS ? 1 : 0);
    }
    int st = 0;
    if (p > 0 && waitpid(p, &st, 0) == p && WIFEXITED(st) && WEXITSTATUS(st) == 1)
      warn("landlock: not available on this kernel (workers rely on the fs API's checks)");
  }

  int sigfd = sigchld_fd();
  if (sigfd < 0) return 4;
  serve_spawns(sigfd, worker_main);
  for (size_t i = 0; i < n_children; i++) kill(children[i], SIGKILL);
  while (waitpid(-1, NULL, 0) > 0) {}
  return 0;
}
