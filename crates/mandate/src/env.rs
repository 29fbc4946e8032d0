//! Environment variables Mandate reads, all in one place.

/// Overrides `server.listen`.
pub const LISTEN: &str = "MANDATE_LISTEN";
/// Overrides `server.public_url`.
pub const PUBLIC_URL: &str = "MANDATE_PUBLIC_URL";
/// Overrides `server.data_dir`.
pub const DATA_DIR: &str = "MANDATE_DATA_DIR";
/// Path of the config file when `--config` is not given.
pub const CONFIG: &str = "MANDATE_CONFIG";
/// The agent's bearer token for `mandate gateway --stdio`.
pub const TOKEN: &str = "MANDATE_TOKEN";
/// Log filter (tracing `EnvFilter` syntax), default `info`.
pub const LOG: &str = "MANDATE_LOG";
/// `json` for JSON logs.
pub const LOG_FORMAT: &str = "MANDATE_LOG_FORMAT";
/// Base URL of a running gateway, for operator commands.
pub const SERVER: &str = "MANDATE_SERVER";
/// An operator's bearer token, for operator commands.
pub const OPERATOR_TOKEN: &str = "MANDATE_OPERATOR_TOKEN";
/// Overrides `audit.store` (a `postgres://` URL or a SQLite path).
pub const AUDIT_STORE: &str = "MANDATE_AUDIT_STORE";
/// Overrides `control.store` (a `postgres://` URL or a SQLite path).
pub const CONTROL_STORE: &str = "MANDATE_CONTROL_STORE";
/// Turns traces on: the OTLP/HTTP base URL (overrides `telemetry.otlp_endpoint`).
pub const OTEL_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// Overrides `telemetry.service_name`.
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// Overrides `telemetry.sample_ratio`.
pub const OTEL_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
