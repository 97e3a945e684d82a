"""The paper-reproduction study: its protocol (grid, paper numbers, run identity), the runner
that trains and resumes it, the report (tables, plots) and the BN statistics diagnostic."""
