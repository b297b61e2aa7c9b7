"""The `unlearnd` command line: core commands (demo-model, unlearn) and service/client commands."""
