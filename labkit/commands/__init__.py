"""The `labkit` subcommands, one module per group: each adds its parser (from cheap imports only, so `labkit
--help` answers at once) and runs by calling the public API, which it imports when it runs."""
