"""The operator's commands over the state file and the services: check, status,
history, export, config show, metrics, and the commands' manual."""
