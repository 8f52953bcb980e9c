/*
 * test_fs.c — `fs.*` (core/sandbox/fs.c): happy paths, then every way out
 * of the allowed roots we could think of, in openat2 mode and in the
 * per-component walk used when the kernel lacks openat2.
 *
 * Each test builds BASE (mkdtemp) holding:
 *   BASE/allowed/                 the root (ROOT)
 *   BASE/allowed-evil/secret.txt  prefix confusion bait
 *   BASE/outside/secret.txt       "TOPSECRET-CONTENT"
 * and a plain Lua state with `fs` as a global, then runs Lua snippets.
 */
#include "sandbox/fs.h"
#include "sandbox/lstate.h"
#include "testlib.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char base[64], root[128], outside[128], evil[128];

static void up(void) {
  strcpy(base, "/tmp/rd-fs-XXXXXX");
  CHECK(mkdtemp(base) != NULL);
  snprintf(root, sizeof root, "%s/allowed", base);
  snprintf(outside, sizeof outside, "%s/outside", base);
  snprintf(evil, sizeof evil, "%s/allowed-evil", base);
  CHECK(mkdir(root, 0755) == 0);
  CHECK(mkdir(outside, 0755) == 0);
  CHECK(mkdir(evil, 0755) == 0);
  char p[256];
  snprintf(p, sizeof p, "%s/secret.txt", outside);
  tl_put_file(p, "TOPSECRET-CONTENT");
  snprintf(p, sizeof p, "%s/secret.txt", evil);
  tl_put_file(p, "EVIL-CONTENT");
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb; (void)flag; (void)ftw;
  return remove(p);
}

