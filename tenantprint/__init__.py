"""The `tenantprint` command: one entry point, a subcommand per part of the system."""
