-- The daemon's routes as async calls. Every callback is `cb(err, data)` on the main loop;
-- `err` is nil or { message, status?, code?, type?, kind? } with the daemon's own message.
local http = require('endorm.http')
local config = require('endorm.config')

local M = {}

local function decode(body)
  if body == nil or body == '' then
    return nil
  end
  local ok, data = pcall(vim.json.decode, body)
  if ok then
    return data
  end
  return nil
end

--- Send a request; body is a Lua table (JSON-encoded) or nil.
--- opts: { socket?, timeout_ms? }. Returns a handle with :cancel().
function M.request(method, path, body, opts, cb)
  opts = opts or {}
  local socket = opts.socket or config.socket()
  local payload
  if body ~= nil then
    local ok, enc = pcall(vim.json.encode, body)
    if not ok then
      vim.schedule(function()
        cb({ kind = 'input', message = 'cannot encode the request as JSON: ' .. tostring(enc) })
      end)
      return { cancel = function() end }
    end
    payload = enc
  end
  local timeout = opts.timeout_ms or config.get().timeout_ms
  return http.request(socket, method, path, payload, { timeout_ms = timeout }, function(err, resp)
    if err then
      return cb(err)
    end
    local data = decode(resp.body)
    if resp.status < 200 or resp.status >= 300 then
      local e = type(data) == 'table' and type(data.error) == 'table' and data.error or {}
      local msg = type(e.message) == 'string' and e.message or (resp.body ~= '' and resp.body or resp.reason)
      return cb({
        kind = 'http',
        status = resp.status,
        code = e.code,
        type = e.type,
        message = ('endorm: %s (HTTP %d)'):format(msg, resp.status),
        daemon_message = msg,
        retry_after = resp.headers['retry-after'],
      })
    end
    if data == nil then
      return cb({ kind = 'protocol', message = 'endorm answered with a body that is not JSON' })
    end
    cb(nil, data, resp)
  end)
end

function M.health(opts, cb)
  return M.request('GET', '/health', nil, opts, cb)
end

function M.models(opts, cb)
  return M.request('GET', '/v1/models', nil, opts, cb)
end

--- POST /v1/score. `req` is the API body; `model`, `aggregate` and `alpha` default from setup().
function M.score(req, opts, cb)
  local o = config.get()
  local body = vim.deepcopy(req)
  if body.model == nil then
    body.model = o.model
  end
  if body.aggregate == nil then
    body.aggregate = o.aggregate
  end
  if body.alpha == nil then
    body.alpha = o.alpha
  end
  return M.request('POST', '/v1/score', body, opts, cb)
end

--- Run an async call and wait for it (blocking, with a timeout). Only for :checkhealth and tests.
--- Returns err, data.
function M.wait(fn, timeout_ms, ...)
  local got, e, d = false, nil, nil
  local n = select('#', ...)
  local args = { ... }
  args[n + 1] = function(err, data)
    got, e, d = true, err, data
  end
  fn(unpack(args, 1, n + 1))
  local limit = (timeout_ms or config.get().timeout_ms) + 500
  vim.wait(limit, function()
    return got
  end, 10)
  if not got then
    return { kind = 'timeout', message = 'no answer from endorm within ' .. limit .. ' ms' }
  end
  return e, d
end

return M
