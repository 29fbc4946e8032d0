//! Mandate's operator plane: where people act on Mandate.
//!
//! | routes | what | module |
//! |---|---|---|
//! | `/approvals…` | the approval page: sign-in (local accounts, OpenID Connect), sessions and CSRF checks, the live feed, decisions, session replay | `web` |
//! | `/api/approvals…` | the approvers' API: held calls and task intents | `approvals` |
//! | `/api/revocations…`, `/api/changes…`, `/api/tools…` | kill switches, the two-person change gate, tool pins | [`control`] |
//! | `/api/audit…` | session timelines and signed checkpoints | `audit_api` |
//! | `/api/tasks…` | the task lifecycle (with a broker) | `tasks` |
//!
//! Who the operator is comes from one place (`operator.rs`: a bearer
//! token on `/api`, a signed-in approver on the page), and every refusal
//! or failure is one error type, [`ApiError`]. Every operator action is
//! decided and recorded in the audit log before it takes effect.
//!
//! The PEP (`mandate-gateway`) keeps the hold: a held call waits in the
//! gateway, which reads the decision back from the control store. This
//! crate depends on the gateway, never the reverse, and reaches it only
//! through its public methods: the planes it enforces with (control store,
//! audit log, policy engine, operator token verifier), the operator-action
//! records ([`Gateway::record_control`]), the hold's wake-ups
//! ([`Gateway::wake_held`], [`Gateway::is_held_here`]) and tool approval
//! ([`Gateway::approve_tool`]). With a delegation broker, the task API
//! reaches the broker only through [`mandate_broker::TaskApi`] (its
//! templates, the checks of a start request, ending a task with its
//! tokens); the broker does not depend on this crate.

mod approvals;
mod audit_api;
pub mod config;
pub mod control;
mod error;
mod operator;
mod password;
mod tasks;
mod web;

pub use config::{ClientSecret, LocalAccount, OidcConfig, WebConfig};
pub use error::ApiError;
pub use password::{DEFAULT_ITERATIONS, MIN_ITERATIONS, PasswordError, PasswordHash};
pub use web::LOCAL_ISSUER;

use axum::Router;
use mandate_broker::TaskApi;
use mandate_gateway::Gateway;
use std::sync::Arc;

/// The operator plane's routes (`/api` and `/approvals`), to merge with
/// the gateway's (`mandate_gateway::http::router`); `web` is how people
/// sign in to the approval page; `tasks`, the broker's side of the task
/// API (without a broker there is no `/api/tasks`).
pub fn router(gw: Arc<Gateway>, web: &WebConfig, tasks: Option<TaskApi>) -> Router {
    let tasks = match tasks {
        Some(t) => tasks::routes(gw.clone(), t),
        None => Router::new(),
    };
    Router::new()
        .merge(approvals::routes(gw.clone()))
        .merge(web::routes(gw.clone(), web))
        .merge(control::routes(gw.clone()))
        .merge(tasks)
        .merge(audit_api::routes(gw))
}
