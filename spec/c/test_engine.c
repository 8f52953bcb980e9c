/*
 * test_engine.c — the embedding API (core/include/rubberduck.h) as an
 * application uses it: open an engine on a directory of tools, execute,
 * read envelopes, subscribe to telemetry, list and reload tools, close.
 *
 * Tool files are written into a mkdtemp() directory; the engine's Lua half
 * is found by rd__lua_dir() (this binary lives in the build tree).
 *
 * Tests marked "EXPOSES BUG" assert the documented contract that the code
 * does not keep yet; they fail until the code is fixed.
 */
#include "rubberduck.h"
#include "testlib.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char base[64], tools_dir[128], bad_dir[128], data_dir[128], big_dir[128],
    async_dir[128];

static void put_file(const char *dir, const char *name, const char *text) {
  char p[512];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  FILE *f = fopen(p, "wb");
  CHECK(f != NULL);
  if (!f) return;
  fputs(text, f);
  fclose(f);
}

static const char *echo_tool =
  "return tool {\n"
  "  metadata = { name = 'echo', description = 'Echo the text back' },\n"
  "  parameters = {\n"
  "    type = 'object',\n"
  "    properties = { text = { type = 'string', minLength = 1 },\n"
  "                   times = { type = 'integer', minimum = 1, default = 1 } },\n"
  "    required = { 'text' },\n"
  "    additionalProperties = false,\n"
  "  },\n"
  "  security = { level = 'relaxed' },\n"
  "  execution = {\n"
  "    handler = function(params, ctx)\n"
  "      return { text = string.rep(params.text, params.times), tool = ctx.tool }\n"
  "    end,\n"
  "  },\n"
  "}\n";

static const char *boom_tool =
  "return tool {\n"
  "  metadata = { name = 'boom', description = 'Always raises' },\n"
  "  security = { level = 'relaxed' },\n"
  "  execution = { handler = function() error('kaboom-42') end },\n"
  "}\n";

static const char *spin_tool =
  "return tool {\n"
  "  metadata = { name = 'spin', description = 'Loops for ever' },\n"
  "  security = { level = 'relaxed', max_cpu = 100 },\n"
  "  execution = { handler = function() while true do end end },\n"
  "}\n";

static const char *bad_tool =
  "return tool {\n"
  "  metadata = { name = 'bad', description = 'Misspelled level' },\n"
  "  security = { level = 'strcit' },\n"
  "  execution = { handler = function() return {} end },\n"
  "}\n";

static const char *good2_tool =
  "return tool {\n"
  "  metadata = { name = 'good2', description = 'Loads fine' },\n"
  "  security = { level = 'relaxed' },\n"
  "  execution = { handler = function() return { ok = true } end },\n"
  "}\n";

static const char *tiny_tool =
  "return tool {\n"
  "  metadata = { name = 'tiny', description = 'A small heap cap' },\n"
  "  parameters = { type = 'object', properties = { s = { type = 'string' } } },\n"
  "  security = { level = 'relaxed', max_memory = 65536 },\n"
  "  execution = { handler = function(p) return { n = #(p.s or '') } end },\n"
  "}\n";

static const char *nap_tool =
  "return tool {\n"
  "  metadata = { name = 'nap', description = 'Sleeps, reporting progress' },\n"
  "  parameters = { type = 'object', properties = { ms = { type = 'number' } } },\n"
  "  security = { level = 'relaxed' },\n"
  "  execution = { timeout = 60000, handler = function(p, ctx)\n"
  "    ctx.progress(1, 2, 'asleep') ctx.sleep(p.ms or 0) return { slept = p.ms } end },\n"
  "}\n";

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb; (void)flag; (void)ftw;
  return remove(p);
}

static pid_t owner_pid;

