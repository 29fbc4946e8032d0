//! mandate-gateway
