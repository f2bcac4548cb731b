"""What runs the work: one pass (runner), the daemon (scheduler), the demo and sandbox,
and the command line."""
