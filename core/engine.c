/*
 * engine.c — the embedding API (rubberduck.h): an rd_engine is a host
 * LuaJIT state running lua/rubberduck/init.lua's engine, which owns the
 * libuv loop, the telemetry bus, the tool registry and the pipeline.
 */
#include "rd.h"
#include "engine.h"
#include "lua/bind.h"
#include "telemetry.h"

#include <lauxlib.h>
#include <lualib.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct rd_engine {
  lua_State *L;
  int ref;          /* the Lua engine object */
};

/* ---- host state --------------------------------------------------------------- */

static int is_dir_with_init(const char *dir) {
  char p[PATH_MAX];
  struct stat st;
  snprintf(p, sizeof p, "%s/rubberduck/init.lua", dir);
  return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

const char *rd__lua_dir(void) {
  static char found[PATH_MAX];
  if (found[0]) return found;
  const char *env = getenv("RUBBERDUCK_LUA_DIR");
  if (env && *env) {
    snprintf(found, sizeof found, "%s", env);
    return found;
  }
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  int in_build = 0;
  if (n > 0) {
    exe[n] = '\0';
    size_t bl = strlen(RD_BUILD_DIR);
    in_build = strncmp(exe, RD_BUILD_DIR, bl) == 0 && exe[bl] == '/';
  }
  char rel[PATH_MAX];
  rel[0] = '\0';
  if (n > 0) {
    /* An installed binary: <prefix>/bin/rduck next to <prefix>/share/... */
    char *slash = strrchr(exe, '/');
    if (slash) {
      *slash = '\0';
      int k = snprintf(rel, sizeof rel, "%s/../share/rubberduck/lua", exe);
      if (k < 0 || (size_t)k >= sizeof rel) rel[0] = '\0';
    }
  }
  if (in_build && is_dir_with_init(RD_SOURCE_LUA_DIR))
    snprintf(found, sizeof found, "%s", RD_SOURCE_LUA_DIR);
  else if (rel[0] && is_dir_with_init(rel) && realpath(rel, found))
    ; /* found */
  else if (is_dir_with_init(RD_INSTALL_LUA_DIR))
    snprintf(found, sizeof found, "%s", RD_INSTALL_LUA_DIR);
  else
    snprintf(found, sizeof found, "%s", RD_SOURCE_LUA_DIR);
  return found;
}

static int is_exec(const char *p) { return access(p, X_OK) == 0; }

/* Copy `cand` into `found` if it names an executable; 1 if it did. */
static int take_exec(char *found, size_t size, const char *cand) {
  if (!is_exec(cand) || strlen(cand) >= size) return 0;
  memcpy(found, cand, strlen(cand) + 1);
  return 1;
}

const char *rd__worker_path(void) {
  static char found[PATH_MAX];
  if (found[0]) return found;
  const char *env = getenv("RUBBERDUCK_WORKER");
  if (env && *env && take_exec(found, sizeof found, env)) return found;
  char exe[PATH_MAX], cand[PATH_MAX + 32];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash) {
      *slash = '\0';
      snprintf(cand, sizeof cand, "%s/rduck-worker", exe);
      if (take_exec(found, sizeof found, cand)) return found;
    }
  }
  if (take_exec(found, sizeof found, RD_BUILD_DIR "/rduck-worker")) return found;
  if (take_exec(found, sizeof found, RD_INSTALL_BIN_DIR "/rduck-worker")) return found;
  return NULL;
}

int rd__host_open(lua_State **out, const char *lua_dir, rd_error *err) {
  if (!lua_dir) lua_dir = rd__lua_dir();
  lua_State *L = luaL_newstate();
  if (!L) return rd_error_set(err, RD_ENOMEM, "cannot create the host Lua state");
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "path");
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", lua_dir, lua_dir,
                  lua_tostring(L, -1));
  lua_setfield(L, -3, "path");
  lua_pop(L, 1);
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_rubberduck_core);
  lua_setfield(L, -2, "rubberduck.core");
  lua_pop(L, 2);
  *out = L;
  return RD_OK;
}

