-- tinymorph language server: feature hints, hover, steering actions and steered completions for prose.
--
-- Neovim >= 0.11:   vim.lsp.enable('tinymorph')          (this file is found on 'runtimepath' as lsp/tinymorph.lua)
-- nvim-lspconfig:   recent versions read lsp/*.lua the same way; for the older setup{} interface see the README
--                   (register this table under lspconfig.configs with a root_dir).
-- Override fields with vim.lsp.config('tinymorph', { cmd = { '/path/to/.venv/bin/tinymorph', 'serve' } }).
return {
  cmd = { 'tinymorph', 'serve' },
  filetypes = { 'markdown', 'text' },
  root_markers = { '.tinymorph', '.git' },
  -- Neovim names plain text 'text'; the protocol calls it 'plaintext'.
  get_language_id = function(_, filetype)
    return filetype == 'text' and 'plaintext' or filetype
  end,
  -- Sent at start-up; the same keys can live under settings.tinymorph (see the README's configuration table).
  init_options = {
    model = 'default',
    sae = 'default',
    hintGranularity = 'paragraph',
    hintCount = 3,
    suggestion = true,
  },
  settings = { tinymorph = vim.empty_dict() },
}