static void cleanup(void) {
  if (getpid() == owner_pid && base[0]) nftw(base, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static void setup(void) {
  owner_pid = getpid();
  strcpy(base, "/tmp/rd-engine-XXXXXX");
  if (!mkdtemp(base)) {
    perror("mkdtemp");
    exit(1);
  }
  atexit(cleanup);
  snprintf(tools_dir, sizeof tools_dir, "%s/tools", base);
  snprintf(bad_dir, sizeof bad_dir, "%s/bad", base);
  snprintf(data_dir, sizeof data_dir, "%s/data", base);
  snprintf(big_dir, sizeof big_dir, "%s/big", base);
  snprintf(async_dir, sizeof async_dir, "%s/async", base);
  mkdir(async_dir, 0755);
  mkdir(tools_dir, 0755);
  mkdir(bad_dir, 0755);
  mkdir(data_dir, 0755);
  mkdir(big_dir, 0755);
  put_file(tools_dir, "echo.lua", echo_tool);
  put_file(tools_dir, "boom.lua", boom_tool);
  put_file(tools_dir, "spin.lua", spin_tool);
  put_file(tools_dir, "README.txt", "not a tool");
  put_file(bad_dir, "bad.lua", bad_tool);
  put_file(bad_dir, "good2.lua", good2_tool);
  put_file(big_dir, "tiny.lua", tiny_tool);
  put_file(async_dir, "nap.lua", nap_tool);
  put_file(async_dir, "echo.lua", echo_tool);
}

static rd_engine *open_engine(const char *dir) {
  rd_engine *e = NULL;
  rd_error err;
  rd_error_clear(&err);
  rd_engine_config cfg = {.data_dir = data_dir, .tools_dir = dir};
  int rc = rd_engine_open(&e, &cfg, &err);
  CHECK(rc == RD_OK);
  CHECK(e != NULL);
  if (rc != RD_OK) fprintf(stderr, "  rd_engine_open: %s: %s\n", rd_err_name(rc), err.message);
  return e;
}

/* Execute and return the envelope (caller frees); *status gets the status. */
static char *run(rd_engine *e, const char *name, const char *params, int *status) {
  char *env = NULL;
  rd_error err;
  rd_error_clear(&err);
  *status = -1;
  int rc = rd_engine_execute(e, name, params, NULL, &env, status, &err);
  CHECK(rc == RD_OK);
  if (rc != RD_OK) {
    fprintf(stderr, "  execute %s: %s: %s\n", name, rd_err_name(rc), err.message);
    return NULL;
  }
  CHECK(env != NULL);
  return env;
}

static int has(const char *hay, const char *needle) {
  int ok = hay && strstr(hay, needle) != NULL;
  if (!ok) fprintf(stderr, "  missing %s in: %.600s\n", needle, hay ? hay : "(null)");
  return ok;
}

/* ---- execute ------------------------------------------------------------------ */

TEST(execute_ok) {
  rd_engine *e = open_engine(tools_dir);
  if (!e) return;
  int status;
  char *env = run(e, "echo", "{\"text\":\"hi\",\"times\":3}", &status);
  CHECK(status == 1);
  CHECK(has(env, "\"status\":\"ok\""));
  CHECK(has(env, "\"text\":\"hihihi\""));
  CHECK(has(env, "\"tool\":\"echo\""));
  CHECK(has(env, "\"execution_id\":\""));
  CHECK(has(env, "\"error\":null"));
  rd_free(env);
  /* status may be NULL; defaults from the schema apply */
  char *env2 = NULL;
  rd_error err;
  CHECK(rd_engine_execute(e, "echo", "{\"text\":\"x\"}", NULL, &env2, NULL, &err) == RD_OK);
  CHECK(has(env2, "\"text\":\"x\""));
  rd_free(env2);
  /* a caller object */
  env2 = NULL;
  CHECK(rd_engine_execute(e, "echo", "{\"text\":\"y\"}",
                          "{\"principal\":\"alice\",\"roles\":[],\"capabilities\":[]}",
                          &env2, &status, &err) == RD_OK);
  CHECK(status == 1);
  rd_free(env2);
  rd_engine_close(e);
}

TEST(execute_unknown_tool) {
  rd_engine *e = open_engine(tools_dir);
  if (!e) return;
  int status;
  char *env = run(e, "no_such_tool", "{}", &status);
  CHECK(status == 0);
  CHECK(has(env, "\"status\":\"error\""));
  CHECK(has(env, "not_found"));
  CHECK(has(env, "\"output\":null"));
  rd_free(env);
  rd_engine_close(e);
}

TEST(execute_bad_requests) {
  rd_engine *e = open_engine(tools_dir);
  if (!e) return;
  char *env = NULL;
  int status = -1;
  rd_error err;
  rd_error_clear(&err);
  int rc = rd_engine_execute(e, "echo", "{\"text\": ", NULL, &env, &status, &err);
  CHECK(rc == RD_EJSON);
  CHECK(err.code == RD_EJSON);
  CHECK(err.message[0] != '\0');
  CHECK(env == NULL);
  rd_error_clear(&err);
  rc = rd_engine_execute(e, "echo", "{\"text\":\"a\"}", "{principal", &env, &status, &err);
  CHECK(rc == RD_EJSON);
  CHECK(err.message[0] != '\0');
  CHECK(env == NULL);
  CHECK(rd_engine_execute(NULL, "echo", "{}", NULL, &env, &status, &err) == RD_EINVAL);
  CHECK(rd_engine_execute(e, NULL, "{}", NULL, &env, &status, &err) == RD_EINVAL);
  CHECK(rd_engine_execute(e, "echo", "{}", NULL, NULL, &status, &err) == RD_EINVAL);
  /* NULL err is fine */
  CHECK(rd_engine_execute(e, "echo", "[", NULL, &env, &status, NULL) == RD_EJSON);
  /* the engine still works after refused requests */
  char *ok = run(e, "echo", "{\"text\":\"still\"}", &status);
  CHECK(status == 1);
  rd_free(ok);
  rd_engine_close(e);
}

TEST(execute_invalid_params) {
  rd_engine *e = open_engine(tools_dir);
  if (!e) return;
  int status;
  char *env = run(e, "echo", "{\"text\":\"\",\"extra\":1}", &status);
  CHECK(status == 0);
  CHECK(has(env, "invalid_params"));
  rd_free(env);
  env = run(e, "echo", NULL, &status); /* {}: text is required */
  CHECK(status == 0);
  CHECK(has(env, "invalid_params"));
  rd_free(env);
  env = run(e, "echo", "[1,2]", &status); /* not an object */
  CHECK(status == 0);
  CHECK(has(env, "invalid_params"));
  rd_free(env);
  env = run(e, "echo", "{\"text\":\"a\",\"times\":0}", &status);
  CHECK(status == 0);
  CHECK(has(env, "invalid_params"));
  rd_free(env);
  rd_engine_close(e);
}

TEST(execute_tool_error) {
  rd_engine *e = open_engine(tools_dir);
  if (!e) return;
  int status;
  char *env = run(e, "boom", "{}", &status);
  CHECK(status == 0);
  CHECK(has(env, "\"kind\":\"tool_error\""));
  CHECK(has(env, "kaboom-42"));
  rd_free(env);
  rd_engine_close(e);
}

TEST(execute_cpu_limit_and_recovery) {
  rd_engine *e = open_engine(tools_dir);
  if (!e) return;
  int status;
  char *env = run(e, "spin", "{}", &status);
  CHECK(status == 0);
  CHECK(has(env, "\"kind\":\"cpu_limit\""));
  rd_free(env);
  /* the engine and the other tools are untouched; the tool runs again */
  env = run(e, "echo", "{\"text\":\"after\"}", &status);
  CHECK(status == 1);
  rd_free(env);
  env = run(e, "spin", "{}", &status);
  CHECK(status == 0);
  CHECK(has(env, "cpu_limit"));
  rd_free(env);
  rd_engine_close(e);
}

/* Params bigger than the tool's max_memory: the engine copies them into the
 * tool state with the cap lifted (l_lstate.c prepare()), so the call ends in
 * an envelope (memory_limit once the tool runs), never in an unprotected Lua
 * memory error that would end the process. Run in a child process so a
 * regression fails this test instead of killing the suite. */
TEST(execute_params_larger_than_tool_heap) {
  fflush(NULL);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    rd_engine *e = NULL;
    rd_engine_config cfg = {.data_dir = data_dir, .tools_dir = big_dir};
    if (rd_engine_open(&e, &cfg, NULL) != RD_OK) _exit(5);
    size_t n = 1024 * 1024;
    char *params = malloc(n + 16);
    if (!params) _exit(6);
    strcpy(params, "{\"s\":\"");
    memset(params + 6, 'x', n);
    strcpy(params + 6 + n, "\"}");
    char *env = NULL;
    int status = -1;
    int rc = rd_engine_execute(e, "tiny", params, NULL, &env, &status, NULL);
    if (rc != RD_OK || !env) _exit(3);
    if (status != 0 || !strstr(env, "\"kind\":\"memory_limit\"")) _exit(4);
    _exit(0);
  }
  int st = 0;
  CHECK(waitpid(pid, &st, 0) == pid);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    fprintf(stderr, "  child: %s %d (the engine process died)\n",
            WIFEXITED(st) ? "exit" : "signal", WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
}

/* ---- telemetry ---------------------------------------------------------------------- */

typedef struct seen {
  int start, stop, other, total;
  char start_tool[64], stop_tool[64], stop_status[16];
  double duration_ms;
} seen;

static void on_event(const rd_event *ev, void *ud) {
  seen *s = ud;
  s->total++;
  if (strcmp(ev->name, "execution.start") == 0) {
    s->start++;
    snprintf(s->start_tool, sizeof s->start_tool, "%s", rd_event_str(ev, "tool", "?"));
  } else if (strcmp(ev->name, "execution.stop") == 0) {
    s->stop++;
    snprintf(s->stop_tool, sizeof s->stop_tool, "%s", rd_event_str(ev, "tool", "?"));
    snprintf(s->stop_status, sizeof s->stop_status, "%s", rd_event_str(ev, "status", "?"));
    s->duration_ms = rd_event_num(ev, "duration_ms", -1);
  } else if (strncmp(ev->name, "execution.", 10) != 0) {
    s->other++;
  }
  CHECK(ev->time > 1e9); /* seconds since the epoch */
}

TEST(subscribe_execution_events) {
  rd_engine *e = open_engine(tools_dir);
  if (!e) return;
  seen s;
  memset(&s, 0, sizeof s);
  seen all;
  memset(&all, 0, sizeof all);
  int id = 0, id_all = 0;
  rd_error err;
  CHECK(rd_engine_subscribe(e, "execution.", on_event, &s, &id, &err) == RD_OK);
  CHECK(rd_engine_subscribe(e, "", on_event, &all, &id_all, &err) == RD_OK);
  CHECK(id > 0 && id_all > 0 && id != id_all);
  int status;
  char *env = run(e, "echo", "{\"text\":\"ev\"}", &status);
  rd_free(env);
  CHECK(s.start == 1);
  CHECK(s.stop == 1);
  CHECK(s.other == 0); /* the prefix keeps others out */
  CHECK_STR(s.start_tool, "echo");
  CHECK_STR(s.stop_tool, "echo");
  CHECK_STR(s.stop_status, "ok");
  CHECK(s.duration_ms >= 0);
  CHECK(all.start == 1 && all.stop == 1);
  CHECK(all.total >= s.total);

  /* an error execution is reported too */
  env = run(e, "boom", "{}", &status);
  rd_free(env);
  CHECK(s.stop == 2);
  CHECK_STR(s.stop_tool, "boom");
  CHECK_STR(s.stop_status, "error");

  /* unsubscribe stops delivery to that subscriber only */
  rd_engine_unsubscribe(e, id);
  rd_engine_unsubscribe(e, id);      /* twice: ignored */
  rd_engine_unsubscribe(e, 99999);   /* unknown: ignored */
  rd_engine_unsubscribe(NULL, id);   /* no engine: ignored */
  int before = s.total;
  env = run(e, "echo", "{\"text\":\"quiet\"}", &status);
  rd_free(env);
  CHECK(s.total == before);
  CHECK(all.start == 3 && all.stop == 3);

  /* misuse */
  CHECK(rd_engine_subscribe(e, "", NULL, NULL, NULL, &err) == RD_EINVAL);
  CHECK(rd_engine_subscribe(NULL, "", on_event, NULL, NULL, &err) == RD_EINVAL);
  /* NULL id pointer is fine */
  CHECK(rd_engine_subscribe(e, "tool.", on_event, &all, NULL, &err) == RD_OK);
  rd_engine_close(e);
}

typedef struct loads { int loaded, failed; char reason[512]; } loads;

static void on_load(const rd_event *ev, void *ud) {
  loads *l = ud;
  if (strcmp(ev->name, "tool.loaded") == 0) l->loaded++;
  if (strcmp(ev->name, "tool.load_failed") == 0) {
    l->failed++;
    snprintf(l->reason, sizeof l->reason, "%s", rd_event_str(ev, "reason", ""));
  }
}

/* ---- tools ----------------------------------------------------------------------------- */

TEST(tools_json) {
  rd_engine *e = open_engine(tools_dir);
  if (!e) return;
  char *js = NULL;
  rd_error err;
  CHECK(rd_engine_tools_json(e, &js, &err) == RD_OK);
  CHECK(js != NULL);
  if (js) {
    CHECK(js[0] == '[');
    CHECK(js[strlen(js) - 1] == ']');
    CHECK(has(js, "\"name\":\"echo\""));
    CHECK(has(js, "\"name\":\"boom\""));
    CHECK(has(js, "\"name\":\"spin\""));
    CHECK(strstr(js, "README") == NULL);
    CHECK(strstr(js, "handler") == NULL); /* handlers stay in their states */
  }
  rd_free(js);
  CHECK(rd_engine_tools_json(NULL, &js, &err) == RD_EINVAL);
  CHECK(rd_engine_tools_json(e, NULL, &err) == RD_EINVAL);
  rd_engine_close(e);

  /* an engine without tools lists [] */
  e = open_engine(NULL);
  if (!e) return;
  js = NULL;
  CHECK(rd_engine_tools_json(e, &js, &err) == RD_OK);
  CHECK_STR(js, "[]");
  rd_free(js);
  rd_engine_close(e);
}

/* EXPOSES BUG (core/engine.c, rd_engine_load_tools): it calls the Lua
 * method "load_tools", whose second result is the *table* of problems, and
 * formats lua_tostring() of it (NULL) into the message: the RD_EDEFN
 * message reads "(null)" instead of "FILE: security.level: ...". The Lua
 * side has Engine:load_tools_c(dir) -> ok, first problem for exactly this. */
TEST(load_tools_reports_broken_definition) {
  rd_engine *e = open_engine(NULL);
  if (!e) return;
  loads l;
  memset(&l, 0, sizeof l);
  rd_error err;
  CHECK(rd_engine_subscribe(e, "tool.", on_load, &l, NULL, &err) == RD_OK);
  rd_error_clear(&err);
  int rc = rd_engine_load_tools(e, bad_dir, &err);
  CHECK(rc == RD_EDEFN);
  CHECK(err.code == RD_EDEFN);
  /* the message names the file, the field path and the reason */
  CHECK(has(err.message, "bad.lua"));
  CHECK(has(err.message, "security.level"));
  CHECK(has(err.message, "strcit"));
  /* telemetry says the same */
  CHECK(l.failed == 1);
  CHECK(l.loaded == 1);
  CHECK(has(l.reason, "security.level"));
  /* the good file of that directory is loaded */
  int status;
  char *env = run(e, "good2", "{}", &status);
  CHECK(status == 1);
  rd_free(env);
  char *js = NULL;
  CHECK(rd_engine_tools_json(e, &js, &err) == RD_OK);
  CHECK(has(js, "good2"));
  CHECK(js && strstr(js, "\"name\":\"bad\"") == NULL);
  rd_free(js);
  rd_engine_close(e);
}

TEST(load_tools_ok_and_reload) {
  rd_engine *e = open_engine(NULL);
  if (!e) return;
  rd_error err;
  rd_error_clear(&err);
  CHECK(rd_engine_load_tools(e, tools_dir, &err) == RD_OK);
  int status;
  char *env = run(e, "echo", "{\"text\":\"loaded\"}", &status);
  CHECK(status == 1);
  rd_free(env);
  /* reload the same directory */
  CHECK(rd_engine_load_tools(e, tools_dir, &err) == RD_OK);
  env = run(e, "echo", "{\"text\":\"reloaded\"}", &status);
  CHECK(status == 1);
  CHECK(has(env, "reloaded"));
  rd_free(env);
  /* a directory that does not exist is refused */
  char missing[256];
  snprintf(missing, sizeof missing, "%s/missing", base);
  CHECK(rd_engine_load_tools(e, missing, &err) != RD_OK);
  CHECK(err.message[0] != '\0');
  CHECK(rd_engine_load_tools(e, NULL, &err) == RD_EINVAL);
  CHECK(rd_engine_load_tools(NULL, tools_dir, &err) == RD_EINVAL);
  rd_engine_close(e);
}

TEST(open_with_broken_tool_still_opens) {
  rd_engine *e = open_engine(bad_dir);
  if (!e) return;
  int status;
  char *env = run(e, "good2", "{}", &status);
  CHECK(status == 1);
  rd_free(env);
  env = run(e, "bad", "{}", &status);
  CHECK(status == 0);
  CHECK(has(env, "not_found"));
  rd_free(env);
  rd_engine_close(e);
}

/* ---- lifecycle --------------------------------------------------------------------------- */

TEST(open_close_misuse) {
  rd_engine_close(NULL);
  rd_error err;
  CHECK(rd_engine_open(NULL, NULL, &err) == RD_EINVAL);
  CHECK(err.code == RD_EINVAL);
  /* cfg NULL: defaults (no tools); data_dir defaults to ./.rduck */
  rd_engine *e = NULL;
  CHECK(rd_engine_open(&e, NULL, &err) == RD_OK);
  CHECK(e != NULL);
  rd_engine_close(e);
}

TEST(open_close_many) {
  for (int i = 0; i < 20; i++) {
    rd_engine *e = open_engine(i % 2 ? tools_dir : NULL);
    if (!e) return;
    if (i % 5 == 0) {
      int status;
      char *env = run(e, "echo", "{\"text\":\"loop\"}", &status);
      rd_free(env);
      seen s;
      memset(&s, 0, sizeof s);
      CHECK(rd_engine_subscribe(e, "", on_event, &s, NULL, NULL) == RD_OK);
    }
    rd_engine_close(e);
  }
}

/* ---- asynchronous calls ----------------------------------------------------------- */

typedef struct async_seen {
  int in_submit;       /* set while rd_engine_submit runs */
  int done, ok, done_inside_submit, progress;
  char id[RD_ID_SIZE];
  char env[4096];
  char progress_msg[64];
} async_seen;

static void on_async_done(const char *id, const char *env, int ok, void *ud) {
  async_seen *s = ud;
  s->done++;
  s->ok = ok;
  if (s->in_submit) s->done_inside_submit = 1;
  snprintf(s->id, sizeof s->id, "%s", id);
  snprintf(s->env, sizeof s->env, "%s", env);
}

static void on_async_progress(const char *id, double done, double total,
                              const char *msg, void *ud) {
  async_seen *s = ud;
  (void)id;
  if (done == 1 && total == 2) s->progress++;
  snprintf(s->progress_msg, sizeof s->progress_msg, "%s", msg);
}

static int submit(rd_engine *e, const char *name, const char *params, async_seen *s,
                  double deadline_ms, char id[RD_ID_SIZE]) {
  rd_submit_opts o = {on_async_done, on_async_progress, s, deadline_ms, -1};
  rd_error err;
  rd_error_clear(&err);
  s->in_submit = 1;
  int rc = rd_engine_submit(e, name, params, NULL, &o, id, &err);
  s->in_submit = 0;
  if (rc != RD_OK) fprintf(stderr, "  submit %s: %s: %s\n", name, rd_err_name(rc), err.message);
  return rc;
}

/* Run the loop until cond holds (bounded: a guard against a hang). */
#define PUMP_UNTIL(e, cond)                                                  \
  do {                                                                       \
    for (int pump_i = 0; !(cond) && pump_i < 100000; pump_i++)               \
      rd_engine_run((e), RD_RUN_ONCE);                                       \
    CHECK(cond);                                                             \
  } while (0)

TEST(submit_completes_through_the_callback) {
  rd_engine *e = open_engine(async_dir);
  if (!e) return;
  async_seen s;
  memset(&s, 0, sizeof s);
  char id[RD_ID_SIZE] = "";
  CHECK(submit(e, "echo", "{\"text\":\"async\"}", &s, 0, id) == RD_OK);
  CHECK(strlen(id) == 26);
  PUMP_UNTIL(e, s.done == 1);
  CHECK(s.ok == 1);
  CHECK_STR(s.id, id);
  CHECK(has(s.env, "\"text\":\"async\""));
  CHECK(rd_engine_stage(e, id) == NULL); /* done: no longer in flight */
  CHECK(rd_engine_cancel(e, id) == RD_ENOENT);

  /* an unknown tool: still a callback, never inside submit */
  memset(&s, 0, sizeof s);
  CHECK(submit(e, "no_such_tool", NULL, &s, 0, id) == RD_OK);
  CHECK(s.done == 0);
  PUMP_UNTIL(e, s.done == 1);
  CHECK(s.done_inside_submit == 0);
  CHECK(s.ok == 0);
  CHECK(has(s.env, "\"kind\":\"not_found\""));

  /* malformed params: refused at once, no callback */
  memset(&s, 0, sizeof s);
  rd_error err;
  rd_submit_opts o = {on_async_done, NULL, &s, 0, -1};
  CHECK(rd_engine_submit(e, "echo", "{\"text\":", NULL, &o, id, &err) == RD_EJSON);
  CHECK(has(err.message, "params"));
  CHECK(rd_engine_drain(e, -1) == 0);
  CHECK(s.done == 0);
  rd_engine_close(e);
}

TEST(submit_progress_stage_cancel) {
  rd_engine *e = open_engine(async_dir);
  if (!e) return;
  async_seen s;
  memset(&s, 0, sizeof s);
  char id[RD_ID_SIZE];
  CHECK(submit(e, "nap", "{\"ms\":30000}", &s, 0, id) == RD_OK);
  PUMP_UNTIL(e, s.progress == 1);
  CHECK_STR(s.progress_msg, "asleep");
  CHECK_STR(rd_engine_stage(e, id), "running");
  CHECK(rd_engine_cancel(e, id) == RD_OK);
  PUMP_UNTIL(e, s.done == 1);
  CHECK(has(s.env, "\"kind\":\"cancelled\""));
  CHECK(rd_engine_cancel(e, id) == RD_ENOENT);
  CHECK(rd_engine_cancel(e, "01ARZ3NDEKTSV4RRFFQ69G5FAV") == RD_ENOENT);
  rd_engine_close(e);
}

TEST(submit_deadline_drain_and_close) {
  rd_engine *e = open_engine(async_dir);
  if (!e) return;
  async_seen a, b, c;
  memset(&a, 0, sizeof a);
  memset(&b, 0, sizeof b);
  memset(&c, 0, sizeof c);
  char ida[RD_ID_SIZE], idb[RD_ID_SIZE], idc[RD_ID_SIZE];
  CHECK(submit(e, "nap", "{\"ms\":30000}", &a, 30, ida) == RD_OK);   /* deadline */
  CHECK(submit(e, "nap", "{\"ms\":1}", &b, 0, idb) == RD_OK);
  CHECK(rd_engine_drain(e, -1) == 0);
  CHECK(a.done == 1 && b.done == 1);
  CHECK(has(a.env, "\"kind\":\"timeout\""));
  CHECK(b.ok == 1);
  /* closing with a call in flight cancels it, through its callback */
  CHECK(submit(e, "nap", "{\"ms\":30000}", &c, 0, idc) == RD_OK);
  PUMP_UNTIL(e, c.progress == 1);
  CHECK(rd_engine_drain(e, 1) == 1); /* still asleep after 1 ms */
  rd_engine_close(e);
  CHECK(c.done == 1);
  CHECK(has(c.env, "\"kind\":\"cancelled\""));
}

/* An embedder's on_done that runs the engine again (a synchronous call):
 * callbacks run outside the loop, so the inner call completes (it used to
 * wait for ever at relaxed and none). */
typedef struct nested_seen {
  rd_engine *e;
  int done, inner_rc, inner_ok;
  char inner_env[1024];
} nested_seen;

static void on_nested_done(const char *id, const char *env, int ok, void *ud) {
  nested_seen *s = ud;
  (void)id;
  (void)env;
  (void)ok;
  char *out = NULL;
  rd_error err;
  rd_error_clear(&err);
  s->inner_rc = rd_engine_execute(s->e, "echo", "{\"text\":\"inner\"}", NULL, &out,
                                  &s->inner_ok, &err);
  if (out) snprintf(s->inner_env, sizeof s->inner_env, "%s", out);
  rd_free(out);
  s->done++;
}

TEST(execute_from_on_done) {
  rd_engine *e = open_engine(async_dir);
  if (!e) return;
  nested_seen s;
  memset(&s, 0, sizeof s);
  s.e = e;
  rd_submit_opts o = {on_nested_done, NULL, &s, 0, -1};
  rd_error err;
  char id[RD_ID_SIZE];
  CHECK(rd_engine_submit(e, "echo", "{\"text\":\"outer\"}", NULL, &o, id, &err) == RD_OK);
  PUMP_UNTIL(e, s.done == 1);
  CHECK(s.inner_rc == RD_OK);
  CHECK(s.inner_ok == 1);
  CHECK(has(s.inner_env, "\"text\":\"inner\""));
  CHECK(rd_engine_drain(e, -1) == 0);
  rd_engine_close(e);
}

TEST(config_limits_and_policy) {
  rd_engine *e = NULL;
  rd_error err;
  /* one call at a time and no queue: a second call is overloaded */
  rd_engine_config cfg = {.data_dir = data_dir, .tools_dir = async_dir,
                          .max_running = 1, .max_queue = -1};
  CHECK(rd_engine_open(&e, &cfg, &err) == RD_OK);
  if (!e) return;
  async_seen a, b;
  memset(&a, 0, sizeof a);
  memset(&b, 0, sizeof b);
  char ida[RD_ID_SIZE], idb[RD_ID_SIZE];
  CHECK(submit(e, "nap", "{\"ms\":30000}", &a, 0, ida) == RD_OK);
  PUMP_UNTIL(e, a.progress == 1);
  CHECK(submit(e, "echo", "{\"text\":\"x\"}", &b, 0, idb) == RD_OK);
  PUMP_UNTIL(e, b.done == 1);
  CHECK(has(b.env, "\"kind\":\"overloaded\""));
  CHECK(rd_engine_cancel(e, ida) == RD_OK);
  CHECK(rd_engine_drain(e, -1) == 0);
  rd_engine_close(e);

  /* a policy file that does not parse is refused, naming the file */
  char policy[256];
  snprintf(policy, sizeof policy, "%s/policy.lua", base);
  put_file(base, "policy.lua", "return { roles = { ");
  rd_engine_config bad = {.data_dir = data_dir, .tools_dir = async_dir, .policy = policy};
  e = NULL;
  CHECK(rd_engine_open(&e, &bad, &err) == RD_EIO);
  CHECK(e == NULL);
  CHECK(has(err.message, "policy.lua"));
}

int main(void) {
  setup();
  RUN_TESTS();
}
