#!/bin/bash
# An MCP client in a few lines of shell, for the systemd tier: it starts `toolbox mcp` (as the
# user running this), initializes a session, calls the `run` tool once with the command in
# $1, and prints the answer to that call (one JSON-RPC line). Every read is bounded.
set -u
coproc MCP { exec toolbox mcp --workspace "$HOME"; }
send() { printf '%s\n' "$1" >&"${MCP[1]}"; }
send '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"vmtest","version":"1"}}}'
read -r -t 60 line <&"${MCP[0]}" || { echo "no answer to initialize" >&2; exit 1; }
send '{"jsonrpc":"2.0","method":"notifications/initialized"}'
command=$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')
send '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"run","arguments":{"command":"'"$command"'"}}}'
status=1
while read -r -t 120 line <&"${MCP[0]}"; do
    case "$line" in *'"id":2'*) echo "$line"; status=0; break ;; esac
done
exec {MCP[1]}>&-
wait
exit $status
