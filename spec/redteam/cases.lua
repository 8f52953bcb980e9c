return function(ROOT, BASE)
local function set(...) local t = {} for _, k in ipairs { ... } do t[k] = true end return t end
local CPU = set("cpu_limit", "timeout")
local MEM = set("memory_limit")
local R3 = { strict = true, balanced = true, relaxed = true }
local ERR_OR_OK = set("ok", "tool_error")
local function out_false(field)
  return function(env) return env and type(env.output) == "table" and env.output[field] == false or ("output." .. field .. " not false") end
end
local C = {}
local function add(c) C[#C + 1] = c end

-- ===== environment escapes =====
add { name = "e_strmeta_dump", levels = R3, expect = { ["*"] = "ok" }, check = out_false("escaped"),
  handler = [[function()
    local mt = getmetatable("")
    local idx = mt and mt.__index
    local found = false
    for _, o in ipairs { idx, string, ("x"):rep(1) } do
      if type(o) == "table" and (rawget(o, "du" .. "mp") ~= nil) then found = true end
      if type(o) == "string" and o["du".."mp"] ~= nil then found = true end
    end
    if ("x")["du".."mp"] then found = true end
    if ("x"):rep(2, ""):len() ~= 2 then found = true end
    return { escaped = found }
  end]] }

add { name = "e_load_reader_bc", levels = R3, expect = { ["*"] = "ok" }, check = out_false("escaped"),
  handler = [[function()
    local parts = { "\27LJ", "\2", "\0", "\0" }
    local i = 0
    local LOAD = rawget(_G, "lo" .. "ad")
    local LS = rawget(_G, "load" .. "string")
    if not LOAD and not LS then return { escaped = false, absent = true } end
    local f = LOAD and LOAD(function() i = i + 1; return parts[i] end)
    local g = LS and LS("\27LJ\2\0\0\0\0")
    local f2 = LOAD and LOAD("\27Lua", "x", "b")
    return { escaped = (f ~= nil) or (g ~= nil) or (f2 ~= nil) }
  end]] }

add { name = "e_load_reader_env", levels = R3, expect = { ["*"] = "ok" }, check = out_false("escaped"),
  handler = [[function()
    local src = { "return ", "{ io = io, os_exec = os and os.execute, dbg = debug, ",
      "ffi = ffi, jit = jit, req = require, pkg = package, gfe = getfenv, sfe = setfenv, np = newproxy, dump = string.dump }" }
    local i = 0
    local LOAD = rawget(_G, "lo" .. "ad") or rawget(_G, "load" .. "string")
    if not LOAD then return { escaped = false, absent = true } end
    local f = LOAD(function() i = i + 1; return src[i] end, "=r")
    local t = f and f() or {}
    local n = 0
    for k, v in pairs(t) do n = n + 1 end
    -- a chunk given its own env must not reach real globals through _G / metatable
    local f3 = LOAD("return getmetatable(_G), rawget(_G, 'debug')", "=e", "t", {})
    local ok3, m, d = pcall(f3)
    return { escaped = n > 0 or (ok3 and (m ~= nil or d ~= nil)), n = n }
  end]] }

add { name = "e_coro_error_obj", levels = R3, expect = { ["*"] = "ok" }, check = out_false("escaped"),
  handler = [[function()
    local got = {}
    local co = coroutine.wrap(function() error(setmetatable({}, { __index = function(t, k) got[#got+1] = k end })) end)
    local ok, e = pcall(co)
    local x = type(e) == "table" and e.anything
    -- the error object from a denied call must not carry internals
    local ok2, e2 = pcall(function() return rawget(_G, "deb" .. "ug")["get" .. "info"](1) end)
    local ok3, e3 = pcall(function() return _G["deb" .. "ug"]["trace" .. "back"] end)
    local reg = false
    for _, k in ipairs { "_LOADED", "_R", "_ENV", "_PRELOAD" } do if rawget(_G, k) ~= nil then reg = true end end
    return { escaped = ok2 or (ok3 and e3 ~= nil) or reg }
  end]] }

add { name = "e_rawequal_rawget", levels = R3, expect = { ["*"] = "ok" }, check = out_false("escaped"),
  handler = [[function()
    local hits = {}
    for _, k in ipairs { "io", "debug", "ffi", "jit", "package", "require", "getfenv", "setfenv",
      "newproxy", "module", "dofile", "loadfile", "gcinfo", "collectgarbage_real" } do
      if rawget(_G, k) ~= nil then hits[#hits+1] = k end
    end
    if os then for _, k in ipairs { "execute", "exit", "getenv", "remove", "rename", "tmpname", "setlocale" } do
      if rawget(os, k) ~= nil then hits[#hits+1] = "os." .. k end end end
    if rawget(string, "dump") then hits[#hits+1] = "string.dump" end
    local mt = getmetatable(_G)
    if mt then hits[#hits+1] = "mt(_G)" end
    -- select('#') and unusual varargs shouldn't break anything
    local n = select('#', nil, nil, nil)
    return { escaped = #hits > 0, hits = table.concat(hits, ","), n = n }
  end]] }

add { name = "e_tostring_addr", levels = R3, expect = { ["*"] = "ok" },
  handler = [[function() return { f = tostring(print), t = tostring({}), c = tostring(coroutine.create(print)) } end]],
  check = function(env) return true end }

add { name = "e_collectgarbage", levels = R3, expect = { ["*"] = ERR_OR_OK }, check = out_false("escaped"),
  handler = [[function()
    local allowed = {}
    for _, o in ipairs { "collect", "stop", "restart", "step", "setpause", "setstepmul", "generational", "incremental", "isrunning" } do
      local ok, r = pcall(collectgarbage, o, 1)
      if ok then allowed[#allowed+1] = o end
    end
    return { escaped = #allowed > 0, allowed = table.concat(allowed, ",") , count = type(collectgarbage("count")) }
  end]] }

add { name = "e_gc_stop_bomb", levels = R3, expect = { ["*"] = set("memory_limit", "tool_error") },
  handler = [[function() pcall(collectgarbage, "stop"); local t = {} for i = 1, 1e8 do t[i] = {} end return {} end]] }

add { name = "e_poison_then_ping", levels = R3, expect = { ["*"] = "ok" },
  handler = [[function()
    local mt = getmetatable("")
    pcall(function() mt.__index = { rep = function() return "pwn" end, upper = function() return "pwn" end } end)
    pcall(function() string.rep = function() return "pwn" end end)
    pcall(function() string.upper = function() return "pwn" end end)
    pcall(function() table.concat = nil end)
    pcall(function() math.floor = function() return 99 end end)
    pcall(function() rawset(_G, "POISON", 1) end)
    POISON = 1
    return { ok = true }
  end]] }

-- ===== stdlib edge inputs =====
add { name = "s_os_time_huge", levels = R3, expect = { ["*"] = ERR_OR_OK },
  handler = [[function()
    local r = {}
    r[1] = pcall(os.time, { year = 2^53, month = 1, day = 1 })
    r[2] = pcall(os.time, { year = -2^62, month = 2^40, day = -2^40, hour = 1e308 })
    r[3] = pcall(os.date, "*t", 2^62)
    r[4] = pcall(os.date, "!*t", -2^62)
    r[5] = pcall(os.date, "%c", 1e308)
    r[6] = pcall(os.date, "%Ez%Q%")
    r[7] = pcall(os.date, ("%c"):rep(20000))
    r[8] = pcall(os.date, "%", 0/0)
    return { n = #r }
  end]] }

add { name = "s_rep_huge", levels = R3, expect = { ["*"] = set("memory_limit", "tool_error") },
  handler = [[function() local s = ("x"):rep(2^31 - 2) return { n = #s } end]] }

add { name = "s_rep_sep_huge", levels = R3, expect = { ["*"] = set("memory_limit", "tool_error") },
  handler = [[function() local s = ("x"):rep(1e6, ("y"):rep(1e4)) return { n = #s } end]] }

add { name = "s_format_wide", levels = R3, expect = { ["*"] = ERR_OR_OK },
  handler = [[function()
    local r = {}
    for _, f in ipairs { "%99999d", "%099d", "%.99999f", "%-99s", "%5$s", "%n", "%*d", "%#%", "%99.99f", "%q" } do
      local ok, v = pcall(string.format, f, 1, 2)
      r[#r+1] = ok and ("ok:" .. #v) or "err"
    end
    local ok, v = pcall(string.format, "%.99f", 1e308)
    r[#r+1] = ok and #v or "err"
    return { r = table.concat(r, ",") }
  end]] }

add { name = "s_unpack_huge", levels = R3, expect = { ["*"] = ERR_OR_OK },
  handler = [[function()
    local u = unpack or table.unpack
    local a = pcall(u, {}, 1, 1e8)
    local b = pcall(u, {}, -2^31, 2^31 - 1)
    local c = pcall(u, {}, 2^53, 2^53 + 10)
    local d = pcall(select, 2^31)
    local e = pcall(select, -2^31, 1, 2)
    local f = pcall(string.byte, ("x"):rep(100), 1, 1e9)
    local g = pcall(string.char, u({}, 1, 300000))
    return { a = a, b = b, c = c, d = d, e = e, f = f, g = g }
  end]] }

add { name = "s_concat_huge", levels = R3, expect = { ["*"] = set("memory_limit") },
  handler = [[function() local t = {} for i = 1, 2e6 do t[i] = "abcdefghij" .. i end return { n = #table.concat(t, ("-"):rep(100)) } end]] }

add { name = "s_pattern_deep", levels = R3, expect = { ["*"] = set("ok", "tool_error", "cpu_limit", "timeout") },
  handler = [[function()
    local s = ("a"):rep(300000)
    local r = {}
    r[1] = pcall(string.find, s, ("a?"):rep(200000) .. ("a"):rep(1000))
    r[2] = pcall(string.match, s, ("(a)"):rep(40))
    r[3] = pcall(string.gsub, s, ".-$", "")
    r[4] = pcall(string.find, s, "%f[%a]" .. ("%f[%a]"):rep(1000))
    r[5] = pcall(string.match, ("("):rep(100000), ("%b()"):rep(1))
    return { r = #r }
  end]] }

add { name = "s_pattern_cstack", levels = R3, expect = { ["*"] = set("ok", "tool_error", "cpu_limit", "timeout") },
  handler = [[function()
    -- max_expand recursion: "a-" repeated forces one C frame per pattern item
    local s = ("a"):rep(500000)
    local ok = pcall(string.match, s, ("a-"):rep(100000) .. "b")
    local ok2 = pcall(string.match, s, "^" .. ("[a]?"):rep(150000) .. "$")
    return { ok = ok, ok2 = ok2 }
  end]] }

-- ===== limits: memory =====
add { name = "m_string_intern", levels = R3, expect = { ["*"] = MEM },
  handler = [[function() local t = {} local i = 0 while true do i = i + 1; t[i] = tostring(i) .. "-interned-string-padding" end end]] }
add { name = "m_table_rehash", levels = R3, expect = { ["*"] = MEM },
  handler = [[function() local t = {} local k = 1 while true do t[k] = true; t[-k] = k; t[k + 0.5] = k; k = k + 1 end end]] }
add { name = "m_closures", levels = R3, expect = { ["*"] = MEM },
  handler = [[function() local t = {} local i = 0 while true do i = i + 1; local j = i; t[i] = function() return j end end end]] }
add { name = "m_coroutines", levels = R3, expect = { ["*"] = MEM },
  handler = [[function() local t = {} while true do local co = coroutine.create(function(...) local a = {...}; coroutine.yield(a) end); coroutine.resume(co, 1, 2, 3); t[#t+1] = co end end]] }
add { name = "m_pcall_swallow", levels = R3, expect = { ["*"] = MEM },
  handler = [[function()
    local keep = {}
    for i = 1, 1e9 do
      local ok = pcall(function() keep[#keep + 1] = ("z"):rep(1e5) .. i end)
      if not ok then keep = {} end
    end
    return {}
  end]] }
add { name = "m_error_obj_mem", levels = R3, expect = { ["*"] = "tool_error" }, -- the engine never calls an error object's __tostring
  handler = [[function() error(setmetatable({}, { __tostring = function() local t = {} while true do t[#t+1] = ("q"):rep(1000) .. #t end end })) end]] }

-- ===== limits: CPU =====
add { name = "c_sort_cmp", levels = R3, expect = { ["*"] = CPU },
  handler = [[function() local t = {} for i = 1, 100 do t[i] = i end table.sort(t, function(a, b) while true do end end) return {} end]] }
add { name = "c_sort_cmp_pcall", levels = R3, expect = { ["*"] = CPU },
  handler = [[function() local t = {} for i = 1, 100 do t[i] = i end
    while true do pcall(table.sort, t, function(a, b) local x = 0 for i = 1, 1e7 do x = x + i end return a < b end) end end]] }
add { name = "c_gsub_fn", levels = R3, expect = { ["*"] = CPU },
  handler = [[function() local s = ("x"):rep(1000) s:gsub(".", function(c) while true do end end) return {} end]] }
add { name = "c_metamethods", levels = R3, expect = { ["*"] = CPU },
  handler = [[function()
    local mt = {}
    mt.__lt = function() while true do end end
    local a, b = setmetatable({}, mt), setmetatable({}, mt)
    pcall(function() return a < b end)
    return {}
  end]] }
add { name = "c_concat_index", levels = R3, expect = { ["*"] = set("cpu_limit", "timeout", "memory_limit") }, -- the keys grow
  handler = [[function()
    local mt = { __concat = function(a, b) return a .. b end, __index = function(t, k) return t[k .. "x"] end }
    local a = setmetatable({}, mt)
    local ok = pcall(function() return a.x end)
    local ok2 = pcall(function() return a .. "x" end)
    while true do pcall(function() return a.x end) end
  end]] }
add { name = "c_err_tostring_loop", levels = R3, expect = { ["*"] = "tool_error" },
  handler = [[function() error(setmetatable({}, { __tostring = function() while true do end end })) end]] }
add { name = "c_xpcall_handler_loop", levels = R3, expect = { ["*"] = CPU },
  handler = [[function() xpcall(function() error("x") end, function() while true do end end) return { swallowed = true } end]] }
add { name = "c_coro_loop_swallow", levels = R3, expect = { ["*"] = CPU },
  handler = [[function()
    while true do
      local co = coroutine.wrap(function() while true do end end)
      pcall(co)
    end
  end]] }
add { name = "c_tostring_output", levels = R3, expect = { ["*"] = set("ok", "cpu_limit", "timeout", "invalid_output") }, -- metamethods ignored: {}
  handler = [[function() return { v = setmetatable({}, { __tostring = function() while true do end end, __index = function() while true do end end }) } end]] }
add { name = "c_none_loop", levels = { none = true }, expect = { ["*"] = CPU },
  handler = [[function() while true do end end]] }

-- ===== output =====
add { name = "o_cycle", levels = R3, expect = { ["*"] = "invalid_output" },
  handler = [[function() local t = {} t.self = t return t end]] }
add { name = "o_function", levels = R3, expect = { ["*"] = "invalid_output" },
  handler = [[function() return { f = print } end]] }
add { name = "o_coroutine", levels = R3, expect = { ["*"] = "invalid_output" },
  handler = [[function() return { c = coroutine.create(print) } end]] }
add { name = "o_nan_inf", levels = R3, expect = { ["*"] = set("invalid_output", "ok") },
  handler = [[function() return { a = 0/0, b = math.huge, c = -math.huge } end]],
  check = function(env)
    if env.status == "ok" then return "NaN/inf accepted: " .. require("rubberduck.json").encode(env.output) end
    return true
  end }
add { name = "o_mixed_keys", levels = R3, expect = { ["*"] = set("invalid_output", "ok") },
  handler = [[function() return { [1] = "a", [2] = "b", x = 1, [true] = 2, [{}] = 3, [1.5] = 4 } end]] }
add { name = "o_deep", levels = R3, expect = { ["*"] = set("invalid_output", "output_limit") },
  handler = [[function() local t = {} local r = t for i = 1, 100000 do local n = {} t.n = n t = n end return r end]] }
add { name = "o_deep_array", levels = R3, expect = { ["*"] = set("invalid_output", "output_limit") },
  handler = [[function() local t = {} local r = t for i = 1, 100000 do local n = {} t[1] = n t = n end return r end]] }
add { name = "o_1gb", levels = R3, max_memory = 2^31, expect = { ["*"] = set("memory_limit", "output_limit", "cpu_limit") },
  handler = [[function() return { s = ("x"):rep(2^30) } end]] }
add { name = "o_20mb", levels = R3, max_memory = 2^28, expect = { ["*"] = "output_limit" },
  handler = [[function() return { s = ("x"):rep(20 * 2^20) } end]] }
add { name = "o_many_keys", levels = R3, max_memory = 2^28, expect = { ["*"] = set("output_limit", "ok") },
  handler = [[function() local t = {} for i = 1, 3e5 do t["k" .. i] = ("v"):rep(64) end return t end]] }
add { name = "o_shared_dag", levels = R3, expect = { ["*"] = set("output_limit", "invalid_output", "memory_limit") },
  handler = [[function() -- not a cycle: a DAG whose expansion is 2^40 nodes
    local t = { "leaf" } for i = 1, 40 do t = { t, t } end return { t = t } end]] }
add { name = "o_error_huge_msg", levels = R3, expect = { ["*"] = set("tool_error", "memory_limit") },
  handler = [[function() error(("E"):rep(10 * 2^20)) end]],
  check = function(env) return #env.error.message <= 65536 or ("message " .. #env.error.message .. " bytes") end }
add { name = "o_error_table", levels = R3, expect = { ["*"] = "tool_error" },
  handler = [[function() local t = {} t.message = t error({ message = t, retryable = t, details = t }) end]] }

-- ===== ctx abuse =====
add { name = "x_progress_flood", levels = R3, max_cpu = 5000, timeout = 10000, expect = { ["*"] = set("ok", "cpu_limit", "timeout") },
  handler = [[function(p, ctx) for i = 1, 1e6 do ctx.progress(i, 1e6, "step") end return { ok = true } end]] }
add { name = "x_log_huge", levels = R3, max_memory = 2^28, expect = { ["*"] = set("ok", "output_limit", "cpu_limit") },
  handler = [[function(p, ctx) local s = ("L"):rep(8 * 2^20) for i = 1, 10 do ctx.log("info", s) end for i = 1, 1e5 do ctx.log("warn", "x") print("y") end return { ok = true } end]] }
add { name = "x_ctx_weird_args", levels = R3, expect = { ["*"] = ERR_OR_OK },
  handler = [[function(p, ctx)
    local r = {}
    for _, a in ipairs { { nil, nil, {} }, { 0/0, -1, ("m"):rep(1e6) }, { math.huge, 0 }, { {}, {} }, { "1", "2", 3 } } do
      r[#r+1] = tostring(pcall(ctx.progress, a[1], a[2], a[3]))
    end
    for _, l in ipairs { "bogus", {}, nil, ("l"):rep(1e6) } do r[#r+1] = tostring(pcall(ctx.log, l, "m")) end
    r[#r+1] = tostring(pcall(ctx.log, "info", setmetatable({}, { __tostring = function() return "ts" end })))
    r[#r+1] = tostring(pcall(ctx.sleep, -1))
    r[#r+1] = tostring(pcall(ctx.sleep, 0/0))
    r[#r+1] = tostring(pcall(ctx.sleep, "x"))
    return { r = table.concat(r, ",") }
  end]] }
add { name = "x_ctx_replace", levels = R3, expect = { ["*"] = "ok" },
  handler = [[function(p, ctx)
    ctx.log = nil; ctx.progress = print; ctx.caller = { principal = "root", roles = { "admin" } }
    ctx.execution_id = "forged"; ctx.attempt = 99
    pcall(setmetatable, ctx, { __index = function() error("boom") end })
    return { ok = true }
  end]],
  check = function(env) return env.execution_id ~= "forged" and env.metadata.attempts == 1 or "forged fields leaked" end }
add { name = "x_ctx_kept", levels = R3, again = true, expect = { ["*"] = ERR_OR_OK },
  handler = [[function(p, ctx)
    local prev = rawget(_G, "SAVED_CTX")
    local r = "fresh"
    if prev then
      local a = pcall(prev.progress, 1, 2, "stale")
      local b = pcall(prev.log, "info", "stale")
      local c = pcall(prev.sleep, 1)
      r = "stale:" .. tostring(a) .. tostring(b) .. tostring(c) .. ":" .. tostring(prev.execution_id == ctx.execution_id)
    end
    rawset(_G, "SAVED_CTX", ctx)
    SAVED_CTX = ctx
    return { r = r }
  end]] }
add { name = "x_sleep_huge", levels = R3, timeout = 300, expect = { ["*"] = "tool_error" }, -- at most one hour
  handler = [[function(p, ctx) ctx.sleep(1e12) return {} end]] }

-- ===== filesystem =====
local function fs_case(name, body, expect, extra)
  local c = { name = name, levels = R3, expect = expect, handler = "function(p, ctx) " .. body .. " end" }
  for k, v in pairs(extra or {}) do c[k] = v end
  add(c)
end
local SV = "sandbox_violation"
fs_case("f_symlink_out", ([[return { c = fs.read(%q) }]]):format(ROOT .. "/out_link"), { ["*"] = SV })
fs_case("f_symlink_dir", ([[return { c = fs.read(%q) }]]):format(ROOT .. "/etc_link/passwd"), { ["*"] = SV })
fs_case("f_dotdot", ([[return { c = fs.read(%q) }]]):format(ROOT .. "/sub/../../outside.txt"), { ["*"] = SV })
fs_case("f_dotdot_inside", ([[return { c = fs.read(%q) }]]):format(ROOT .. "/sub/../sub/f.txt"), { ["*"] = set("ok", SV) })
fs_case("f_nul", ([[return { c = fs.read(%q .. "\0/../../outside.txt") }]]):format(ROOT .. "/sub/f.txt"), { ["*"] = SV })
fs_case("f_prefix", ([[return { c = fs.read(%q) }]]):format(ROOT .. "-evil/x"), { ["*"] = SV })
fs_case("f_longname", ([[local r = {} r[1] = pcall(fs.read, %q .. "/" .. ("a"):rep(300)); r[2] = pcall(fs.write, %q .. ("/b"):rep(3000), "x");
   r[3] = pcall(fs.mkdir, %q .. "/" .. ("c"):rep(255) .. "/" .. ("d"):rep(255)); r[4] = pcall(fs.stat, ("/"):rep(100000));
   local ok, e = pcall(fs.read, ("/x"):rep(1e6)) return { r = tostring(r[1]) .. tostring(r[2]) .. tostring(r[3]) .. tostring(r[4]), e = tostring(e):sub(1, 200) }]]):format(ROOT, ROOT, ROOT),
  { ["*"] = set("ok", SV) })
fs_case("f_fifo", ([[return { c = fs.read(%q) }]]):format(ROOT .. "/fifo"), { ["*"] = set("ok", "tool_error", SV) }, { timeout = 2000 }) -- nil, "not a regular file"
fs_case("f_fifo_write", ([[return { c = fs.write(%q, "x") }]]):format(ROOT .. "/fifo"), { ["*"] = set("ok", "tool_error", SV) }, { timeout = 2000 }) -- nil, "not a regular file"
fs_case("f_proc_mem_link", ([[return { c = fs.read(%q, { max_bytes = 16 }) }]]):format(ROOT .. "/mem_link"), { ["*"] = SV })
fs_case("f_proc_direct", [[return { c = fs.read("/proc/self/mem", { max_bytes = 16 }) }]], { ["*"] = SV })
fs_case("f_proc_environ", [[return { c = fs.read("/proc/self/environ") }]], { ["*"] = SV })
fs_case("f_hardlink", ([[return { c = fs.read(%q) }]]):format(ROOT .. "/hard_link"), { ["*"] = set("ok", SV) },
  { allow_leak = true }) -- a hard link placed inside the root by someone else: kernel semantics, documented
fs_case("f_write_symlink", ([[return { c = fs.write(%q, "pwned") }]]):format(ROOT .. "/out_link"), { ["*"] = SV },
  { check = function() local f = io.open(BASE .. "/outside.txt"); local s = f:read("*a"); f:close(); return s == "secretdata\n" or "outside.txt changed!" end })
fs_case("f_remove_root", ([[local a, b = fs.remove(%q) return { c = tostring(a), m = tostring(b) }]]):format(ROOT), { ["*"] = set(SV, "tool_error", "ok") },
  { check = function(env) local f = io.open(ROOT .. "/sub/f.txt") if f then f:close() return true end return "root removed!" end })
fs_case("f_remove_symlink_dir", ([[return { c = fs.remove(%q .. "/etc_link/hostname") }]]):format(ROOT), { ["*"] = SV })
fs_case("f_list_symlink", ([[return { c = fs.list(%q .. "/etc_link") }]]):format(ROOT), { ["*"] = SV })
fs_case("f_stat_out", ([[return { c = fs.stat(%q .. "/etc_link/shadow") }]]):format(ROOT), { ["*"] = SV })
fs_case("f_maxsize_append", ([[local last for i = 1, 100 do last = { fs.write(%q, ("a"):rep(1000), { append = true }) } end return { st = fs.stat(%q).size, m = tostring(last[2]) } ]]):format(ROOT .. "/big.txt", ROOT .. "/big.txt"),
  { ["*"] = set(SV, "tool_error", "ok") }, { security = ", max_file_size = 10000", check = function(env) return env.status ~= "ok" or env.output.st <= 10000 or "file grew to " .. env.output.st end })
fs_case("f_fs_replaced", ([[fs.read = function() return "x" end; local ok = pcall(function() fs.__index = 1 end) return { ok = true }]]), { ["*"] = set("ok", "tool_error") })
fs_case("f_race_swap", ([[
  local seen, viol, okc = {}, 0, 0
  for i = 1, 3000 do
    local ok, r = pcall(fs.read, %q)
    if ok and r then okc = okc + 1 if r:find("secret") then seen[#seen+1] = r end
    elseif not ok then viol = viol + 1 end
  end
  return { leaked = #seen, viol = viol, okc = okc } ]]):format(ROOT .. "/swap/outside.txt"),
  { ["*"] = set("ok", SV) }, { max_cpu = 4000, timeout = 8000, swap = true, no_cli = true,
    check = function(env) return env.status ~= "ok" or env.output.leaked == 0 or "LEAKED via swap" end })

return C
end