/* ---- calls into the Lua engine ---------------------------------------------------- */

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
  return 1;
}

/* Call engine:<method>(nargs args already pushed) with nres results.
 * On error fills err (RD_ELUA) and leaves nothing pushed. */
static int call_method(rd_engine *e, const char *method, int nargs, int nres,
                       rd_error *err) {
  lua_State *L = e->L;
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, traceback);
  lua_rawgeti(L, LUA_REGISTRYINDEX, e->ref);
  lua_getfield(L, -1, method);
  lua_insert(L, base + 1);   /* fn */
  lua_insert(L, base + 2);   /* self */
  lua_insert(L, base + 1);   /* traceback below fn */
  if (lua_pcall(L, nargs + 1, nres, base + 1) != 0) {
    rd_error_set(err, RD_ELUA, "%s", lua_tostring(L, -1));
    lua_settop(L, base);
    return RD_ELUA;
  }
  lua_remove(L, base + 1);
  return RD_OK;
}

int rd_engine_open(rd_engine **out, const rd_engine_config *cfg, rd_error *err) {
  if (!out) return rd_error_set(err, RD_EINVAL, "out is NULL");
  rd_engine *e = rd__calloc(1, sizeof *e);
  if (!e) return rd_error_set(err, RD_ENOMEM, "cannot allocate the engine");
  int rc = rd__host_open(&e->L, cfg ? cfg->lua_dir : NULL, err);
  if (rc) {
    rd__freemem(e);
    return rc;
  }
  lua_State *L = e->L;
  lua_pushcfunction(L, traceback);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "rubberduck");
  if (lua_pcall(L, 1, 1, 1) != 0) goto lua_fail;
  lua_getfield(L, -1, "open");
  lua_createtable(L, 0, 3);
  if (cfg && cfg->data_dir) { lua_pushstring(L, cfg->data_dir); lua_setfield(L, -2, "data_dir"); }
  if (cfg && cfg->tools_dir) { lua_pushstring(L, cfg->tools_dir); lua_setfield(L, -2, "tools"); }
  if (cfg && cfg->policy) { lua_pushstring(L, cfg->policy); lua_setfield(L, -2, "policy"); }
  if (cfg && cfg->audience) { lua_pushstring(L, cfg->audience); lua_setfield(L, -2, "audience"); }
  if (cfg && cfg->max_running > 0) {
    lua_pushinteger(L, cfg->max_running);
    lua_setfield(L, -2, "max_running");
  }
  if (cfg && cfg->max_queue != 0) {
    lua_pushinteger(L, cfg->max_queue < 0 ? 0 : cfg->max_queue);
    lua_setfield(L, -2, "max_queue");
  }
  lua_pushliteral(L, "c");
  lua_setfield(L, -2, "entry");
  if (lua_pcall(L, 1, 2, 1) != 0) goto lua_fail;
  if (lua_isnil(L, -2)) {
    rd_error_set(err, RD_EIO, "%s", lua_tostring(L, -1));
    lua_close(L);
    rd__freemem(e);
    return RD_EIO;
  }
  lua_pop(L, 1);
  e->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_settop(L, 0);
  *out = e;
  return RD_OK;

lua_fail:
  rd_error_set(err, RD_ELUA, "%s", lua_tostring(L, -1));
  lua_close(L);
  rd__freemem(e);
  return RD_ELUA;
}

void rd_engine_close(rd_engine *e) {
  if (!e) return;
  rd_error err;
  if (call_method(e, "close", 0, 0, &err) != RD_OK)
    fprintf(stderr, "rubberduck: engine close: %s\n", err.message);
  lua_close(e->L);
  rd__freemem(e);
}

static char *dup_top_string(lua_State *L, int idx) {
  size_t n;
  const char *s = lua_tolstring(L, idx, &n);
  if (!s) return NULL;
  char *d = rd__malloc(n + 1);
  if (d) {
    memcpy(d, s, n);
    d[n] = '\0';
  }
  return d;
}

