#!/usr/bin/env bash
# Installs code-server (VS Code for the web) from the npm registry alone, builds its native modules from source
# (github.com is not needed), and packages the extension into $TOOLS/tinymorph.vsix. Re-runnable; see README.md.
set -euo pipefail
TOOLS=$(realpath -m "${TOOLS:-/tmp/tinymorph-e2e-tools}")
CODE_SERVER_VERSION=${CODE_SERVER_VERSION:-4.100.3}  # the last code-server line whose engines.node is 20
EXTENSION=$(cd "$(dirname "$0")/.." && pwd)
export npm_config_yes=true  # node-pty's postinstall runs `npx node-gyp`

command -v rg >/dev/null || { echo "needs ripgrep on PATH (apt-get install ripgrep)" >&2; exit 1; }
mkdir -p "$TOOLS/code-server"
cd "$TOOLS/code-server"
[ -f package.json ] || npm init -y >/dev/null
# code-server's own postinstall downloads ripgrep from github.com, so skip the scripts and do its steps here
npm install --no-audit --no-fund --ignore-scripts "code-server@$CODE_SERVER_VERSION"
npm rebuild argon2
cd node_modules/code-server/lib/vscode
npm install --no-audit --no-fund --omit=dev --ignore-scripts
npm rebuild kerberos @parcel/watcher @vscode/spdlog @vscode/deviceid native-watchdog node-pty
mkdir -p node_modules/@vscode/ripgrep/bin
ln -sf "$(command -v rg)" node_modules/@vscode/ripgrep/bin/rg
ln -sfn node_modules node_modules.asar
(cd bin/remote-cli && ln -sfn code-linux.sh code-server)
(cd bin/helpers && ln -sfn browser-linux.sh browser.sh)
(cd extensions && npm install --no-audit --no-fund --omit=dev)
XDG_DATA_HOME="$TOOLS/xdg-data" "$TOOLS/code-server/node_modules/.bin/code-server" --config /dev/null --version

# the extension, built and packaged the way tests/editors/test_vscode.py does it, outside the checkout
rm -rf "$TOOLS/extension" && mkdir -p "$TOOLS/extension"
(cd "$EXTENSION" && tar --exclude=node_modules --exclude=out --exclude='*.vsix' --exclude=e2e -cf - .) \
  | tar -xf - -C "$TOOLS/extension"
cd "$TOOLS/extension"
npm ci --no-audit --no-fund
npm run compile
npm run package
cp tinymorph.vsix "$TOOLS/tinymorph.vsix"
echo "code-server: $TOOLS/code-server/node_modules/.bin/code-server"
echo "extension:   $TOOLS/tinymorph.vsix"
