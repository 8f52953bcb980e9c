-- primes: counts the primes below n with a sieve. CPU-bound: shows the
-- CPU budget (security.max_cpu) ending a call that asks for too much.
return tool {
  metadata = {
    name = "primes",
    description = "Count the primes below n (sieve of Eratosthenes) and return the largest",
    version = "1.0.0",
    tags = { "example", "cpu" },
    examples = {
      { params = { n = 100 }, output = { count = 25, largest = 97 } },
      { params = { n = 1000000 }, output = { count = 78498, largest = 999983 } },
      { params = { n = 2 }, output = { count = 0 } },
      { params = { n = 1e12, method = "trial" }, error = "cpu_limit",
        description = "trial division up to 10^12 spends the 500 ms CPU budget" },
    },
  },
  parameters = {
    type = "object",
    properties = {
      n = { type = "integer", minimum = 0, maximum = 1e15 },
      method = { enum = { "sieve", "trial" }, default = "sieve" },
    },
    required = { "n" },
    additionalProperties = false,
  },
  constraints = {
    function(p)
      return p.method ~= "sieve" or p.n <= 5e7, "/n: the sieve is limited to 50000000"
    end,
  },
  security = { level = "relaxed", max_cpu = 500, max_memory = 512 * 1024 * 1024 },
  execution = {
    timeout = 10000,
    handler = function(p)
      local n = p.n
      local count, largest = 0, nil
      if p.method == "trial" then
        for i = 2, n - 1 do
          local prime = true
          for d = 2, math.floor(math.sqrt(i)) do
            if i % d == 0 then prime = false; break end
          end
          if prime then count = count + 1; largest = i end
        end
      else
        local composite = {}
        for i = 2, n - 1 do
          if not composite[i] then
            count = count + 1
            largest = i
            for j = i * i, n - 1, i do composite[j] = true end
          end
        end
      end
      return { count = count, largest = largest }
    end,
  },
}