int rd_engine_execute(rd_engine *e, const char *name, const char *params_json,
                      const char *caller_json, char **out_envelope, int *status,
                      rd_error *err) {
  if (!e || !name || !out_envelope) return rd_error_set(err, RD_EINVAL, "NULL argument");
  lua_State *L = e->L;
  lua_pushstring(L, name);
  if (params_json && *params_json) lua_pushstring(L, params_json); else lua_pushnil(L);
  if (caller_json && *caller_json) lua_pushstring(L, caller_json); else lua_pushnil(L);
  int rc = call_method(e, "execute_json", 3, 2, err);
  if (rc) return rc;
  /* results: envelope_json, ok | nil, message */
  if (lua_isnil(L, -2)) {
    rd_error_set(err, RD_EJSON, "%s", lua_tostring(L, -1));
    lua_pop(L, 2);
    return RD_EJSON;
  }
  char *s = dup_top_string(L, -2);
  if (status) *status = lua_toboolean(L, -1);
  lua_pop(L, 2);
  if (!s) return rd_error_set(err, RD_ENOMEM, "cannot copy the envelope");
  *out_envelope = s;
  return RD_OK;
}

/* ---- asynchronous calls ----------------------------------------------------------- */

/* The C callbacks of one submitted call: a userdata, upvalue of the two
 * Lua closures handed to engine:submit_json. */
typedef struct submit_cbs {
  rd_done_cb done;
  rd_progress_cb progress;
  void *ud;
} submit_cbs;

/* (id, envelope_json, ok) */
static int c_on_done(lua_State *L) {
  submit_cbs *c = lua_touserdata(L, lua_upvalueindex(1));
  if (c->done)
    c->done(luaL_checkstring(L, 1), luaL_checkstring(L, 2), lua_toboolean(L, 3), c->ud);
  return 0;
}

/* (id, done, total, message) */
static int c_on_progress(lua_State *L) {
  submit_cbs *c = lua_touserdata(L, lua_upvalueindex(1));
  if (c->progress)
    c->progress(luaL_checkstring(L, 1), lua_tonumber(L, 2), lua_tonumber(L, 3),
                lua_isstring(L, 4) ? lua_tostring(L, 4) : "", c->ud);
  return 0;
}

int rd_engine_submit(rd_engine *e, const char *name, const char *params_json,
                     const char *caller_json, const rd_submit_opts *opts,
                     char id_out[RD_ID_SIZE], rd_error *err) {
  if (!e || !name) return rd_error_set(err, RD_EINVAL, "NULL argument");
  lua_State *L = e->L;
  lua_pushstring(L, name);
  if (params_json && *params_json) lua_pushstring(L, params_json); else lua_pushnil(L);
  if (caller_json && *caller_json) lua_pushstring(L, caller_json); else lua_pushnil(L);
  lua_createtable(L, 0, 2);
  if (opts && opts->deadline_ms > 0) {
    lua_pushnumber(L, opts->deadline_ms);
    lua_setfield(L, -2, "deadline_ms");
  }
  if (opts && opts->retries >= 0) {
    lua_pushinteger(L, opts->retries);
    lua_setfield(L, -2, "retries");
  }
  submit_cbs *c = lua_newuserdata(L, sizeof *c);
  c->done = opts ? opts->on_done : NULL;
  c->progress = opts ? opts->on_progress : NULL;
  c->ud = opts ? opts->ud : NULL;
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, c_on_done, 1);
  lua_insert(L, -2);
  if (c->progress) lua_pushcclosure(L, c_on_progress, 1);
  else { lua_pop(L, 1); lua_pushnil(L); }
  int rc = call_method(e, "submit_json", 6, 2, err);
  if (rc) return rc;
  /* results: id | nil, code name, message */
  if (lua_isnil(L, -2)) {
    const char *msg = lua_tostring(L, -1);
    int code = strncmp(msg ? msg : "", "closed", 6) == 0 ? RD_ECLOSED : RD_EJSON;
    rd_error_set(err, code, "%s", msg ? msg : "submit refused");
    lua_pop(L, 2);
    return code;
  }
  if (id_out) snprintf(id_out, RD_ID_SIZE, "%s", lua_tostring(L, -2));
  lua_pop(L, 2);
  return RD_OK;
}

