#!/bin/sh
# The local loop: build the plugin (componentize-py) and the packages, then
# check the plugin with `posup plugin test` against copies of fixture/ (every
# case: an update, a declined one, a kill at each step boundary, a failure after
# each step), and the broken package rolled back. POSUP names the posup binary
# (default: posup).
set -eu
cd "$(dirname "$0")"
POSUP=${POSUP:-posup}
TARGET=${TARGET:-target}
mkdir -p "$TARGET"
componentize-py -d wit -w plugin componentize app -o "$TARGET/{{crate}}.wasm"
"$POSUP" package build packages --out "$TARGET/packages"
# Verify waits for the service to keep running for `{{name}}-settle-secs`
# seconds (10 on a terminal); 2 keep the loop quick.
"$POSUP" plugin test "$TARGET/{{crate}}.wasm" \
    --package "$TARGET/packages/{{name}}-1.1.0.tar.gz" \
    --broken "$TARGET/packages/{{name}}-1.2.0.tar.gz" \
    --fixture fixture --device-config device.toml \
    --var {{name}}-settle-secs=2
