-- Set-up for the human-pace typing test: editor-configs/neovim against the real server, the document open; the test
-- drives this Neovim over its --listen socket as a writer's keyboard would and reads the globals below.
local args = vim.json.decode(os.getenv('TINYMORPH_NVIM_TEST'))
vim.opt.rtp:prepend(args.config)
vim.cmd('filetype on')
vim.cmd('runtime plugin/tinymorph.lua')
local tm = require('tinymorph')
tm.setup({
  cmd = { args.python, '-m', 'lsp_server' },
  init_options = { model = args.model, sae = args.sae, device = 'cpu', debounceMs = 50, maxTokens = 6 },
})
vim.cmd.edit(args.doc)

-- true once the server is attached and its model loaded
function _G.tm_ready()
  local client = vim.lsp.get_clients({ bufnr = 0, name = 'tinymorph' })[1]
  if not client then return false end
  local r = client:request_sync('workspace/executeCommand',
    { command = 'tinymorph.status', arguments = { vim.empty_dict() } }, 2000, 0)
  return r ~= nil and r.result ~= nil and r.result.state == 'ready'
end

-- the ghost text on screen (the inline completion's extmarks), '' when none
function _G.tm_ghost()
  local ns = vim.api.nvim_create_namespace('nvim.lsp.inline_completion')
  local parts = {}
  for _, mark in ipairs(vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, { details = true })) do
    for _, chunk in ipairs(mark[4].virt_text or {}) do table.insert(parts, chunk[1]) end
  end
  return table.concat(parts)
end

-- the buffer's text and the mode
function _G.tm_state()
  return { text = table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), '\n'), mode = vim.api.nvim_get_mode().mode }
end
