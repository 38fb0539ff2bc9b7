-- :checkhealth endorm — socket, daemon and model. Blocks for at most timeout_ms per request
-- (checkhealth is synchronous by design).
local M = {}

local function reporter()
  local h = vim.health
  if not (h and (h.start or h.report_start)) then
    h = require('health') -- Neovim 0.7
  end
  return {
    start = h.start or h.report_start,
    ok = h.ok or h.report_ok,
    info = h.info or h.report_info,
    warn = h.warn or h.report_warn,
    error = h.error or h.report_error,
  }
end

function M.check()
  local r = reporter()
  local config = require('endorm.config')
  local client = require('endorm.client')
  local http = require('endorm.http')
  local sorter = require('endorm.sorter')
  local o = config.get()

  r.start('endorm: socket')
  local v = vim.version()
  r.info(('Neovim %d.%d.%d, %s'):format(v.major, v.minor, v.patch, vim.uv and 'vim.uv' or 'vim.loop'))
  local sock = config.socket()
  local st = http.uv.fs_stat(sock)
  if not st then
    r.error(('no socket at %s'):format(sock), {
      'start the daemon: endorm serve' .. (o.socket and (' --socket ' .. sock) or ''),
      "or point the plugin at it: require('endorm').setup({ socket = '/path/to/endorm.sock' })",
    })
    return
  elseif st.type ~= 'socket' then
    r.error(('%s exists but is a %s, not a socket'):format(sock, st.type))
    return
  end
  r.ok('socket: ' .. sock)

  r.start('endorm: daemon')
  local timeout = math.min(o.timeout_ms, 5000)
  local err, health = client.wait(client.health, timeout, { timeout_ms = timeout })
  if err then
    r.error('no answer to GET /health: ' .. err.message, { 'is `endorm serve` running on this socket?' })
    return
  end
  if health.status == 'ok' then
    r.ok('daemon: status ok')
  elseif health.status == 'loading' then
    r.warn('daemon: models are still loading; try again in a moment')
  else
    r.warn('daemon: status ' .. tostring(health.status))
  end
  if health.config_error and health.config_error ~= vim.NIL then
    r.warn('daemon config error: ' .. tostring(health.config_error))
  end

  r.start('endorm: model')
  local merr, models = client.wait(client.models, timeout, { timeout_ms = timeout })
  if merr then
    r.error('GET /v1/models failed: ' .. merr.message)
    return
  end
  local found_configured = o.model == nil
  local default_id
  for _, m in ipairs(models.data or {}) do
    local meta = type(m.meta) == 'table' and m.meta or {}
    local desc = ('model %s: %s%s'):format(
      m.id,
      tostring(m.state or 'unknown'),
      m.default and ', default' or ''
    )
    local details = {}
    if meta.n_params and meta.n_params ~= vim.NIL then
      details[#details + 1] = ('%.0fM params'):format(meta.n_params / 1e6)
    end
    if meta.n_ctx and meta.n_ctx ~= vim.NIL then
      details[#details + 1] = 'n_ctx ' .. meta.n_ctx
    end
    if meta.file and meta.file ~= vim.NIL then
      details[#details + 1] = tostring(meta.file)
    end
    if #details > 0 then
      desc = desc .. ' (' .. table.concat(details, ', ') .. ')'
    end
    if m.state == 'ready' or m.state == nil then
      r.ok(desc)
    else
      r.warn(desc)
    end
    if m.default then
      default_id = m.id
    end
    if o.model == m.id then
      found_configured = true
    end
  end
  if #(models.data or {}) == 0 then
    r.error('the daemon serves no model', { 'start it with --model /path/to/model.gguf' })
  end
  if not found_configured then
    r.error(('setup() names model %q, which the daemon does not serve'):format(o.model))
  else
    r.info('the plugin uses model: ' .. (o.model or (default_id and (default_id .. ' (daemon default)')) or 'daemon default'))
  end

  r.start('endorm: completion sorter')
  if (o.completion.budget_ms or 0) <= 0 then
    r.info('completion scoring is off (completion.budget_ms = 0)')
  else
    r.info(
      ('budget %d ms, %d requests, %d items scored, %d late, %d failed'):format(
        o.completion.budget_ms,
        sorter.stats.requests,
        sorter.stats.scored,
        sorter.stats.late,
        sorter.stats.errors
      )
    )
    if sorter.last_error then
      r.warn('last completion error: ' .. sorter.last_error)
    end
  end
end

return M
