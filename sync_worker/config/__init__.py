"""The worker's configuration: the keys and what makes them valid (schema), reading them
from the environment, the file and credentials (loading), and the example file and the
manual's table made from their declarations (rendering). The names the rest of the worker
uses are these."""

from sync_worker.config.loading import PROCESS_SECTIONS, config_path, load_config, load_tenants
from sync_worker.config.rendering import example_toml, markdown_table
from sync_worker.config.schema import (
    REMOTE_METRICS,
    AuditConfig,
    Config,
    ConfigError,
    FlexpertoConfig,
    HttpConfig,
    MetricsConfig,
    MonitoringConfig,
    NetworkConfig,
    RetryConfig,
    ScheduleConfig,
    StateConfig,
    StorageConfig,
    TotalExpertConfig,
    WebhookConfig,
    keys,
    parse_listen,
    validate_base_url,
)

__all__ = [
    "PROCESS_SECTIONS",
    "REMOTE_METRICS",
    "AuditConfig",
    "Config",
    "ConfigError",
    "FlexpertoConfig",
    "HttpConfig",
    "MetricsConfig",
    "MonitoringConfig",
    "NetworkConfig",
    "RetryConfig",
    "ScheduleConfig",
    "StateConfig",
    "StorageConfig",
    "TotalExpertConfig",
    "WebhookConfig",
    "config_path",
    "example_toml",
    "keys",
    "load_config",
    "load_tenants",
    "markdown_table",
    "parse_listen",
    "validate_base_url",
]
