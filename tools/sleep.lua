-- sleep: waits, interruptibly. Shows timeouts and cancellation: a call
-- longer than execution.timeout ends in `timeout`, long before it would
-- have woken.
return tool {
  metadata = {
    name = "sleep",
    description = "Wait for the given number of milliseconds, reporting progress",
    version = "1.0.0",
    tags = { "example", "time" },
    examples = {
      { params = { ms = 20 }, output = { slept_ms = 20 } },
      { params = { ms = 60000 }, error = "timeout", description = "longer than the 300 ms timeout" },
    },
  },
  parameters = {
    type = "object",
    properties = {
      ms = { type = "number", minimum = 0, maximum = 3600000 },
      steps = { type = "integer", minimum = 1, maximum = 1000, default = 4 },
    },
    required = { "ms" },
    additionalProperties = false,
  },
  security = { level = "relaxed" },
  execution = {
    timeout = 300,
    handler = function(p, ctx)
      local step = p.ms / p.steps
      for i = 1, p.steps do
        ctx.sleep(step)
        ctx.progress(i, p.steps, string.format("slept %.0f of %.0f ms", step * i, p.ms))
      end
      return { slept_ms = p.ms }
    end,
  },
}
