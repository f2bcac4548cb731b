"""One adapter per external system: HTTP shared by the API clients, Flexperto, Total
Expert, the archive stores, the healthcheck pings and the webhook endpoint."""
