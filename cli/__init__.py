"""The `stagechat` command, on top of everything: one module per subcommand, each parsing its flags,
calling one function of `server/` or `models/`, and printing the result or the error.

Nothing in `server/`, `models/` or `ui/` imports this package; they return results and raise.
"""
