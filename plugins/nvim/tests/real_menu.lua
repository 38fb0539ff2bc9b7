-- Child of run.lua: a real nvim-cmp or blink.cmp menu, sorted by endorm's real scores.
-- Env: ENDORM_TEST_SOCKET, ENDORM_TEST_MENU ('cmp' | 'blink'), NVIM_CMP_DIR / BLINK_CMP_DIR.
-- Prints "ORDER before=<words> after=<words>" and exits 0 when the menu was re-sorted.
local script = debug.getinfo(1, 'S').source:sub(2)
local here = vim.fn.fnamemodify(script, ':p:h')
vim.opt.runtimepath:prepend(here .. '/fixtures')
vim.opt.runtimepath:prepend(vim.fn.fnamemodify(here, ':h'))
vim.cmd('runtime plugin/endorm.lua')
local which = vim.env.ENDORM_TEST_MENU
local PROMPT = 'The capital of France is '
local out = io.stderr

require('endorm').setup({ socket = vim.env.ENDORM_TEST_SOCKET, completion = { budget_ms = 30000 } })
local sorter = require('endorm.sorter')

local show, words, visible
if which == 'cmp' then
  vim.opt.runtimepath:prepend(vim.env.NVIM_CMP_DIR)
  vim.cmd('runtime plugin/cmp.lua')
  local cmp = require('cmp')
  local src = {}
  function src:complete(_, callback)
    callback({ { label = 'banana' }, { label = 'Paris' }, { label = 'mostly' } })
  end
  cmp.register_source('fixed', setmetatable({}, { __index = src }))
  cmp.setup({
    sources = { { name = 'fixed' } },
    sorting = { comparators = { require('endorm.cmp').comparator, cmp.config.compare.order } },
  })
  show = cmp.complete
  visible = cmp.visible
  words = function()
    return vim.tbl_map(function(e)
      return e:get_word()
    end, cmp.get_entries())
  end
else
  vim.opt.runtimepath:prepend(vim.env.BLINK_CMP_DIR)
  local blink = require('blink.cmp')
  blink.setup({
    fuzzy = { implementation = 'lua', sorts = { require('endorm.blink').sort, 'score', 'sort_text' } },
    sources = { default = { 'fixed' }, providers = { fixed = { name = 'fixed', module = 'endorm_fixed_source' } } },
  })
  local list = require('blink.cmp.completion.list')
  show = blink.show
  visible = blink.is_menu_visible
  words = function()
    return vim.tbl_map(function(i)
      return i.label
    end, list.items)
  end
end

vim.api.nvim_buf_set_lines(0, 0, -1, false, { PROMPT })
vim.cmd('startinsert!')
-- Insert mode starts once this script returns to the main loop.
vim.defer_fn(function()
  show()
  vim.wait(5000, function()
    return visible() and #words() > 0
  end)
  local before = table.concat(words(), ',')
  vim.wait(30000, function()
    return sorter.score_of(PROMPT, 'Paris') ~= nil
  end)
  vim.wait(5000, function()
    return visible() and words()[1] == 'Paris'
  end)
  local after = table.concat(words(), ',')
  out:write(('ORDER before=%s after=%s scores=%s\n'):format(before, after, vim.inspect(sorter.cache[PROMPT])))
  vim.cmd(after:match('^Paris') and before ~= after and 'qall!' or 'cquit 1')
end, 50)
