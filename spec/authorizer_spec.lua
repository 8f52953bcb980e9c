-- authorizer_spec.lua — the second layer of the pipeline
-- (lua/rubberduck/authorizer.lua, policydef.lua, policystate.lua,
-- token.lua, the `requires` block of dsl.lua): policies, requirements that
-- depend on the params, context rules, denials, signed capability tokens,
-- the decision cache, and hostile callers and policies.

local H = require "helpers"
local rd = require "rubberduck"
local authorizer = require "rubberduck.authorizer"
local token = require "rubberduck.token"
local core = require "rubberduck.core"

local json = H.json()
local POLICY = H.source_dir .. "/spec/fixtures/policy/classic.lua"
-- 2026-11-26 at 10:00 and 20:00 UTC
local DAY = 1795651200
local T10, T20 = DAY + 10 * 3600, DAY + 20 * 3600

local TOOLS = {
  t_open = {},
  t_exec = { top = 'capabilities = { "execute" }' },
  t_read = { top = 'capabilities = { "fs.read" }' },
  t_write = { top = 'capabilities = { "fs.read", "fs.write" }' },
  t_net = { top = 'capabilities = { "net.fetch" }' },
  t_admin = { top = 'roles = { "admin" }' },
  t_user = { top = 'roles = { "user" }' },
  shell = { top = 'capabilities = { "execute" }' },
  store = {
    parameters = [[{ type = "object", properties = {
      action = { enum = { "read", "write", "delete" } }, key = { type = "string" } },
      required = { "action" } }]],
    top = [[capabilities = { "fs.read" },
  requires = {
    { when = { action = "write" }, capabilities = { "fs.write" } },
    { when = { action = "delete" }, capabilities = { "fs.write" }, roles = { "admin" } },
  }]],
    handler = "function(p) return { done = p.action } end",
  },
}

local function tools_dir()
  local dir = H.tmpdir()
  for name, t in pairs(TOOLS) do
    local o = { name = name }
    for k, v in pairs(t) do o[k] = v end
    H.write_tool(dir, name, H.tool_source(o))
  end
  return dir
end

local function who(p) return { principal = p } end

local function fails(env, kind)
  assert.equals("error", env.status, H.encode(env))
  assert.equals(kind, env.error.kind, env.error.message)
  return env.error
end

local function policy_file(dir, src, name)
  return H.write_file(dir .. "/" .. (name or "policy.lua"), src)
end

