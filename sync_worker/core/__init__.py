"""What every layer uses: the clock, the error tree, logging, private files, locks,
progress, what may be trusted of a peer's text, and how each service is reached."""
