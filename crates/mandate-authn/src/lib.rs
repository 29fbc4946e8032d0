//! mandate-authn