describe("authorizer", function()
  local dir
  lazy_setup(function() dir = tools_dir() end)
  lazy_teardown(function() H.cleanup() end)

  describe("callers of every shape", function()
    local engine
    lazy_setup(function() engine = H.open_engine(dir, { policy = POLICY }) end)
    lazy_teardown(function() engine:close() end)

    local cyclic = { principal = "bob" }
    cyclic.self = cyclic
    local huge = {}
    for i = 1, 100000 do huge[i] = "c" .. i end
    local holes = { "a" }
    holes[3] = "c"
    local trap = setmetatable({}, { __index = function() error("trap ran") end,
      __newindex = function() error("trap ran") end })
    local shapes = {
      { 42, "caller must be a table" },
      { "bob", "caller must be a table" },
      { true, "caller must be a table" },
      { function() end, "caller must be a table" },
      { { principal = "" }, "caller.principal" },
      { { principal = 7 }, "caller.principal" },
      { { principal = { "bob" } }, "caller.principal" },
      { { principal = string.rep("x", 300) }, "caller.principal" },
      { { principal = "bob", roles = "user" }, "caller.roles" },
      { { principal = "bob", roles = { { "user" } } }, "caller.roles[1]" },
      { { principal = "bob", roles = { user = true } }, "caller.roles" },
      { { principal = "bob", roles = holes }, "caller.roles" },
      { { principal = "bob", capabilities = huge }, "more than 1024" },
      { { principal = "bob", capabilities = { 1, 2 } }, "caller.capabilities[1]" },
      { { principal = "bob", capabilities = { "" } }, "caller.capabilities[1]" },
      { { [1] = "bob" }, "keys must be strings" },
      { cyclic, "caller.self: not plain data" },
      { { principal = "bob", f = print }, "caller.f: not plain data" },
      { { principal = "bob", token_id = "forged" }, "set by the engine" },
      { { principal = "bob", bounds = {} }, "set by the engine" },
      { { token = 42 }, "token refused: malformed" },
      { { token = "x", principal = "alice" }, "a token defines the caller" },
    }

    it("refuses each with unauthorized and a reason, and keeps working", function()
      for i, s in ipairs(shapes) do
        local err = fails(engine:execute("t_open", {}, s[1]), "unauthorized")
        assert.truthy(err.message:find(s[2], 1, true), i .. ": " .. err.message)
      end
      -- a table whose metatable traps every access: raw reads only
      local env = engine:execute("t_open", {}, trap)
      fails(env, "unauthorized")   -- no principal: anonymous, refused by the policy
      assert.equals("ok", engine:execute("t_read", {}, who("carol")).status)
    end)

    it("check() itself never raises on a raw caller", function()
      local def = engine:tool("t_read")
      for _, s in ipairs(shapes) do
        local ok, a, b = pcall(engine.auth.check, engine.auth, def, s[1], {}, "lua")
        assert.is_true(ok, tostring(a))
        assert.is_false(a)
        assert.truthy(b:find("caller refused", 1, true) or b:find("may not run", 1, true), b)
      end
    end)

    it("normalizes a caller table passed again anew whenever it changed in between", function()
      local c = { principal = "bob", roles = { "user" }, capabilities = { "fs.read" }, n = 1 }
      local a = assert(engine.auth:caller(c))
      assert.equals(a, engine.auth:caller(c)) -- unchanged: the same normalized caller
      local steps = {
        function() c.roles[1] = "admin" end,
        function() c.roles[2] = "user" end,
        function() c.roles[2] = nil end,
        function() c.capabilities = { "fs.read" } end, -- an equal list: still the same caller
        function() c.capabilities[1] = "*" end,
        function() c.n = 2 end,
        function() c.principal = "carol" end,
        function() c.extra = "x" end,
        function() c.extra = nil end,
      }
      for i, step in ipairs(steps) do
        step()
        local b = assert(engine.auth:caller(c))
        local fresh = assert(authorizer.caller(c))
        assert.same(fresh, b, "after step " .. i)
      end
      assert.same({ "admin" }, engine.auth:caller(c).roles)
      assert.equals("carol", engine.auth:caller(c).principal)
      -- a change that makes the caller invalid is refused, not served from memory
      c.roles.x = "y"
      local none, why = engine.auth:caller(c)
      assert.is_nil(none)
      assert.truthy(why:find("caller.roles", 1, true), why)
      c.roles.x = nil
      c.capabilities[1] = 7
      none, why = engine.auth:caller(c)
      assert.is_nil(none)
      assert.truthy(why:find("caller.capabilities[1]", 1, true), why)
      c.capabilities[1] = "*"
      assert.equals("carol", assert(engine.auth:caller(c)).principal)
      -- a caller with a nested custom field is never remembered
      local d = { principal = "dan", ctx = { a = 1 } }
      assert.equals(1, assert(engine.auth:caller(d)).ctx.a)
      d.ctx.a = 2
      assert.equals(2, assert(engine.auth:caller(d)).ctx.a)
    end)

    it("keeps plain extra fields (trace ids) and passes them on", function()
      local c = assert(authorizer.caller({ principal = "bob", trace = { id = "t1" }, n = 3 }))
      assert.same({ id = "t1" }, c.trace)
      assert.equals(3, c.n)
    end)

    it("refuses a caller without identity when a policy is in force, whatever the tool", function()
      local err = fails(engine:execute("t_open", {}), "unauthorized")
      assert.same({ reason = "no identity" }, err.details)
      fails(engine:execute("t_open", {}, { roles = { "admin" }, capabilities = { "*" } }), "unauthorized")
      fails(engine:execute("t_open", {}, who("anonymous")), "unauthorized")
    end)
  end)

  describe("the classic matrix", function()
    local engine
    lazy_setup(function()
      engine = H.open_engine(dir, { policy = POLICY })
      engine.auth.now = function() return T10 end
    end)
    lazy_teardown(function() engine:close() end)

    -- allowed (true) or the capability / role reported missing
    local M = {
      --          alice  bob    carol                  dave
      t_open  = { true,  true,  true,                  true },
      t_exec  = { true,  true,  "execute",             "execute" },
      t_read  = { true,  true,  true,                  "fs.read" },
      t_write = { true,  true,  "fs.write",            "fs.read" },
      t_net   = { true,  "net.fetch", "net.fetch",     "net.fetch" },
      t_admin = { true,  "role:admin", "role:admin",   "role:admin" },
      t_user  = { true,  true,  "role:user",           "role:user" },
    }
    local CALLERS = { "alice", "bob", "carol", "dave" }

    it("allows and denies exactly as the policy says", function()
      for tool, row in pairs(M) do
        for i, p in ipairs(CALLERS) do
          local env = engine:execute(tool, {}, who(p))
          local want = row[i]
          if want == true then
            assert.equals("ok", env.status, tool .. " as " .. p .. ": " .. H.encode(env.error))
          else
            local err = fails(env, "unauthorized")
            local role = want:match("^role:(.*)$")
            if role then
              assert.same({ role }, err.details.missing_roles, tool .. " as " .. p)
            else
              assert.truthy(H.contains(err.details.missing_capabilities, want),
                tool .. " as " .. p .. ": " .. err.message)
            end
          end
        end
      end
    end)

    it("gives a role what it inherits (ops inherits user)", function()
      assert.equals("ok", engine:execute("t_write", {}, who("olga")).status)
      assert.equals("ok", engine:execute("t_user", {}, who("olga")).status)
      assert.equals("ok", engine:execute("t_net", {}, who("olga")).status)
      fails(engine:execute("t_admin", {}, who("olga")), "unauthorized")
    end)

    it("adds what the caller states to what the policy grants its principal", function()
      assert.equals("ok", engine:execute("t_net", {}, { principal = "carol", capabilities = { "net.*" } }).status)
      assert.equals("ok", engine:execute("t_write", {}, { principal = "carol", roles = { "user" } }).status)
    end)

    it("names only what is missing: never the caller's other grants", function()
      local seen = {}
      local sub = engine:subscribe("authorization.denied", function(ev) seen[#seen + 1] = ev end)
      local env = engine:execute("t_net", {}, { principal = "carol",
        capabilities = { "secret.grant", "vault.*" }, roles = { "reader" } })
      engine:unsubscribe(sub)
      local err = fails(env, "unauthorized")
      assert.same({ "net.fetch" }, err.details.missing_capabilities)
      local text = H.encode(env) .. H.encode(seen)
      for _, leak in ipairs({ "secret.grant", "vault", "fs.read", "reader", "alice", "bob" }) do
        assert.falsy(text:find(leak, 1, true), leak .. " leaked: " .. text)
      end
      assert.equals(1, #seen)
      assert.equals("carol", seen[1].metadata.principal)
      assert.equals("t_net", seen[1].metadata.tool)
      assert.equals(err.message, seen[1].metadata.reason)
    end)
  end)

  describe("an admin whose reach is the policy's", function()
    it("is refused what the policy does not give it", function()
      local pdir = H.tmpdir()
      local f = policy_file(pdir, [[return {
        roles = { admin = { capabilities = { "fs.*" } } },
        principals = { root = { roles = { "admin" } } },
      }]])
      local engine = H.open_engine(dir, { policy = f })
      assert.equals("ok", engine:execute("t_write", {}, who("root")).status)
      assert.equals("ok", engine:execute("t_admin", {}, who("root")).status)
      local err = fails(engine:execute("t_exec", {}, who("root")), "unauthorized")
      assert.same({ "execute" }, err.details.missing_capabilities)
      engine:close()
    end)
  end)

  describe("requirements that depend on the params", function()
    local engine
    lazy_setup(function()
      engine = H.open_engine(dir, { policy = POLICY })
      engine.auth.now = function() return T10 end
    end)
    lazy_teardown(function() engine:close() end)

    it("allows one call and denies the next", function()
      local carol = who("carol")
      assert.equals("ok", engine:execute("store", { action = "read" }, carol).status)
      local err = fails(engine:execute("store", { action = "write" }, carol), "unauthorized")
      assert.same({ "fs.write" }, err.details.missing_capabilities)
      assert.equals("ok", engine:execute("store", { action = "read" }, carol).status)
      assert.equals("ok", engine:execute("store", { action = "write" }, who("bob")).status)
      err = fails(engine:execute("store", { action = "delete" }, who("bob")), "unauthorized")
      assert.same({ "admin" }, err.details.missing_roles)
      assert.equals("ok", engine:execute("store", { action = "delete" }, who("alice")).status)
    end)

    it("applies to the bundled files tool: reading needs fs.read, writing fs.write too", function()
      local e = H.open_engine(H.source_dir .. "/tools")
      local reader = { principal = "r", capabilities = { "fs.read" } }
      assert.equals("ok", e:execute("files", { action = "stat", path = "/tmp" }, reader).status)
      local err = fails(e:execute("files", { action = "mkdir", path = "/tmp/rd-auth-x" }, reader), "unauthorized")
      assert.same({ "fs.write" }, err.details.missing_capabilities)
      local def = e:tool("files")
      assert.same({ { when = { action = { "write", "remove", "mkdir" } }, capabilities = { "fs.write" },
        roles = {} } }, def.requires)
      e:close()
    end)

    it("is data checked at load, with the field path", function()
      local tdir = H.tmpdir()
      local base = [[parameters = { type = "object", properties = { action = { type = "string" } } },
        requires = %s]]
      local cases = {
        { '{ { when = { acton = "write" }, capabilities = { "fs.write" } } }',
          'requires[1].when.acton: no parameter named "acton" in parameters.properties' },
        { '{ { when = {}, capabilities = { "fs.write" } } }', "requires[1].when: empty" },
        { '{ { capabilities = { "fs.write" } } }', "requires[1].when: missing" },
        { '{ { when = { action = "w" } } }', "requires[1]: requires nothing" },
        { '{ { when = { action = function() end }, capabilities = { "x" } } }',
          "requires[1].when.action: expected a value" },
        { '{ { when = { action = { {} } }, capabilities = { "x" } } }', "requires[1].when.action[1]" },
        { '{ { when = { action = "w" }, capabilities = { "x" }, bogus = 1 } }', "requires[1].bogus: unknown field" },
        { '"fs.write"', "requires: expected table" },
        { '{ x = 1 }', "requires: expected a list" },
      }
      for i, c in ipairs(cases) do
        local f = H.write_tool(tdir, "r" .. i, H.tool_source({ name = "r" .. i,
          parameters = nil, top = base:format(c[1]) }))
        local e = rd.open({ files = { f }, data_dir = H.tmpdir() })
        assert.truthy(#H.matching(e.problems, c[2]) == 1, c[2] .. " not in: " .. table.concat(e.problems, "\n"))
        e:close()
      end
    end)
  end)

  describe("context rules", function()
    local engine, clock
    lazy_setup(function()
      engine = H.open_engine(dir, { policy = POLICY })
      clock = T10
      engine.auth.now = function() return clock end
    end)
    lazy_teardown(function() engine:close() end)

    it("refuses shell except from the console, and names the rule", function()
      local err = fails(engine:execute("shell", {}, who("bob"), { entry = "cli" }), "unauthorized")
      assert.equals("shell from the console", err.details.rule)
      assert.equals("entry point cli is not console", err.details.reason)
      assert.truthy(err.message:find('rule "shell from the console" refused', 1, true), err.message)
      assert.equals("ok", engine:execute("shell", {}, who("bob"), { entry = "console" }).status)
      -- the engine's own entry point when the call names none
      fails(engine:execute("shell", {}, who("bob")), "unauthorized")
      -- admins are excepted by the rule itself
      assert.equals("ok", engine:execute("shell", {}, who("alice"), { entry = "http" }).status)
    end)

    it("checks the capabilities first, then the rules", function()
      local err = fails(engine:execute("shell", {}, who("carol"), { entry = "console" }), "unauthorized")
      assert.same({ "execute" }, err.details.missing_capabilities)
    end)

    it("reads the time of day, and a cached decision does not outlive its minute", function()
      clock = T10
      assert.equals("ok", engine:execute("store", { action = "write" }, who("bob")).status)
      clock = T20
      local err = fails(engine:execute("store", { action = "write" }, who("bob")), "unauthorized")
      assert.equals("office hours for writes", err.details.rule)
      assert.equals("outside 08:00-18:00 UTC (now 20:00)", err.details.reason)
      -- reading is not a write: the rule does not apply
      assert.equals("ok", engine:execute("store", { action = "read" }, who("bob")).status)
      clock = T10 + 60
      assert.equals("ok", engine:execute("store", { action = "write" }, who("bob")).status)
    end)

    it("denies by params and entry together", function()
      local err = fails(engine:execute("store", { action = "delete" }, who("alice"), { entry = "http" }),
        "unauthorized")
      assert.equals("no deletes over http", err.details.rule)
      assert.equals("ok", engine:execute("store", { action = "delete" }, who("alice"), { entry = "cli" }).status)
    end)

    it("window that wraps midnight", function()
      local pdir = H.tmpdir()
      local f = policy_file(pdir, [[return { anonymous = "allow", rules = {
        { name = "nights", require = { hours = { from = "22:00", to = "06:00" } } } } }]])
      local e = H.open_engine(dir, { policy = f })
      local t = DAY + 23 * 3600
      e.auth.now = function() return t end
      assert.equals("ok", e:execute("t_open", {}).status)
      t = DAY + 5 * 3600 + 59 * 60
      assert.equals("ok", e:execute("t_open", {}).status)
      t = DAY + 6 * 3600
      fails(e:execute("t_open", {}), "unauthorized")
      e:close()
    end)
  end)

  describe("policy files", function()
    local pdir
    lazy_setup(function() pdir = H.tmpdir() end)

    local function refused(src, want)
      local f = policy_file(pdir, src, "p" .. tostring(math.random(1e9)) .. ".lua")
      local e, err = rd.open({ tools = dir, data_dir = H.tmpdir(), policy = f })
      assert.is_nil(e)
      assert.truthy(err:find(f .. ": " .. want, 1, true), "want " .. want .. "\ngot: " .. tostring(err))
      return err
    end

    it("refuses a bad policy at load with file, path and reason", function()
      refused("return {", "(syntax): ")
      refused("error('nope')", "(load): ")
      refused("return 42", "(policy): the file must return a table, got number")
      refused("return { bogus = 1 }", "bogus: unknown field")
      refused("return { roles = { user = { capabilities = { 42 } } } }",
        "roles.user.capabilities[1]: expected a capability, got number")
      refused("return { roles = { user = { capabilities = { 'fs.*.x' } } } }",
        'roles.user.capabilities[1]: expected a capability, got "fs.*.x"')
      refused("return { roles = { user = { inherits = { 'nobody' } } } }",
        'roles.user.inherits[1]: no role named "nobody"')
      refused("return { roles = { a = { inherits = { 'b' } }, b = { inherits = { 'c' } }, c = { inherits = { 'a' } } } }",
        "roles.a.inherits: inheritance cycle a -> b -> c -> a")
      refused("return { roles = { a = { inherits = { 'a' } } } }", "roles.a.inherits: inheritance cycle a -> a")
      refused("return { principals = { bob = { roles = { 'ghost' } } } }",
        'principals.bob.roles[1]: no role named "ghost"')
      refused("return { rules = { { require = { entry = { 'cli' } } } } }", "rules[1].name: expected a non-empty string")
      refused("return { rules = { { name = 'x', require = { entry = { 'ssh' } } } } }",
        'rules[1].require.entry[1]: expected an entry point (cli, repl, lua, c, http, console), got "ssh"')
      refused("return { rules = { { name = 'x', require = { hours = { from = '25:00', to = '08:00' } } } } }",
        'rules[1].require.hours.from: expected "HH:MM", got "25:00"')
      refused("return { rules = { { name = 'x' } } }", "rules[1]: missing require")
      refused("return { rules = { { name = 'x', deny = true, require = {} } } }", "rules[1]: give require or deny")
      refused("return { rules = { { name = 'x', require = function() return true end } } }",
        "rules[1].require: expected a table, got function")
      refused("return { rules = { { name = 'x', deny = true }, { name = 'x', deny = true } } }",
        'rules[2].name: duplicate rule name "x"')
      refused("return { anonymous = 'maybe' }", 'anonymous: expected "deny" or "allow"')
      refused("return { cache_ttl = -1 }", "cache_ttl: expected seconds")
    end)

    it("runs the file in a restricted state under a budget, never in the host", function()
      -- the CPU budget, or the wall-clock deadline on a machine too loaded
      -- to give the state its CPU in time
      local err = refused("while true do end", "(load): the policy ")
      assert.truthy(err:find("spent its CPU budget", 1, true) or err:find("ran past the load deadline", 1, true), err)
      refused("local t, s = {}, string.rep('x', 1e6) for i = 1, 1e9 do t[i] = s .. i end",
        "(load): the policy reached the memory cap")
      refused("return io.open('/etc/passwd')", "(load): ")
      refused("return os.execute('true')", "(load): ")
      refused("require('ffi')", "(load): ")
      refused(string.dump(function() return {} end), "(file): precompiled bytecode is refused")
      -- a global the file sets stays in its own state
      local f = policy_file(pdir, "leaked_global = true; return { anonymous = 'allow' }", "g.lua")
      local e = H.open_engine(dir, { policy = f })
      assert.is_nil(rawget(_G, "leaked_global"))
      e:close()
    end)

    it("reports a missing file", function()
      local _, err = rd.open({ tools = dir, data_dir = H.tmpdir(), policy = pdir .. "/nope.lua" })
      assert.truthy(err:find(pdir .. "/nope.lua: (file): ", 1, true), err)
    end)

    it("reloads atomically: a bad file leaves the old policy in force", function()
      local f = policy_file(pdir, [[return { roles = { r = { capabilities = { "fs.read" } } },
        principals = { pat = { roles = { "r" } } } }]], "live.lua")
      local e = H.open_engine(dir, { policy = f })
      local events = {}
      e:subscribe("policy.", function(ev) events[#events + 1] = ev end)
      assert.equals("ok", e:execute("t_read", {}, who("pat")).status)
      fails(e:execute("t_write", {}, who("pat")), "unauthorized")
      local gen = e.auth.generation

      policy_file(pdir, "return { roles = { r = { capabilities = { 'fs.*' } }, ", "live.lua")
      local ok, probs = e:reload_policy()
      assert.is_nil(ok)
      assert.truthy(probs[1]:find(f .. ": (syntax)", 1, true), probs[1])
      assert.equals(gen, e.auth.generation)
      assert.equals("ok", e:execute("t_read", {}, who("pat")).status)
      fails(e:execute("t_write", {}, who("pat")), "unauthorized")

      policy_file(pdir, [[return { roles = { r = { capabilities = { "fs.*" } } },
        principals = { pat = { roles = { "r" } } } }]], "live.lua")
      assert.is_true(e:reload_policy())
      -- in force at once: the cached denial is gone
      assert.equals("ok", e:execute("t_write", {}, who("pat")).status)
      assert.equals("policy.reload_failed", events[1].name)
      assert.equals(f, events[1].metadata.file)
      assert.truthy(events[1].metadata.reason:find("(syntax)", 1, true))
      assert.equals("policy.loaded", events[2].name)
      assert.equals(1, events[2].measurements.roles)
      e:close()
    end)
  end)

  describe("signed capability tokens", function()
    local engine, data, key
    lazy_setup(function()
      data = H.tmpdir() .. "/data"
      engine = assert(rd.open({ tools = dir, data_dir = data, policy = POLICY }))
      engine.auth.now = function() return T10 end
      key = assert(engine.auth:key(true))
    end)
    lazy_teardown(function() engine:close() end)

    local function issue(spec)
      spec.ttl = spec.ttl or 3600
      spec.now = spec.now or T10
      return assert(token.issue(key, spec))
    end
    local function refused(t, want)
      local err = fails(engine:execute("t_read", {}, { token = t }), "unauthorized")
      assert.truthy(err.message:find("token refused: " .. want, 1, true), "want " .. want .. ", got " .. err.message)
    end

    it("makes the key on first use, mode 0600, in a 0700 directory", function()
      local out = io.popen("stat -c '%a %s' " .. H.shell_quote(data .. "/token.key") .. " " ..
        H.shell_quote(data)):read("*a")
      local key_mode, size, dir_mode = out:match("^(%d+) (%d+)\n(%d+)")
      assert.equals("600", key_mode)
      assert.equals("32", size)
      assert.equals("700", dir_mode)
      -- the same key next time
      local again = assert(core.sign.key_load(data, false))
      assert.equals(key:public(), again:public())
    end)

    it("refuses a key file others can read", function()
      local d = H.tmpdir()
      assert(core.sign.key_load(d, true))
      os.execute("chmod 644 " .. H.shell_quote(d .. "/token.key"))
      local k, err = core.sign.key_load(d, false)
      assert.is_nil(k)
      assert.truthy(err:find("mode 0644", 1, true), err)
    end)

    it("defines the caller: principal, roles, capabilities, token id", function()
      local t = issue({ principal = "tess", capabilities = { "fs.read" } })
      local c = assert(engine.auth:caller({ token = t, trace = "x" }))
      assert.equals("tess", c.principal)
      assert.same({ "fs.read" }, c.capabilities)
      assert.truthy(c.token_id)
      assert.equals("x", c.trace)
      assert.equals("ok", engine:execute("t_read", {}, { token = t }).status)
      fails(engine:execute("t_write", {}, { token = t }), "unauthorized")
      -- roles in a token expand through the policy
      local tr = issue({ principal = "tess", roles = { "user" } })
      assert.equals("ok", engine:execute("t_write", {}, { token = tr }).status)
      -- a token grants what it states: bob's entry in the policy (user) adds nothing
      local tb = issue({ principal = "bob", capabilities = { "fs.read" } })
      assert.equals("ok", engine:execute("t_read", {}, { token = tb }).status)
      fails(engine:execute("t_write", {}, { token = tb }), "unauthorized")
      assert.equals("ok", engine:execute("t_write", {}, who("bob")).status)
    end)

    it("attenuates offline into a narrower token that still verifies", function()
      local t = issue({ principal = "tess", roles = { "user" } })
      local a = assert(token.attenuate(t, { capabilities = { "fs.read" }, ttl = 600, now = T10 }))
      assert.equals("ok", engine:execute("t_read", {}, { token = a }).status)
      -- the role would give fs.write; the attenuation bounds it
      local err = fails(engine:execute("t_write", {}, { token = a }), "unauthorized")
      assert.same({ "fs.write" }, err.details.missing_capabilities)
      -- again, narrower
      local a2 = assert(token.attenuate(a, { capabilities = { "fs.read" }, ttl = 60, now = T10 }))
      assert.equals("ok", engine:execute("t_read", {}, { token = a2 }).status)
      -- and it expires with the shorter life
      engine.auth.now = function() return T10 + 61 end
      refused(a2, "expired: at ")
      engine.auth.now = function() return T10 end
    end)

    it("never widens: attenuate refuses, and a hand-made widening block is refused", function()
      local t = issue({ principal = "tess", capabilities = { "fs.read" } })
      local a, err = token.attenuate(t, { capabilities = { "fs.write" }, now = T10 })
      assert.is_nil(a)
      assert.equals("widened: block 2 grants capability fs.write, beyond block 1", err)
      a, err = token.attenuate(t, { ttl = 7200, now = T10 })
      assert.is_nil(a)
      assert.truthy(err:find("^widened: the token expires at"), err)
      -- forge block 2 by hand with the holder's proof key: still refused
      local d = assert(token.decode(t))
      local seed = core.sign.random(32)
      local pk = core.sign.seed_keypair(seed)
      local p = json.encode({ caps = { "*" }, nk = core.sign.b64encode(pk) })
      local _, sk = core.sign.seed_keypair(d.proof)
      local sig = core.sign.sign("rduck-token-v1\0" .. "2\0" .. d.blocks[1].sig .. p, sk)
      local forged = t:gsub("%.[^.]+$", "") .. "." .. core.sign.b64encode(p) .. "." ..
        core.sign.b64encode(sig) .. "." .. core.sign.b64encode(seed)
      refused(forged, "widened: block 2 grants capability *, beyond block 1")
      -- a later expiry, or a new principal, is refused the same way
      p = json.encode({ exp = T10 + 99999, nk = core.sign.b64encode(pk) })
      sig = core.sign.sign("rduck-token-v1\0" .. "2\0" .. d.blocks[1].sig .. p, sk)
      forged = t:gsub("%.[^.]+$", "") .. "." .. core.sign.b64encode(p) .. "." ..
        core.sign.b64encode(sig) .. "." .. core.sign.b64encode(seed)
      refused(forged, "widened: block 2 expires after block 1")
      p = json.encode({ sub = "alice", nk = core.sign.b64encode(pk) })
      sig = core.sign.sign("rduck-token-v1\0" .. "2\0" .. d.blocks[1].sig .. p, sk)
      forged = t:gsub("%.[^.]+$", "") .. "." .. core.sign.b64encode(p) .. "." ..
        core.sign.b64encode(sig) .. "." .. core.sign.b64encode(seed)
      refused(forged, "widened: block 2 sets sub")
    end)

    it("refuses tampered, foreign-key, truncated, expired, not-yet-valid and malformed tokens", function()
      local t = issue({ principal = "tess", capabilities = { "fs.read" } })
      -- tampered: block 1's payload edited (caps widened), signature kept
      local d = assert(token.decode(t))
      local p = d.blocks[1].raw:gsub('"fs.read"', '"*"')
      local parts = {}
      for x in (t .. "."):gmatch("([^.]*)%.") do parts[#parts + 1] = x end
      parts[2] = core.sign.b64encode(p)
      refused(table.concat(parts, "."), "tampered: block 1's signature does not verify")
      -- tampered: one signature byte flipped
      parts = {}
      for x in (t .. "."):gmatch("([^.]*)%.") do parts[#parts + 1] = x end
      local sig = core.sign.b64decode(parts[3])
      parts[3] = core.sign.b64encode(string.char((sig:byte(1) + 1) % 256) .. sig:sub(2))
      refused(table.concat(parts, "."), "tampered: block 1's signature does not verify")
      -- foreign key: another data directory's key
      local other = assert(core.sign.key_load(H.tmpdir(), true))
      local ft = assert(token.issue(other, { principal = "tess", capabilities = { "*" }, ttl = 60, now = T10 }))
      refused(ft, "foreign key: signed by key " .. token.kid_of(other:public()) .. ", this engine trusts key " ..
        token.kid_of(key:public()))
      -- truncated: the attenuation block cut off, the old proof gone
      local a = assert(token.attenuate(t, { ttl = 60, now = T10 }))
      local ap = {}
      for x in (a .. "."):gmatch("([^.]*)%.") do ap[#ap + 1] = x end
      refused(table.concat({ ap[1], ap[2], ap[3], ap[6] }, "."), "truncated: the proof does not match")
      refused(table.concat({ ap[1], ap[2], ap[3], ap[4], ap[5] }, "."), "malformed: expected rd1.PAYLOAD")
      -- expired, not yet valid
      refused(issue({ principal = "tess", ttl = 60, now = T10 - 120 }), "expired: at 2026-11-26T09:59:00Z")
      refused(issue({ principal = "tess", not_before = 300 }), "not yet valid: valid from 2026-11-26T10:05:00Z")
      -- malformed
      refused("", "malformed: not a RubberDuck token")
      refused("rd2.a.b.c", "malformed: not a RubberDuck token")
      refused("rd1.!!!.AAAA.AAAA", "malformed: block 1's payload is not base64url")
      refused(string.rep("x", 20000), "malformed: longer than 16384 bytes")
      refused("rd1." .. core.sign.b64encode("[1]") .. "." .. core.sign.b64encode(string.rep("s", 64)) ..
        "." .. core.sign.b64encode(string.rep("k", 32)), "malformed: block 1's payload is not a JSON object")
    end)

    it("checks the audience", function()
      local t = issue({ principal = "tess", capabilities = { "fs.read" }, audience = "prod" })
      refused(t, "audience: the token is for prod; this engine has no audience name")
      local e = assert(rd.open({ tools = dir, data_dir = data, audience = "staging" }))
      e.auth.now = function() return T10 end
      local err = fails(e:execute("t_read", {}, { token = t }), "unauthorized")
      assert.truthy(err.message:find("audience: the token is for prod, not staging", 1, true), err.message)
      e:close()
      e = assert(rd.open({ tools = dir, data_dir = data, audience = "prod" }))
      e.auth.now = function() return T10 end
      assert.equals("ok", e:execute("t_read", {}, { token = t }).status)
      -- attenuation may narrow the audience, never widen it
      local a, aerr = token.attenuate(t, { audience = { "prod", "dev" }, now = T10 })
      assert.is_nil(a)
      assert.equals("widened: block 2 adds audience dev, beyond block 1", aerr)
      e:close()
    end)

    it("is accepted at the C API's entry (caller JSON) as well", function()
      local t = issue({ principal = "tess", capabilities = { "fs.read" } })
      local out, ok = engine:execute_json("t_read", "{}", H.encode({ token = t }))
      assert.is_true(ok, out)
      out, ok = engine:execute_json("t_write", "{}", H.encode({ token = t }))
      assert.is_false(ok)
      assert.equals("unauthorized", H.decode(out).error.kind)
    end)

    it("is never handed to the tool: ctx.caller has the principal and the token id", function()
      local e = H.open_engine(nil, { data_dir = data })
      e.auth.now = function() return T10 end
      local tdir = H.tmpdir()
      local f = H.write_tool(tdir, "who", H.tool_source({ name = "who",
        handler = "function(p, ctx) return { caller = json.encode(ctx.caller) } end" }))
      assert.is_true((e:load_tools(nil, { f })))
      local t = issue({ principal = "tess", capabilities = { "fs.read" } })
      local env = e:execute("who", {}, { token = t })
      assert.equals("ok", env.status, H.encode(env))
      local c = H.decode(env.output.caller)
      assert.equals("tess", c.principal)
      assert.truthy(c.token_id)
      assert.falsy(env.output.caller:find(t:sub(5, 40), 1, true))
      e:close()
    end)

    it("refuses every token in an engine that has no key", function()
      local t = issue({ principal = "tess" })
      local e = H.open_engine(dir)
      local err = fails(e:execute("t_open", {}, { token = t }), "unauthorized")
      assert.truthy(err.message:find("this engine has no token key", 1, true), err.message)
      e:close()
    end)
  end)

  describe("the decision cache", function()
    local engine
    before_each(function()
      engine = H.open_engine(dir, { policy = POLICY })
      engine.auth.now = function() return T10 end
    end)
    after_each(function() engine:close() end)

    it("counts hits and misses", function()
      local s0 = engine.auth:stats()
      engine:execute("t_read", {}, who("bob"))
      engine:execute("t_read", {}, who("bob"))
      engine:execute("t_read", {}, who("bob"))
      local s = engine.auth:stats()
      assert.equals(1, s.misses - s0.misses)
      assert.equals(2, s.hits - s0.hits)
    end)

    it("never lends a decision to another caller", function()
      local def = engine:tool("t_write")
      local A = engine.auth
      local bob = assert(authorizer.caller(who("bob")))
      local carol = assert(authorizer.caller(who("carol")))
      local carol_caps = assert(authorizer.caller({ principal = "carol", capabilities = { "fs.write" } }))
      local bob_bounded = assert(authorizer.caller({ principal = "bob", roles = { "reader" } }))
      for _ = 1, 3 do
        assert.is_true(A:check(def, bob, {}, "lua"))
        assert.is_false(A:check(def, carol, {}, "lua"))
        assert.is_true(A:check(def, carol_caps, {}, "lua"))
        assert.is_true(A:check(def, bob_bounded, {}, "lua"))
      end
      -- the reverse order on a fresh cache gives the same answers
      A:clear_cache()
      assert.is_false(A:check(def, carol, {}, "lua"))
      assert.is_true(A:check(def, bob, {}, "lua"))
    end)

    it("never lends a decision to another param value or entry point", function()
      local carol = who("carol")
      for _ = 1, 2 do
        assert.equals("ok", engine:execute("store", { action = "read" }, carol).status)
        fails(engine:execute("store", { action = "write" }, carol), "unauthorized")
        -- a param the decision does not read does not split the cache
        assert.equals("ok", engine:execute("store", { action = "read", key = tostring(math.random()) }, carol).status)
      end
      local bob = who("bob")
      for _ = 1, 2 do
        fails(engine:execute("shell", {}, bob, { entry = "cli" }), "unauthorized")
        assert.equals("ok", engine:execute("shell", {}, bob, { entry = "console" }).status)
      end
      -- an entry point the engine does not know is refused, never cached
      for _, bad in ipairs({ "ssh", 0 / 0, {}, 7 }) do
        local err = fails(engine:execute("t_open", {}, bob, { entry = bad }), "unauthorized")
        assert.truthy(err.message:find("unknown entry point", 1, true), err.message)
      end
      -- strange param values: tables, a missing value, NaN
      local A = engine.auth
      local def = engine:tool("store")
      local cc = assert(authorizer.caller(carol))
      for _ = 1, 2 do
        assert.is_false(A:check(def, cc, { action = "write" }, "lua"))
        assert.is_true(A:check(def, cc, { action = { "write" } }, "lua"))
        assert.is_true(A:check(def, cc, {}, "lua"))
        assert.is_true(A:check(def, cc, { action = 0 / 0 }, "lua"))
      end
    end)

    it("keys tokens by their id: an attenuated token does not borrow its parent's decision", function()
      local key = assert(engine.auth:key(true))
      local t = assert(token.issue(key, { principal = "tess", capabilities = { "fs.read", "fs.write" },
        ttl = 3600, now = T10 }))
      local a = assert(token.attenuate(t, { capabilities = { "fs.read" }, now = T10 }))
      for _ = 1, 2 do
        assert.equals("ok", engine:execute("t_write", {}, { token = t }).status)
        fails(engine:execute("t_write", {}, { token = a }), "unauthorized")
      end
    end)

    it("is emptied by a policy reload", function()
      local pdir = H.tmpdir()
      local f = policy_file(pdir, "return { principals = { bob = {} } }")
      assert.equals("ok", engine:execute("t_read", {}, who("bob")).status)
      assert.is_true(engine:reload_policy(f))
      assert.equals(0, engine.auth:stats().entries)
      fails(engine:execute("t_read", {}, who("bob")), "unauthorized")
      assert.is_true(engine:reload_policy(POLICY))
      assert.equals("ok", engine:execute("t_read", {}, who("bob")).status)
    end)

    it("hands out copies: a caller changing its denial changes nothing cached", function()
      local e1 = fails(engine:execute("t_write", {}, who("carol")), "unauthorized")
      e1.details.missing_capabilities[1] = "tampered"
      local e2 = fails(engine:execute("t_write", {}, who("carol")), "unauthorized")
      assert.same({ "fs.write" }, e2.details.missing_capabilities)
    end)

    it("expires entries after the policy's cache_ttl", function()
      local pdir = H.tmpdir()
      local f = policy_file(pdir, "return { anonymous = 'allow', cache_ttl = 0 }")
      assert.is_true(engine:reload_policy(f))
      engine:execute("t_open", {})
      engine:execute("t_open", {})
      local s = engine.auth:stats()
      assert.equals(0, s.hits)
      assert.equals(0, s.entries)
    end)
  end)

  describe("the command line", function()
    local cwd
    lazy_setup(function() cwd = H.tmpdir() end)

    local function run(args, stdin) return H.run_rduck(args, stdin, { cwd = cwd }) end

    it("runs with --policy, and refuses a bad one with exit 2", function()
      local _, err, code = run({ "run", "--tools", dir, "--policy", POLICY, "--as", "carol", "store", "action=write" })
      assert.equals(1, code)
      assert.equals("error: unauthorized: carol may not run store: missing capabilities fs.write\n", err)
      _, err, code = run({ "run", "--tools", dir, "--policy", POLICY, "--as", "carol", "store", "action=read" })
      assert.equals(0, code, err)
      local bad = policy_file(cwd, "return { roles = { a = { inherits = { 'a' } } } }", "bad.lua")
      _, err, code = run({ "run", "--tools", dir, "--policy", bad, "--as", "carol", "t_open" })
      assert.equals(2, code)
      assert.truthy(err:find(bad .. ": roles.a.inherits: inheritance cycle a -> a", 1, true), err)
    end)

    it("checks a policy file with rduck check --policy", function()
      local out, err, code = run({ "check", "--policy", POLICY })
      assert.equals(0, code, err)
      assert.equals("ok: policy " .. POLICY .. "\n", out)
      local bad = policy_file(cwd, "return { rules = { { name = 'x', require = { entry = { 'web' } } } } }", "bad2.lua")
      _, err, code = run({ "check", "--policy", bad })
      assert.equals(2, code)
      assert.equals(bad .. ': rules[1].require.entry[1]: expected an entry point (cli, repl, lua, c, http, console), got "web"\n', err)
    end)

    it("loads the policy into the repl", function()
      local out, err, code = run({ "repl", "--tools", dir, "--policy", POLICY },
        "return engine.auth:stats().policy\nreturn engine:execute('t_write', {}, { principal = 'carol' }).error.kind\n")
      assert.equals(0, code, err)
      assert.truthy(out:find(POLICY, 1, true), out)
      assert.truthy(out:find('"unauthorized"', 1, true), out)
    end)

    it("issues, attenuates, inspects and runs with tokens", function()
      local t, err, code = run({ "token", "issue", "--principal", "tess", "--caps", "fs.read,fs.write",
        "--ttl", "1h", "--data", "d" })
      assert.equals(0, code, err)
      t = t:gsub("%s+$", "")
      assert.truthy(t:match("^rd1%."))
      local mode = io.popen("stat -c %a " .. H.shell_quote(cwd .. "/d/token.key")):read("*a")
      assert.equals("600\n", mode)
      local a
      a, err, code = run({ "token", "attenuate", t, "--caps", "fs.read", "--ttl", "10m" })
      assert.equals(0, code, err)
      a = a:gsub("%s+$", "")
      local out
      out, err, code = run({ "token", "inspect", a, "--data", "d" })
      assert.equals(0, code, err)
      local info = H.decode(out)
      assert.equals("ok", info.verified)
      assert.equals(2, #info.blocks)
      assert.same({ "fs.read" }, info.effective.capabilities)
      _, err, code = run({ "run", "--tools", dir, "--data", "d", "--token", a, "t_read" })
      assert.equals(0, code, err)
      _, err, code = run({ "run", "--tools", dir, "--data", "d", "--token", a, "t_write" })
      assert.equals(1, code)
      assert.equals("error: unauthorized: tess may not run t_write: missing capabilities fs.write\n", err)
      H.write_file(cwd .. "/tok", t .. "\n")
      _, err, code = run({ "run", "--tools", dir, "--data", "d", "--token", "@tok", "t_write" })
      assert.equals(0, code, err)
      _, err, code = run({ "run", "--tools", dir, "--data", "d", "--token", "-", "t_write" }, t)
      assert.equals(0, code, err)
      -- widened and tampered
      _, err, code = run({ "token", "attenuate", a, "--caps", "fs.write" })
      assert.equals(1, code)
      assert.equals("rduck token: widened: block 3 grants capability fs.write, beyond block 2\n", err)
      local parts = {}
      for x in (t .. "."):gmatch("([^.]*)%.") do parts[#parts + 1] = x end
      local raw = core.sign.b64decode(parts[2]):gsub('"tess"', '"root"')
      parts[2] = core.sign.b64encode(raw)
      _, err, code = run({ "run", "--tools", dir, "--data", "d", "--token", table.concat(parts, "."), "t_read" })
      assert.equals(1, code)
      assert.truthy(err:find("token refused: tampered: block 1's signature does not verify", 1, true), err)
      -- a token states the caller alone
      _, err, code = run({ "run", "--tools", dir, "--data", "d", "--token", t, "--as", "x", "t_read" })
      assert.equals(2, code)
      assert.truthy(err:find("--token states the caller", 1, true), err)
      _, err, code = run({ "token", "issue", "--principal", "x", "--ttl", "forever" })
      assert.equals(2, code)
      assert.truthy(err:find("--ttl: expected a duration", 1, true), err)
    end)
  end)
end)
