-- files: reads, writes, lists and inspects files under /tmp through the
-- sandbox's fs API. Paths are resolved beneath the allowed directory by the
-- kernel: "..", symlinks pointing out and absolute paths elsewhere end in
-- sandbox_violation.
return tool {
  metadata = {
    name = "files",
    description = "Read, write, list, stat and remove files under /tmp",
    version = "1.0.0",
    tags = { "fs" },
    examples = {
      { params = { action = "mkdir", path = "/tmp/rduck-demo" }, output = { ok = true } },
      { params = { action = "write", path = "/tmp/rduck-demo/hello.txt", content = "hello, duck\n" },
        output = { ok = true, bytes = 12 } },
      { params = { action = "read", path = "/tmp/rduck-demo/hello.txt" },
        output = { ok = true, content = "hello, duck\n" } },
      { params = { action = "list", path = "/tmp/rduck-demo" },
        output = { ok = true, entries = { { name = "hello.txt", type = "file", size = 12 } } } },
      { params = { action = "remove", path = "/tmp/rduck-demo/hello.txt" }, output = { ok = true } },
      { params = { action = "read", path = "/etc/passwd" }, error = "sandbox_violation",
        description = "outside allowed_paths" },
      { params = { action = "read", path = "/tmp/../etc/passwd" }, error = "sandbox_violation",
        description = "climbing out with .." },
    },
  },
  parameters = {
    type = "object",
    properties = {
      action = { enum = { "read", "write", "list", "stat", "remove", "mkdir" } },
      path = { type = "string", minLength = 1, maxLength = 4096 },
      content = { type = "string" },
      max_bytes = { type = "integer", minimum = 1 },
    },
    required = { "action", "path" },
    additionalProperties = false,
  },
  constraints = {
    function(p) return not p.path:find("\0", 1, true), "/path: contains a NUL byte" end,
    function(p) return p.action ~= "write" or p.content ~= nil, "/content: required to write" end,
  },
  -- Reading needs fs.read; changing anything needs fs.write too.
  capabilities = { "fs.read" },
  requires = {
    { when = { action = { "write", "remove", "mkdir" } }, capabilities = { "fs.write" } },
  },
  security = {
    level = "relaxed",
    allowed_paths = { "/tmp" },
    max_file_size = 1048576,
  },
  execution = {
    timeout = 5000,
    handler = function(p)
      local a = p.action
      if a == "read" then
        return { ok = true, content = assert(fs.read(p.path, { max_bytes = p.max_bytes })) }
      elseif a == "write" then
        assert(fs.write(p.path, p.content))
        return { ok = true, bytes = #p.content }
      elseif a == "list" then
        return { ok = true, entries = assert(fs.list(p.path)) }
      elseif a == "stat" then
        return { ok = true, stat = assert(fs.stat(p.path)) }
      elseif a == "remove" then
        return { ok = assert(fs.remove(p.path)) }
      else
        return { ok = assert(fs.mkdir(p.path, { parents = true })) }
      end
    end,
  },
}
