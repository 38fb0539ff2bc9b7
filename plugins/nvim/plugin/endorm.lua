-- Commands of endorm.nvim. Nothing here talks to the daemon until a command runs.
if vim.g.loaded_endorm then
  return
end
vim.g.loaded_endorm = true

-- A failure inside a command is reported as a message, never as a Lua traceback.
local function safe(fn)
  return function(args)
    local ok, err = pcall(fn, args)
    if not ok then
      vim.notify('endorm: ' .. tostring(err), vim.log.levels.ERROR, { title = 'endorm' })
    end
  end
end

vim.api.nvim_create_user_command('EndormRerank', safe(function(args)
  if args.range == 0 then
    vim.notify('endorm: select the alternatives first (V, then :EndormRerank)', vim.log.levels.WARN)
    return
  end
  require('endorm.rerank').run(0, args.line1, args.line2, { show_only = args.bang })
end), {
  range = true,
  bang = true,
  desc = 'endorm: order the selected alternatives best-first (! only shows the scores)',
})

vim.api.nvim_create_user_command('EndormLens', safe(function(args)
  local lens = require('endorm.lens')
  local sub = vim.trim(args.args or '')
  if sub == 'clear' then
    return lens.clear(0)
  end
  if sub == 'toggle' and lens.active(0) then
    return lens.clear(0)
  end
  if sub ~= '' and sub ~= 'toggle' then
    vim.notify('endorm: :EndormLens takes no argument, `clear` or `toggle`', vim.log.levels.WARN)
    return
  end
  lens.run(0, args.line1, args.line2, args.range > 0)
end), {
  range = true,
  nargs = '?',
  complete = function()
    return { 'clear', 'toggle' }
  end,
  desc = 'endorm: colour the selection by per-token reward (clear | toggle)',
})

vim.api.nvim_create_autocmd('ColorScheme', {
  group = vim.api.nvim_create_augroup('endorm_highlights', { clear = true }),
  callback = function()
    require('endorm.lens').define_highlights()
  end,
})
require('endorm.lens').define_highlights()
