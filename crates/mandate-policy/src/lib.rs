//! mandate-policy
