-- endorm.nvim: rewards from a local endorm daemon in Neovim.
--   require('endorm').setup({ socket = ..., timeout_ms = ..., model = ..., ... })
-- Options and defaults: lua/endorm/config.lua (and README.md).
local M = {}

function M.setup(opts)
  local config = require('endorm.config')
  config.set(opts)
  require('endorm.sorter').clear()
  require('endorm.lens').define_highlights()
  return config.get()
end

--- POST /v1/score with the plugin's socket and defaults; cb(err, data) on the main loop.
function M.score(req, cb)
  return require('endorm.client').score(req, {}, cb)
end

M.rerank = function(...)
  return require('endorm.rerank').run(...)
end

M.lens = function(...)
  return require('endorm.lens').run(...)
end

return M
