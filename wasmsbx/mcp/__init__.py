"""``wasmsbx mcp``: a Model Context Protocol server through which AI agents run code safely.

Layers: config (the server's limits, tightening), sessions, pool + worker (guests run in
worker processes), guest (the interpreter bootstraps), service (admission and accounting,
no SDK), tools (the MCP tools, needs the ``mcp`` extra), serve (stdio / HTTP),
interpreters (the pinned interpreter wheels and ``wasmsbx mcp setup``).
"""
