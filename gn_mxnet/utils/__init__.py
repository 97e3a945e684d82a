"""Small shared utilities with no MXNet in them: crash-safe files, CSV tables, PNG plots and
progress bars, used by every layer above the operator."""
