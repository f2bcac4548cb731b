"""Flexperto, the source of archives: ``records`` (what an archive record is, and the gate
untrusted records pass) and ``client`` (the HTTP API)."""
