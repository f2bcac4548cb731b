"""The hostile-world suite: each module attacks one boundary of the worker (Flexperto, its
storage host, Total Expert, the webhook, the filesystem, the state file, other local users)
with servers and files that misbehave on purpose, on loopback. The threat model
(docs/security.md) names the test of each row."""
