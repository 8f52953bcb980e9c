-- rubberduck.store_ffi — the cache's read path through the LuaJIT FFI.
--
--   local get = require("rubberduck.store_ffi").getter(c) -- c: core.store.cache
--   local value = get(key)   -- like c:get(key): the value (a Lua string,
--                            -- copied from the map), or nil when missing
--                            -- or expired
--
-- A call of a lua_CFunction cannot be compiled by LuaJIT; an FFI call can,
-- and costs a few instructions. The getter calls this process's
-- rd_cache_get and rd_store_view_release through their addresses, which the
-- binding publishes (core.store.ffi), so it never reaches another copy of
-- the code; everything that makes a get correct (TTL, read notes, the
-- handle's read txn) stays in C. Anything off the plain path goes to c:get,
-- which gives the binding's errors: a closed cache, a key that is not a
-- string, an empty key, a storage error. Without the FFI, or when the
-- view's layout is not the one this file declares, getter(c) returns a
-- function calling c:get.
local M = {}

local okffi, ffi = pcall(require, "ffi")
local core = require "rubberduck.core"
local F = core.store.ffi

local fast = false
local cache_get, view_release, view_t, cache_pp, fstring, OK, ENOENT
if okffi and F then
  -- pcall: a second load in this state finds the types already declared
  pcall(ffi.cdef, [[
    typedef struct rd_ffi_cache rd_ffi_cache;
    typedef struct rd_ffi_view {
      const char *data; size_t len; double expires_at; void *txn_, *env_, *owner_;
    } rd_ffi_view;
  ]])
  if ffi.sizeof("rd_ffi_view") == F.view_size and ffi.offsetof("rd_ffi_view", "len") == F.view_len_offset
      and F.cache_ud_size == ffi.sizeof("void *") then
    cache_get = ffi.cast("int (*)(rd_ffi_cache *, const char *, size_t, rd_ffi_view *, void *)", F.cache_get)
    view_release = ffi.cast("void (*)(rd_ffi_view *)", F.view_release)
    view_t = ffi.typeof("rd_ffi_view[1]")
    cache_pp = ffi.typeof("rd_ffi_cache **")
    fstring, OK, ENOENT = ffi.string, F.OK, F.ENOENT
    fast = true
  end
end

M.available = fast

-- A get function bound to the core cache handle c.
function M.getter(c)
  if not fast then return function(key) return c:get(key) end end
  local slot = ffi.cast(cache_pp, c) -- the handle's rd_cache *, NULL once closed
  local view = view_t()
  return function(key)
    local h = slot[0]
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

return M
