-- rubberduck.store_ffi — the cache's read path through the LuaJIT FFI.
--
-- Copying get (what Cache:get uses):
--   local get = require("rubberduck.store_ffi").getter(c) -- c: core.store.cache
--   local value = get(key)   -- like c:get(key): the value (a Lua string,
--                            -- copied from the map), or nil when missing
--                            -- or expired
--
-- Zero-copy view (one per cache handle; see M.viewer below):
--   local view = require("rubberduck.store_ffi").viewer(c)
--   local n = view:get(key)  -- the value's length, or nil (missing or
--                            -- expired); the value stays in the map
--   view:string(i, j)        -- a copy of bytes i..j (default: all)
--   view:ptr()               -- const unsigned char * into the map
--   view:release()
--
-- A call of a lua_CFunction cannot be compiled by LuaJIT; an FFI call can,
-- and costs a few instructions. Both paths call this process's
-- rd_cache_get and rd_store_view_release through their addresses, which the
-- binding publishes (core.store.ffi), so they never reach another copy of
-- the code; everything that makes a get correct (TTL, read notes, the
-- handle's read txn and its snapshot rules) stays in C. The getter sends
-- anything off the plain path to c:get, which gives the binding's errors:
-- a closed cache, a key that is not a string, an empty key, a storage
-- error. Without the FFI, or when the layouts are not the ones this file
-- declares, getter(c) returns a function calling c:get and viewer(c)
-- raises an error (M.available says which).
local M = {}

local okffi, ffi = pcall(require, "ffi")
local core = require "rubberduck.core"
local F = core.store.ffi

local fast = false
local cache_get, view_release, view_t, ud_p, err_t, fstring, OK, ENOENT
if okffi and F then
  -- pcall: a second load in this state finds the types already declared
  pcall(ffi.cdef, [[
    typedef struct rd_ffi_cache rd_ffi_cache;
    typedef struct rd_ffi_view {
      const unsigned char *data; size_t len; double expires_at; void *txn_, *env_, *owner_;
    } rd_ffi_view;
    typedef struct rd_ffi_cache_ud { rd_ffi_cache *c; rd_ffi_view view; double gen; } rd_ffi_cache_ud;
    typedef struct rd_ffi_error { int code; char message[?]; } rd_ffi_error;
  ]])
  if ffi.sizeof("rd_ffi_view") == F.view_size and ffi.offsetof("rd_ffi_view", "len") == F.view_len_offset
      and ffi.sizeof("rd_ffi_cache_ud") == F.cache_ud_size
      and ffi.offsetof("rd_ffi_cache_ud", "view") == F.cache_ud_view_offset
      and ffi.offsetof("rd_ffi_cache_ud", "gen") == F.cache_ud_gen_offset
      and ffi.sizeof("rd_ffi_error", F.error_size - 4) == F.error_size then
    cache_get = ffi.cast("int (*)(rd_ffi_cache *, const char *, size_t, rd_ffi_view *, rd_ffi_error *)",
      F.cache_get)
    view_release = ffi.cast("void (*)(rd_ffi_view *)", F.view_release)
    view_t = ffi.typeof("rd_ffi_view[1]")
    ud_p = ffi.typeof("rd_ffi_cache_ud *")
    err_t = ffi.typeof("rd_ffi_error")
    fstring, OK, ENOENT = ffi.string, F.OK, F.ENOENT
    fast = true
  end
end

M.available = fast

-- The FFI reads the handle's memory: make sure c is a core cache handle.
local function check(c, who)
  local mt = debug.getregistry()["rubberduck.store.cache"]
  if type(c) ~= "userdata" or mt == nil or getmetatable(c) ~= mt then
    error(who .. ": rubberduck.store.cache expected, got " .. type(c), 3)
  end
end

-- A get function bound to the core cache handle c: get(key) -> a Lua
-- string (a copy: the caller's to keep) or nil. The view it reads through
-- is its own and released before it returns.
function M.getter(c)
  if not fast then return function(key) return c:get(key) end end
  check(c, "store_ffi.getter")
  local ud = ffi.cast(ud_p, c) -- ud.c: the handle's rd_cache *, NULL once closed
  local view = view_t()
  return function(key)
    local h = ud.c
    if h == nil or type(key) ~= "string" then return c:get(key) end
    local rc = cache_get(h, key, #key, view, nil)
    if rc == OK then
      local s = fstring(view[0].data, view[0].len)
      view_release(view)
      return s
    elseif rc == ENOENT then
      return nil
    end
    return c:get(key)
  end
end

-- ---- zero-copy views ------------------------------------------------------
--
-- viewer(c) returns a view on the core cache handle c. view:get(key) looks
-- the key up exactly like c:get (TTL checked, read noted, the newest
-- commit of any process seen) and returns the value's length, or nil when
-- missing or expired, or nil, message, kind on an error (an empty key, a
-- storage error); a closed cache or a key that is not a string raises.
-- The value is not copied: the view holds it in the map, and
--   view:len()          its length
--   view:string(i, j)   a copy of bytes i..j (string.sub rules; default all)
--   view:ptr()          a const unsigned char * to its first byte
--   view:expires_at()   its expiry (epoch seconds, 0: none)
-- read it, until the view is released: by view:release(), by the next
-- view:get of any viewer of this handle (a handle holds one view), or by
-- any other method of the handle (put, delete, clear, sweep, flush, idle,
-- stats, set_time, close) and its collection. A released view refuses to
-- read (len, string, ptr, expires_at raise "view released"). A pointer got
-- from view:ptr() before the release must not be used after it: its bytes
-- may be reused by a later write or unmapped (undefined, like a C view);
-- take the pointer again after each get rather than keeping it.
--
-- While held, the view keeps its snapshot: a writer (any process) cannot
-- reuse the pages freed since, so the file may grow; in this process the
-- map cannot grow (a write elsewhere that needs it waits, then fails with
-- storage_full): release views promptly. The handle's other gets (c:get,
-- getter) still work meanwhile, on pooled read txns.

local View = {}
View.__index = View

local function released()
  error("cache view: view released (by release, another get of this handle, "
    .. "a write, idle or close of the handle): get again", 3)
end

function View:get(key)
  local ud = self.ud
  if ud.view.txn_ ~= nil then
    view_release(ud.view)
    ud.gen = ud.gen + 1
  end
  local h = ud.c
  if h == nil then return self.c:get(key) end -- raises: cache is closed
  if type(key) ~= "string" then
    error("cache view: key must be a string, got " .. type(key), 2)
  end
  local rc = cache_get(h, key, #key, ud.view, self.err)
  if rc == OK then
    self.gen = ud.gen
    return tonumber(ud.view.len)
  elseif rc == ENOENT then
    return nil
  end
  return nil, fstring(self.err.message), F.error_names[rc] or "unknown"
end

local function held(self)
  local ud = self.ud
  return ud.gen == self.gen and ud.view.txn_ ~= nil and ud.c ~= nil
end

function View:len()
  if not held(self) then released() end
  return tonumber(self.ud.view.len)
end

function View:ptr()
  if not held(self) then released() end
  return self.ud.view.data
end

function View:expires_at()
  if not held(self) then released() end
  return self.ud.view.expires_at
end

function View:string(i, j)
  if not held(self) then released() end
  local v = self.ud.view
  local n = tonumber(v.len)
  if i == nil and j == nil then return fstring(v.data, n) end
  i, j = i or 1, j or n
  if i < 0 then i = n + i + 1 end
  if j < 0 then j = n + j + 1 end
  if i < 1 then i = 1 end
  if j > n then j = n end
  if i > j then return "" end
  return fstring(v.data + (i - 1), j - i + 1)
end

-- Release the held view (a no-op when it is not held by this viewer).
function View:release()
  if held(self) then
    local ud = self.ud
    view_release(ud.view)
    ud.gen = ud.gen + 1
  end
end

function M.viewer(c)
  if not fast then
    error("store_ffi.viewer: zero-copy views need LuaJIT's FFI and this build's layouts "
      .. "(store_ffi.available is false): use c:get", 2)
  end
  check(c, "store_ffi.viewer")
  local ud = ffi.cast(ud_p, c)
  -- gen -1: never equal to the handle's (0 up), so nothing is held yet
  return setmetatable({ c = c, ud = ud, gen = -1, err = err_t(F.error_size - 4) }, View)
end

return M