static void down(void) {
  nftw(base, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* Lua helpers shared by every snippet. */
static const char *prelude =
  "function denied(f, ...)\n"
  "  local ok, e = pcall(f, ...)\n"
  "  assert(not ok, 'expected a violation, got ' .. tostring(e))\n"
  "  e = tostring(e)\n"
  "  assert(e:find('sandbox_violation', 1, true), e)\n"
  "  assert(e:find('access denied', 1, true), e)\n"
  "  for _, bad in ipairs{'passwd', '/etc', 'TOPSECRET', 'EVIL-CONTENT', 'root:',\n"
  "                       OUTSIDE, 'allowed-evil', 'secret'} do\n"
  "    assert(not e:find(bad, 1, true), 'message leaks ' .. bad .. ': ' .. e)\n"
  "  end\n"
  "  return e\n"
  "end\n"
  "function fails(want, v, msg)\n"
  "  assert(v == nil, 'expected nil, got ' .. tostring(v))\n"
  "  assert(type(msg) == 'string' and msg:find(want, 1, true),\n"
  "         'expected ' .. want .. ', got ' .. tostring(msg))\n"
  "  return msg\n"
  "end\n"
  "function slurp(p)\n"
  "  local f = io.open(p, 'rb'); if not f then return nil end\n"
  "  local s = f:read('*a'); f:close(); return s\n"
  "end\n";

static lua_State *state(const char *const *roots, size_t n, int64_t max) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  rd_error err;
  CHECK(rd__fs_push(L, roots, n, max, &err) == RD_OK);
  lua_setglobal(L, "fs");
  lua_pushstring(L, base);
  lua_setglobal(L, "BASE");
  lua_pushstring(L, root);
  lua_setglobal(L, "ROOT");
  lua_pushstring(L, outside);
  lua_setglobal(L, "OUTSIDE");
  CHECK(luaL_dostring(L, prelude) == 0);
  return L;
}

static lua_State *state1(int64_t max) {
  const char *roots[] = {root};
  return state(roots, 1, max);
}

static int run(lua_State *L, const char *code, int line) {
  if (luaL_dostring(L, code) != 0) {
    fprintf(stderr, "test_fs.c:%d: Lua: %s\n", line, lua_tostring(L, -1));
    lua_pop(L, 1);
    return 0;
  }
  return 1;
}
#define LUA(L, code) CHECK(run((L), (code), __LINE__))

static int count_fds(void) {
  int n = 0;
  DIR *d = opendir("/proc/self/fd");
  if (!d) return -1;
  while (readdir(d)) n++;
  closedir(d);
  return n;
}

/* ---- happy paths ------------------------------------------------------------- */

TEST(write_read_relative_and_absolute) {
  up();
  lua_State *L = state1(0);
  LUA(L, "assert(fs.write('a.txt', 'hello') == true)\n"
         "assert(fs.read('a.txt') == 'hello')\n"
         "assert(fs.read(ROOT .. '/a.txt') == 'hello')\n"
         "assert(fs.read(ROOT .. '//./a.txt') == 'hello')\n"
         "assert(fs.write(ROOT .. '/a.txt', 'bye') == true)\n"
         "assert(fs.read('a.txt') == 'bye')\n"
         "assert(fs.write('a.txt', '!!', {append = true}))\n"
         "assert(fs.read('a.txt') == 'bye!!')\n"
         "assert(slurp(ROOT .. '/a.txt') == 'bye!!')\n"
         "assert(fs.write('bin', 'a\\0b\\255'))\n"
         "assert(fs.read('bin') == 'a\\0b\\255')\n"
         "assert(fs.write('empty', ''))\n"
         "assert(fs.read('empty') == '')\n"
         "assert(fs.mkdir('sub'))\n"
         "assert(fs.write('sub/../b.txt', 'B'))\n"
         "assert(fs.read('b.txt') == 'B')\n");
  LUA(L, "fails('fs.read: nope.txt: No such file or directory', fs.read('nope.txt'))\n"
         "fails('fs.read: sub: Is a directory', fs.read('sub'))\n"
         "fails('fs.read: a.txt/x: Not a directory', fs.read(ROOT .. '/a.txt/x'))\n"
         "fails('fs.write: sub: Is a directory', fs.write('sub', 'x'))\n"
         "fails('fs.write: nodir/x: No such file or directory', fs.write('nodir/x', 'x'))\n"
         "fails('fs.read: path is empty', fs.read(''))\n");
  struct stat st;
  char p[256];
  snprintf(p, sizeof p, "%s/a.txt", root);
  mode_t mask = umask(0);
  umask(mask);
  CHECK(stat(p, &st) == 0 && (st.st_mode & 0777) == (0644 & ~mask));
  lua_close(L);
  down();
}

TEST(write_mode) {
  up();
  lua_State *L = state1(0);
  mode_t old = umask(0);
  LUA(L, "assert(fs.write('m1', 'x', {mode = '0600'}))\n"
         "assert(fs.stat('m1').mode == 384)\n"
         "assert(fs.write('m2', 'x', {mode = 416}))\n"   /* 0640 */
         "assert(fs.stat('m2').mode == 416)\n"
         "assert(not pcall(fs.write, 'm3', 'x', {mode = '04755'}))\n"
         "assert(not pcall(fs.write, 'm3', 'x', {mode = 'rw'}))\n"
         "assert(not pcall(fs.write, 'm3', 'x', {append = 'yes'}))\n"
         "assert(not pcall(fs.write, 'm3'))\n"
         "assert(not pcall(fs.write, nil, 'x'))\n"
         "assert(not fs.exists('m3'))\n");
  umask(old);
  lua_close(L);
  down();
}

TEST(read_options) {
  up();
  lua_State *L = state1(0);
  LUA(L, "assert(fs.write('d.txt', '0123456789'))\n"
         "assert(fs.read('d.txt', {max_bytes = 4}) == '0123')\n"
         "assert(fs.read('d.txt', {max_bytes = 0}) == '')\n"
         "assert(fs.read('d.txt', {max_bytes = 100}) == '0123456789')\n"
         "assert(fs.read('d.txt', {offset = 7}) == '789')\n"
         "assert(fs.read('d.txt', {offset = 3, max_bytes = 2}) == '34')\n"
         "assert(fs.read('d.txt', {offset = 50}) == '')\n"
         "assert(not pcall(fs.read, 'd.txt', {max_bytes = -1}))\n"
         "assert(not pcall(fs.read, 'd.txt', {max_bytes = 1.5}))\n"
         "assert(not pcall(fs.read, 'd.txt', {offset = 'x'}))\n"
         "assert(not pcall(fs.read, 'd.txt', 5))\n"
         "assert(not pcall(fs.read))\n"
         "assert(not pcall(fs.read, {}))\n");
  lua_close(L);
  down();
}

TEST(read_cap_64mib) {
  up();
  char p[256];
  snprintf(p, sizeof p, "%s/big", root);
  int fd = open(p, O_WRONLY | O_CREAT, 0644);
  CHECK(fd >= 0);
  CHECK(ftruncate(fd, RD_FS_READ_MAX + 1) == 0);   /* sparse */
  close(fd);
  lua_State *L = state1(0);
  LUA(L, "fails('fs.read: big: file is larger than', fs.read('big'))\n"
         "assert(fs.read('big', {max_bytes = 10}) == string.rep('\\0', 10))\n"
         "assert(#fs.read('big', {offset = 2}) == 64 * 1024 * 1024 - 1)\n");
  lua_close(L);
  down();
}

TEST(list_sorted_with_types) {
  up();
  lua_State *L = state1(0);
  LUA(L, "assert(fs.write('b.txt', '12345'))\n"
         "assert(fs.write('a.txt', ''))\n"
         "assert(fs.mkdir('c'))\n");
  char p[256];
  snprintf(p, sizeof p, "%s/d-link", root);
  CHECK(symlink("a.txt", p) == 0);
  snprintf(p, sizeof p, "%s/e-fifo", root);
  CHECK(mkfifo(p, 0644) == 0);
  LUA(L, "local l = assert(fs.list('.'))\n"
         "assert(#l == 5)\n"
         "local want = {{'a.txt','file',0},{'b.txt','file',5},{'c','dir'},\n"
         "              {'d-link','link',5},{'e-fifo','other',0}}\n"
         "for i, w in ipairs(want) do\n"
         "  assert(l[i].name == w[1], l[i].name)\n"
         "  assert(l[i].type == w[2], l[i].type)\n"
         "  if w[3] then assert(l[i].size == w[3]) end\n"
         "end\n"
         "assert(#assert(fs.list(ROOT)) == 5)\n"
         "assert(#assert(fs.list('c')) == 0)\n"
         "fails('fs.list: nope: No such file or directory', fs.list('nope'))\n"
         "fails('fs.list: a.txt: Not a directory', fs.list('a.txt'))\n");
  lua_close(L);
  down();
}

TEST(stat_and_exists) {
  up();
  lua_State *L = state1(0);
  LUA(L, "assert(fs.write('f', 'abc'))\n"
         "local s = assert(fs.stat('f'))\n"
         "assert(s.type == 'file' and s.size == 3 and type(s.mtime) == 'number')\n"
         "assert(math.abs(s.mtime - os.time()) < 60)\n"
         "assert(type(s.mode) == 'number')\n"
         "assert(fs.stat('.').type == 'dir')\n"
         "assert(fs.stat(ROOT).type == 'dir')\n"
         "fails('fs.stat: g: No such file or directory', fs.stat('g'))\n"
         "assert(fs.exists('f') == true)\n"
         "assert(fs.exists('g') == false)\n"
         "assert(fs.exists('f/x') == false)\n"
         "assert(fs.exists('') == false)\n"
         "assert(fs.exists(ROOT) == true)\n");
  lua_close(L);
  down();
}

TEST(remove_and_mkdir) {
  up();
  lua_State *L = state1(0);
  LUA(L, "assert(fs.write('f', 'x'))\n"
         "assert(fs.remove('f') == true)\n"
         "assert(not fs.exists('f'))\n"
         "fails('fs.remove: f: No such file or directory', fs.remove('f'))\n"
         "assert(fs.mkdir('d') == true)\n"
         "fails('fs.mkdir: d: File exists', fs.mkdir('d'))\n"
         "assert(fs.write('d/x', 'x'))\n"
         "fails('fs.remove: d: Directory not empty', fs.remove('d'))\n"
         "assert(fs.remove('d/x'))\n"
         "assert(fs.remove(ROOT .. '/d'))\n"
         "assert(not fs.exists('d'))\n"
         "fails('fs.remove: .: cannot remove an allowed path', fs.remove(ROOT))\n"
         "fails('fs.remove: .: cannot remove an allowed path', fs.remove('.'))\n"
         "fails('Invalid argument', fs.remove('a/..'))\n"
         "fails('fs.mkdir: p/q/r: No such file or directory', fs.mkdir('p/q/r'))\n"
         "assert(fs.mkdir('p/q/r', {parents = true}))\n"
         "assert(fs.stat('p/q/r').type == 'dir')\n"
         "assert(fs.mkdir('p/q/r', {parents = true}))\n"
         "assert(fs.mkdir('.', {parents = true}))\n"
         "assert(fs.mkdir('p/../s/./t', {parents = true}))\n"
         "assert(fs.stat('s/t').type == 'dir')\n"
         "assert(fs.write('file', 'x'))\n"
         "fails('Not a directory', fs.mkdir('file/sub', {parents = true}))\n"
         "fails('fs.mkdir: file: File exists', fs.mkdir('file'))\n"
         "fails('fs.mkdir: file: Not a directory', fs.mkdir('file', {parents = true}))\n");
  lua_close(L);
  down();
}

TEST(nested_roots_and_fifo) {
  up();
  char sub[256], p[300];
  snprintf(sub, sizeof sub, "%s/sub", root);
  CHECK(mkdir(sub, 0755) == 0);
  const char *roots[] = {root, sub};
  lua_State *L = state(roots, 2, 0);
  snprintf(p, sizeof p, "%s/fifo", root);
  CHECK(mkfifo(p, 0644) == 0);
  LUA(L, "assert(fs.write(ROOT .. '/sub/x', 'X'))\n"
         /* the longest root whose rest does not climb out: ROOT */
         "assert(fs.write(ROOT .. '/sub/../top', 'T'))\n"
         "assert(fs.read('top') == 'T')\n"
         "fails('fs.read: sub/../x: No such file', fs.read(ROOT .. '/sub/../x'))\n"
         "assert(fs.read(ROOT .. '/sub/x') == 'X')\n"
         /* a FIFO is refused without blocking */
         "fails('fs.read: fifo: not a regular file', fs.read('fifo'))\n"
         "local v, e = fs.write('fifo', 'x'); assert(v == nil and e:find('fs.write: fifo', 1, true), e)\n");
  lua_close(L);
  down();
}

/* ---- escapes ------------------------------------------------------------------ */

TEST(dotdot_escape) {
  up();
  lua_State *L = state1(0);
  LUA(L, "denied(fs.read, '../outside/secret.txt')\n"
         "denied(fs.read, 'sub/../../outside/secret.txt')\n"
         "denied(fs.read, ROOT .. '/../outside/secret.txt')\n"
         "denied(fs.read, ROOT .. '/..')\n"
         "denied(fs.read, '..')\n"
         "denied(fs.write, '../outside/new.txt', 'x')\n"
         "denied(fs.list, '..')\n"
         "denied(fs.stat, '../outside')\n"
         "denied(fs.exists, '../outside')\n"
         "denied(fs.remove, '../outside/secret.txt')\n"
         "denied(fs.mkdir, '../outside/d', {parents = true})\n"
         "denied(fs.read, ROOT .. '/a/../../outside/secret.txt')\n"
         "assert(slurp(OUTSIDE .. '/secret.txt') == 'TOPSECRET-CONTENT')\n"
         "assert(slurp(OUTSIDE .. '/new.txt') == nil)\n");
  lua_close(L);
  down();
}

TEST(absolute_outside_and_messages) {
  up();
  lua_State *L = state1(0);
  LUA(L, "local e = denied(fs.read, '/etc/passwd')\n"
         "assert(e:find('fs.read: access denied: path is outside the allowed paths', 1, true), e)\n"
         "denied(fs.stat, '/etc/passwd')\n"
         "denied(fs.exists, '/etc/passwd')\n"
         "denied(fs.list, '/etc')\n"
         "denied(fs.write, '/etc/passwd', 'x')\n"
         "denied(fs.remove, '/etc/passwd')\n"
         "denied(fs.mkdir, '/etc/rd-test')\n"
         "denied(fs.read, '/')\n"
         "denied(fs.read, OUTSIDE .. '/secret.txt')\n"
         "denied(fs.read, BASE)\n");
  lua_close(L);
  /* No root at all: everything is denied. */
  L = state(NULL, 0, 0);
  LUA(L, "denied(fs.read, 'a')\n"
         "denied(fs.read, '/tmp')\n");
  lua_close(L);
  down();
}

TEST(prefix_confusion) {
  up();
  lua_State *L = state1(0);
  LUA(L, "denied(fs.read, BASE .. '/allowed-evil/secret.txt')\n"
         "denied(fs.list, BASE .. '/allowed-evil')\n"
         "denied(fs.write, BASE .. '/allowed-evil/x', 'x')\n"
         "denied(fs.read, BASE .. '/allowedX')\n"
         "denied(fs.read, BASE .. '/allowed-evil/../allowed/a')\n");
  lua_close(L);
  /* with a trailing slash in the root spelling, too */
  char r2[200];
  snprintf(r2, sizeof r2, "%s/./", root);
  const char *roots[] = {r2};
  L = state(roots, 1, 0);
  LUA(L, "denied(fs.read, BASE .. '/allowed-evil/secret.txt')\n"
         "assert(fs.write(ROOT .. '/ok', 'ok'))\n"
         "assert(fs.read('ok') == 'ok')\n");
  lua_close(L);
  down();
}

TEST(nul_byte) {
  up();
  lua_State *L = state1(0);
  LUA(L, "assert(fs.write('a.txt', 'A'))\n"
         "local e = denied(fs.read, 'a.txt\\0/../../../etc/passwd')\n"
         "assert(e:find('NUL', 1, true), e)\n"
         "denied(fs.write, 'a.txt\\0', 'x')\n"
         "denied(fs.exists, '\\0')\n"
         "denied(fs.mkdir, 'd\\0')\n");
  lua_close(L);
  down();
}

static void make_out_links(void) {
  char p[256], t[256];
  snprintf(p, sizeof p, "%s/out-abs", root);        /* absolute, to a dir outside */
  CHECK(symlink(outside, p) == 0);
  snprintf(p, sizeof p, "%s/out-rel", root);        /* relative, to a dir outside */
  CHECK(symlink("../outside", p) == 0);
  snprintf(p, sizeof p, "%s/secret-link", root);    /* to a file outside */
  snprintf(t, sizeof t, "%s/secret.txt", outside);
  CHECK(symlink(t, p) == 0);
  snprintf(p, sizeof p, "%s/secret-rel", root);
  CHECK(symlink("../outside/secret.txt", p) == 0);
  snprintf(p, sizeof p, "%s/passwd", root);
  CHECK(symlink("/etc/passwd", p) == 0);
  snprintf(p, sizeof p, "%s/dangling-out", root);   /* write would create outside */
  CHECK(symlink("../outside/created.txt", p) == 0);
}

static const char *out_link_checks =
  "for _, l in ipairs{'out-abs', 'out-rel'} do\n"
  "  denied(fs.read, l .. '/secret.txt')\n"
  "  denied(fs.write, l .. '/new.txt', 'x')\n"
  "  denied(fs.write, l .. '/secret.txt', 'x')\n"
  "  denied(fs.list, l)\n"
  "  denied(fs.stat, l)\n"
  "  denied(fs.exists, l .. '/secret.txt')\n"
  "  denied(fs.mkdir, l .. '/d')\n"
  "  denied(fs.mkdir, l .. '/d/e', {parents = true})\n"
  "  denied(fs.remove, l .. '/secret.txt')\n"
  "end\n"
  "for _, l in ipairs{'secret-link', 'secret-rel', 'passwd'} do\n"
  "  denied(fs.read, l)\n"
  "  denied(fs.read, ROOT .. '/' .. l)\n"
  "  denied(fs.write, l, 'PWNED')\n"
  "  denied(fs.write, l, 'PWNED', {append = true})\n"
  "  denied(fs.stat, l)\n"
  "end\n"
  "denied(fs.write, 'dangling-out', 'x')\n"
  "assert(slurp(OUTSIDE .. '/secret.txt') == 'TOPSECRET-CONTENT')\n"
  "assert(slurp(OUTSIDE .. '/new.txt') == nil)\n"
  "assert(slurp(OUTSIDE .. '/created.txt') == nil)\n"
  "assert(not io.open(OUTSIDE .. '/d'))\n"
  /* the links themselves are inside: listing shows them, remove drops them */
  "local seen = {}\n"
  "for _, e in ipairs(assert(fs.list('.'))) do seen[e.name] = e.type end\n"
  "assert(seen['out-abs'] == 'link' and seen['passwd'] == 'link')\n"
  "assert(fs.remove('secret-link'))\n"
  "assert(slurp(OUTSIDE .. '/secret.txt') == 'TOPSECRET-CONTENT')\n";

TEST(symlink_pointing_outside) {
  up();
  make_out_links();
  lua_State *L = state1(0);
  LUA(L, out_link_checks);
  lua_close(L);
  down();
}

TEST(symlink_pointing_inside) {
  up();
  char p[256];
  lua_State *L = state1(0);
  LUA(L, "assert(fs.mkdir('real'))\n"
         "assert(fs.write('real/f.txt', 'F'))\n");
  snprintf(p, sizeof p, "%s/in", root);
  CHECK(symlink("real", p) == 0);
  snprintf(p, sizeof p, "%s/real/up", root);
  CHECK(symlink("../real/f.txt", p) == 0);
  snprintf(p, sizeof p, "%s/flink", root);
  CHECK(symlink("real/f.txt", p) == 0);
  LUA(L, "assert(fs.read('in/f.txt') == 'F')\n"
         "assert(fs.read(ROOT .. '/in/f.txt') == 'F')\n"
         "assert(fs.read('real/up') == 'F')\n"
         "assert(fs.read('in/../real/f.txt') == 'F')\n"
         "assert(fs.write('in/g.txt', 'G'))\n"
         "assert(slurp(ROOT .. '/real/g.txt') == 'G')\n"
         "assert(fs.write('flink', 'F2'))\n"          /* through a final symlink */
         "assert(slurp(ROOT .. '/real/f.txt') == 'F2')\n"
         "assert(#assert(fs.list('in')) == 3)\n"
         "assert(fs.stat('in').type == 'dir')\n"
         "assert(fs.stat('flink').type == 'file')\n"
         "assert(fs.mkdir('in/sub'))\n"
         "assert(fs.mkdir('in/sub2/x', {parents = true}))\n"
         "assert(fs.stat('real/sub2/x').type == 'dir')\n"
         "assert(fs.remove('in/g.txt'))\n"
         "assert(not fs.exists('real/g.txt'))\n");
  lua_close(L);
  down();
}

TEST(directory_swapped_for_symlink_between_calls) {
  up();
  lua_State *L = state1(0);
  LUA(L, "assert(fs.mkdir('d'))\n"
         "assert(fs.write('d/secret.txt', 'mine'))\n"
         "assert(fs.read('d/secret.txt') == 'mine')\n");
  char d[256], moved[256];
  snprintf(d, sizeof d, "%s/d", root);
  snprintf(moved, sizeof moved, "%s/d-moved", root);
  CHECK(rename(d, moved) == 0);
  CHECK(symlink(outside, d) == 0);
  LUA(L, "denied(fs.read, 'd/secret.txt')\n"
         "denied(fs.write, 'd/secret.txt', 'x')\n"
         "denied(fs.list, 'd')\n"
         "denied(fs.remove, 'd/secret.txt')\n"
         "assert(slurp(OUTSIDE .. '/secret.txt') == 'TOPSECRET-CONTENT')\n");
  /* and the same with a relative link */
  CHECK(unlink(d) == 0);
  CHECK(symlink("../outside", d) == 0);
  LUA(L, "denied(fs.read, 'd/secret.txt')\n"
         "denied(fs.mkdir, 'd/x', {parents = true})\n"
         "assert(fs.read('d-moved/secret.txt') == 'mine')\n");
  lua_close(L);
  down();
}

TEST(magic_links) {
  up();
  const char *roots[] = {root, "/proc/self"};
  lua_State *L = state(roots, 2, 0);
  char p[256];
  snprintf(p, sizeof p, "%s/proc-root", root);
  CHECK(symlink("/proc/self/root", p) == 0);
  LUA(L, "denied(fs.read, '/proc/self/root/etc/passwd')\n"
         "denied(fs.read, '/proc/self/cwd/' .. ROOT .. '/x')\n"
         "denied(fs.stat, '/proc/self/exe')\n"
         "denied(fs.read, '/proc/self/fd/0')\n"
         "denied(fs.list, '/proc/self/root')\n"
         "denied(fs.read, 'proc-root/etc/passwd')\n"
         /* ordinary files under that root still work (st_size 0 files) */
         "local s = assert(fs.read('/proc/self/status'))\n"
         "assert(s:find('Name:', 1, true))\n"
         "assert(#assert(fs.read('/proc/self/status', {max_bytes = 5})) == 5)\n");
  lua_close(L);
  down();
}

/* ---- limits -------------------------------------------------------------------- */

TEST(max_file_size) {
  up();
  lua_State *L = state1(10);
  LUA(L, "assert(fs.write('f', '0123456789'))\n"
         "local e = fails('fs.write: g: file would exceed max_file_size (10 bytes)',\n"
         "                fs.write('g', '0123456789X'))\n"
         "assert(not fs.exists('g'))\n"
         "assert(fs.write('h', '01234567'))\n"
         "fails('fs.write: h: file would exceed max_file_size (10 bytes)',\n"
         "      fs.write('h', '89A', {append = true}))\n"
         "assert(fs.read('h') == '01234567')\n"
         "assert(fs.write('h', '89', {append = true}))\n"
         "assert(fs.read('h') == '0123456789')\n"
         "fails('max_file_size', fs.write('h', 'X', {append = true}))\n"
         "fails('max_file_size', fs.write('f', string.rep('y', 11)))\n"
         "assert(fs.read('f') == '0123456789')\n");
  lua_close(L);
  L = state1(-1);   /* <= 0: unlimited */
  LUA(L, "assert(fs.write('big', string.rep('z', 100000)))\n"
         "assert(#fs.read('big') == 100000)\n");
  lua_close(L);
  down();
}

TEST(missing_roots_are_skipped) {
  up();
  char gone[200];
  snprintf(gone, sizeof gone, "%s/gone", base);
  char filer[200];
  snprintf(filer, sizeof filer, "%s/outside/secret.txt", base);
  const char *roots[] = {gone, root, filer, ""};
  lua_State *L = state(roots, 4, 0);
  lua_pushstring(L, gone);
  lua_setglobal(L, "GONE");
  LUA(L, "fails('fs.read: a: the allowed path is not available', fs.read('a'))\n"
         "fails('fs.write: x/y: the allowed path is not available', fs.write(GONE .. '/x/y', 'z'))\n"
         "assert(fs.write(ROOT .. '/a', 'A'))\n"
         "assert(fs.read(ROOT .. '/a') == 'A')\n"
         "assert(fs.exists(GONE) == false)\n"
         "local v, e = fs.read(OUTSIDE .. '/secret.txt')\n"
         "assert(v == nil and not e:find('TOPSECRET', 1, true))\n"
         "denied(fs.read, BASE .. '/allowed-evil/secret.txt')\n");
  lua_close(L);
  lua_State *L2 = luaL_newstate();
  rd_error err;
  CHECK(rd__fs_push(L2, NULL, 1, 0, &err) == RD_EINVAL);
  CHECK(lua_gettop(L2) == 0);
  lua_close(L2);
  down();
}

TEST(relative_root_spelling) {
  up();
  char cwd[4096];
  CHECK(getcwd(cwd, sizeof cwd) != NULL);
  CHECK(chdir(base) == 0);
  const char *roots[] = {"allowed"};
  lua_State *L = state(roots, 1, 0);
  LUA(L, "assert(fs.write('r.txt', 'R'))\n"
         "assert(fs.read(ROOT .. '/r.txt') == 'R')\n"
         "denied(fs.read, BASE .. '/allowed-evil/secret.txt')\n");
  CHECK(chdir(cwd) == 0);
  lua_close(L);
  down();
}

/* ---- walk mode (kernels without openat2) ---------------------------------------- */

TEST(walk_mode_is_safe_and_stricter) {
  up();
  make_out_links();
  CHECK(rd__fs_force_walk(1) == 0);
  lua_State *L = state1(0);
  LUA(L, "assert(fs.write('a.txt', 'A'))\n"
         "assert(fs.read(ROOT .. '/a.txt') == 'A')\n"
         "assert(fs.mkdir('d/e', {parents = true}))\n"
         "assert(fs.write('d/e/../f', 'F'))\n"
         "assert(fs.read('d/f') == 'F')\n"
         "assert(fs.stat('d').type == 'dir')\n"
         "assert(fs.remove('d/f'))\n"
         "denied(fs.read, '../outside/secret.txt')\n");
  LUA(L, out_link_checks);
  char p[256];
  snprintf(p, sizeof p, "%s/in", root);
  CHECK(symlink("d", p) == 0);
  LUA(L, "denied(fs.read, 'in/f')\n"          /* every symlink is refused here */
         "denied(fs.stat, 'in')\n"
         "denied(fs.list, 'in')\n");
  lua_close(L);
  const char *roots[] = {root, "/proc/self"};
  L = state(roots, 2, 0);
  LUA(L, "denied(fs.read, '/proc/self/root/etc/passwd')\n"
         "denied(fs.read, '/proc/self/fd/0')\n"
         "assert(fs.read('/proc/self/status'):find('Name:', 1, true))\n");
  lua_close(L);
  CHECK(rd__fs_force_walk(0) == 1);
  down();
}

/* ---- resources ------------------------------------------------------------------- */

TEST(no_descriptor_leaks) {
  up();
  int before = count_fds();
  lua_State *L = state1(5);
  make_out_links();
  LUA(L, "for i = 1, 50 do\n"
         "  fs.write('f' .. i, 'x'); fs.read('f' .. i); fs.read('nope')\n"
         "  fs.list('.'); fs.stat('f' .. i); fs.exists('f' .. i)\n"
         "  fs.mkdir('d' .. i); fs.remove('d' .. i); fs.write('g', '123456')\n"
         "  fs.read('f' .. i, {max_bytes = 1})\n"
         "  pcall(fs.read, 'out-abs/secret.txt'); pcall(fs.write, 'passwd', 'x')\n"
         "  pcall(fs.list, 'out-rel'); pcall(fs.mkdir, 'out-rel/a/b', {parents = true})\n"
         "end\n"
         "collectgarbage(); collectgarbage()\n");
  CHECK(count_fds() == before + 1);   /* the one root */
  lua_close(L);
  CHECK(count_fds() == before);
  down();
}

/* ---- inside a real tool state (lstate.c) ------------------------------------------- */

TEST(violation_is_recorded_and_survives_pcall) {
  up();
  rd_lstate *s = NULL;
  rd_error err;
  rd_lstate_opts opts = {0, 0, 0};
  CHECK(rd__lstate_new(&s, &opts, &err) == RD_OK);
  if (!s) return;
  lua_State *L = rd__lstate_L(s);
  const char *roots[] = {root};
  CHECK(rd__fs_push(L, roots, 1, 0, &err) == RD_OK);
  lua_setglobal(L, "fs");
  rd__lstate_arm(s, 0, 0);
  /* the tool swallows the error with pcall and carries on: still a breach */
  CHECK(luaL_dostring(L, "local ok, e = pcall(fs.read, '/etc/passwd')\n"
                         "for i = 1, 10000 do end\n"
                         "return 'done'") != 0);
  const char *msg = lua_tostring(L, -1);
  CHECK(msg && strstr(msg, "sandbox_violation") != NULL);
  CHECK(msg && strstr(msg, "passwd") == NULL);
  lua_pop(L, 1);
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_VIOLATION);
  /* an ordinary failure is no breach */
  rd__lstate_arm(s, 0, 0);
  CHECK(luaL_dostring(L, "assert(fs.read('nope') == nil)") == 0);
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_NONE);
  rd__lstate_free(s);
  down();
}

TEST(memory_cap_during_read_leaks_no_descriptor) {
  up();
  char p[256];
  snprintf(p, sizeof p, "%s/big", root);
  int fd = open(p, O_WRONLY | O_CREAT, 0644);
  CHECK(fd >= 0);
  CHECK(ftruncate(fd, 8 * 1024 * 1024) == 0);
  close(fd);
  int before = count_fds();
  rd_lstate *s = NULL;
  rd_error err;
  rd_lstate_opts opts = {0, 0, 0};
  CHECK(rd__lstate_new(&s, &opts, &err) == RD_OK);
  if (!s) return;
  lua_State *L = rd__lstate_L(s);
  const char *roots[] = {root};
  CHECK(rd__fs_push(L, roots, 1, 0, &err) == RD_OK);
  lua_setglobal(L, "fs");
  rd__lstate_set_max_memory(s, rd__lstate_heap(s) + 1024 * 1024);
  rd__lstate_arm(s, 0, 0);
  CHECK(luaL_dostring(L, "return fs.read('big')") != 0);
  lua_pop(L, 1);
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_MEMORY);
  rd__lstate_free(s);
  CHECK(count_fds() == before);
  down();
}

int main(void) {
  RUN_TESTS();
}
