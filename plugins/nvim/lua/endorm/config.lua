-- Options and their defaults. `require('endorm').setup(opts)` deep-merges `opts` over these.
local M = {}

M.defaults = {
  -- Unix socket of `endorm serve`. nil: $ENDORM_SOCKET, else $XDG_RUNTIME_DIR/endorm/endorm.sock,
  -- else ~/.cache/endorm/endorm.sock (the daemon's own default).
  socket = nil,
  -- Per-request timeout for commands (:EndormRerank, :EndormLens, :checkhealth).
  timeout_ms = 10000,
  -- Model id; nil: the daemon's default model.
  model = nil,
  -- Response-level score used to order alternatives: endo | endo_mean | logprob | logprob_mean | endo_lc.
  aggregate = 'endo_mean',
  -- Soft-Q temperature; nil: the daemon's default (1.0).
  alpha = nil,
  -- At most this many characters of text before the cursor/selection are sent as the context.
  context_chars = 4000,
  completion = {
    -- Scores that arrive later than this after the menu's items do not reorder it; the original
    -- order stands. 0 disables scoring (no request is sent).
    budget_ms = 300,
    -- Context sent with completion requests (characters before the word being completed).
    context_chars = 1500,
    -- At most this many items are scored per menu.
    max_items = 40,
    aggregate = 'endo_mean',
    -- Scores kept (per prefix and item text) before the cache is dropped.
    cache_size = 2000,
  },
  rerank = {
    -- How a selection is split into alternatives: 'auto' (blank-line-separated blocks when the
    -- selection has a blank line, else one alternative per line), 'lines' or 'blocks'.
    split = 'auto',
  },
  lens = {
    -- Per-token value that colours the text: 'reward' (r_t = Q - V_next) or 'logprob'.
    metric = 'reward',
    -- Number of colour levels (highlight groups EndormLens1 = most surprising .. EndormLensN).
    levels = 5,
  },
}

M.options = vim.deepcopy(M.defaults)

function M.set(opts)
  M.options = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts or {})
  return M.options
end

function M.get()
  return M.options
end

--- The socket path the plugin talks to.
function M.socket()
  if M.options.socket and M.options.socket ~= '' then
    return vim.fn.expand(M.options.socket)
  end
  local env = vim.env.ENDORM_SOCKET
  if env and env ~= '' then
    return env
  end
  local rt = vim.env.XDG_RUNTIME_DIR
  if rt and rt ~= '' then
    return rt .. '/endorm/endorm.sock'
  end
  local home = vim.env.HOME or vim.fn.expand('~')
  if vim.fn.has('mac') == 1 then
    return home .. '/Library/Caches/endorm/endorm.sock'
  end
  return (vim.env.XDG_CACHE_HOME or (home .. '/.cache')) .. '/endorm/endorm.sock'
end

return M
