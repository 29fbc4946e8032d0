//! The configuration of `mandate serve` as a library: `mandate.toml` and
//! the environment's overrides ([`config::Config::load`]), with the
//! sections of the audit log, the broker and telemetry. The binary reads
//! it; so does the `config_load` fuzz target (`fuzz/`), which is why it is
//! a library and not only modules of the binary.

pub mod audit_config;
pub mod broker_config;
pub mod config;
pub mod env;
pub mod telemetry;
