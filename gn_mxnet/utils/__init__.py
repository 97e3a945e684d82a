"""Small shared utilities with no MXNet in them: crash-safe files, CSV tables, PNG plots,
progress bars and the scripts' argument checks (cli), used by every layer above the operator."""