int rd_engine_cancel(rd_engine *e, const char *execution_id) {
  rd_error err;
  if (!e || !execution_id) return RD_EINVAL;
  lua_pushstring(e->L, execution_id);
  if (call_method(e, "cancel", 1, 1, &err) != RD_OK) {
    fprintf(stderr, "rubberduck: cancel: %s\n", err.message);
    return err.code;
  }
  int ok = lua_toboolean(e->L, -1);
  lua_pop(e->L, 1);
  return ok ? RD_OK : RD_ENOENT;
}

const char *rd_engine_stage(rd_engine *e, const char *execution_id) {
  static const char *const stages[] = {"queued", "validating", "authorizing", "starting",
                                        "running", "retry_wait", NULL};
  rd_error err;
  if (!e || !execution_id) return NULL;
  lua_pushstring(e->L, execution_id);
  if (call_method(e, "stage_of", 1, 1, &err) != RD_OK) return NULL;
  const char *s = lua_tostring(e->L, -1);
  const char *found = NULL;
  for (int i = 0; s && stages[i]; i++)
    if (strcmp(s, stages[i]) == 0) found = stages[i];
  lua_pop(e->L, 1);
  return found;
}

static int run_or_drain(rd_engine *e, const char *method, double arg) {
  rd_error err;
  if (!e) return -1;
  lua_pushnumber(e->L, arg);
  if (call_method(e, method, 1, 1, &err) != RD_OK) {
    fprintf(stderr, "rubberduck: %s: %s\n", method, err.message);
    return -1;
  }
  int n = (int)lua_tointeger(e->L, -1);
  lua_pop(e->L, 1);
  return n;
}

int rd_engine_run(rd_engine *e, rd_run_mode mode) {
  return run_or_drain(e, "run_c", (double)mode);
}

int rd_engine_drain(rd_engine *e, double timeout_ms) {
  return run_or_drain(e, "drain", timeout_ms);
}

int rd_engine_tools_json(rd_engine *e, char **out_json, rd_error *err) {
  if (!e || !out_json) return rd_error_set(err, RD_EINVAL, "NULL argument");
  int rc = call_method(e, "tools_json", 0, 1, err);
  if (rc) return rc;
  char *s = dup_top_string(e->L, -1);
  lua_pop(e->L, 1);
  if (!s) return rd_error_set(err, RD_ENOMEM, "cannot copy the tool list");
  *out_json = s;
  return RD_OK;
}

int rd_engine_load_tools(rd_engine *e, const char *dir, rd_error *err) {
  if (!e || !dir) return rd_error_set(err, RD_EINVAL, "NULL argument");
  lua_pushstring(e->L, dir);
  int rc = call_method(e, "load_tools_c", 1, 2, err);
  if (rc) return rc;
  /* results: true | false, first error message */
  int ok = lua_toboolean(e->L, -2);
  if (!ok) rd_error_set(err, RD_EDEFN, "%s", lua_tostring(e->L, -1));
  lua_pop(e->L, 2);
  return ok ? RD_OK : RD_EDEFN;
}

int rd_engine_subscribe(rd_engine *e, const char *prefix, rd_event_cb cb,
                        void *ud, int *id, rd_error *err) {
  if (!e || !cb) return rd_error_set(err, RD_EINVAL, "NULL argument");
  int rc = call_method(e, "bus_pointer", 0, 1, err);
  if (rc) return rc;
  rd_telemetry *t = lua_touserdata(e->L, -1);
  lua_pop(e->L, 1);
  if (!t) return rd_error_set(err, RD_ECLOSED, "engine is closed");
  return rd__telemetry_subscribe(t, prefix, cb, ud, id, err);
}

void rd_engine_unsubscribe(rd_engine *e, int id) {
  rd_error err;
  if (!e || call_method(e, "bus_pointer", 0, 1, &err) != RD_OK) return;
  rd_telemetry *t = lua_touserdata(e->L, -1);
  lua_pop(e->L, 1);
  if (t) rd__telemetry_unsubscribe(t, id);
}
