//! The gateway's HTTP `/mcp` entry, driven in process with arbitrary
//! bodies and a choice of methods and headers, mostly under a valid token.
//!
//! Input: 8 selector bytes (method, authorization, content type, accept,
//! transport session, protocol version, origin, Mcp-Method header), then
//! the body.
//!
//! Beyond "no panic, no hang", every response must hold:
//! * no 5xx;
//! * a request without a valid token gets 401 with `WWW-Authenticate`;
//! * a JSON body is JSON, and JSON-RPC errors carry an integer code;
//! * a `tools/call` is never answered with a successful result (the one
//!   upstream is unreachable, so nothing can be forwarded), and a call
//!   outside the token's scope only ever gets an error;
//! * a 403 `insufficient_scope` names a tool the token's scope does not
//!   cover.

#![no_main]

use axum::body::Body;
use http::{Method, Request, StatusCode, header};
use libfuzzer_sys::fuzz_target;
use mandate_core::Scope;
use mandate_fuzz::gateway::{HOST, Harness, MAX_BODY, MCP_ACCEPT, SCOPE};
use mandate_fuzz::{finding, runtime};
use serde_json::Value;
use std::sync::LazyLock;
use std::time::Duration;
use tower::ServiceExt as _;

static HARNESS: LazyLock<Harness> = LazyLock::new(|| runtime().block_on(Harness::new()));

/// `MANDATE_FUZZ_DEBUG=1` prints each response (to see what inputs reach).
static DEBUG: LazyLock<bool> = LazyLock::new(|| std::env::var_os("MANDATE_FUZZ_DEBUG").is_some());

fn pick<'a>(b: u8, options: &[&'a str]) -> &'a str {
    options
        .get(usize::from(b) % options.len().max(1))
        .copied()
        .unwrap_or_default()
}

/// The `tools/call` requests of a body: (id, tool name).
fn tool_calls(body: &Value) -> Vec<(Value, Option<String>)> {
    let one = |m: &Value| -> Option<(Value, Option<String>)> {
        (m.get("method")?.as_str()? == "tools/call").then(|| {
            (
                m.get("id").cloned().unwrap_or(Value::Null),
                m.get("params")
                    .and_then(|p| p.get("name"))
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            )
        })
    };
    match body {
        Value::Array(items) => items.iter().filter_map(one).collect(),
        other => one(other).into_iter().collect(),
    }
}

/// The ids of the requests of a body that are not `tools/call`s.
fn other_request_ids(body: &Value) -> Vec<Value> {
    let one = |m: &Value| -> Option<Value> {
        (m.get("method").and_then(Value::as_str) != Some("tools/call"))
            .then(|| m.get("id").cloned())
            .flatten()
    };
    match body {
        Value::Array(items) => items.iter().filter_map(one).collect(),
        other => one(other).into_iter().collect(),
    }
}

/// The JSON-RPC messages of a response body: plain JSON or SSE `data:` lines.
fn messages(content_type: &str, body: &[u8]) -> Vec<Value> {
    let text = String::from_utf8_lossy(body);
    if content_type.starts_with("text/event-stream") {
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .collect()
    } else if !content_type.starts_with("application/json") || text.trim().is_empty() {
        Vec::new()
    } else {
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::Array(items)) => items,
            Ok(v) => vec![v],
            Err(e) => finding(format!("JSON response does not parse ({e}): {text}")),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let h = &*HARNESS;
    let (sel, body) = data.split_at(data.len().min(8));
    let s = |i: usize| sel.get(i).copied().unwrap_or(0);

    let method = match s(0) % 8 {
        0..=4 => Method::POST,
        5 => Method::GET,
        6 => Method::DELETE,
        _ => Method::PUT,
    };
    let valid_auth = s(1) % 8 <= 4;
    let auth = match s(1) % 8 {
        0..=3 => Some(format!("Bearer {}", h.token)),
        4 => Some(format!("bearer  {} ", h.other_token)),
        5 => None,
        6 => Some("Bearer eyJhbGciOiJub25lIn0.e30.".to_owned()),
        _ => Some(format!("DPoP {}", h.token)),
    };
    let token_is_alice = s(1) % 8 <= 3;
    let content_type = pick(
        s(2),
        &[
            "application/json",
            "application/json",
            "application/json",
            "application/json",
            "application/json",
            "application/json; charset=utf-8",
            "text/plain",
            "",
        ],
    );
    let accept = pick(
        s(3),
        &[
            MCP_ACCEPT,
            MCP_ACCEPT,
            MCP_ACCEPT,
            MCP_ACCEPT,
            MCP_ACCEPT,
            "application/json",
            "text/event-stream",
            "",
        ],
    );
    let mut session = match s(4) % 8 {
        0..=3 => None,
        4 | 5 => h.session.clone(),
        6 => Some("no-such-session".to_owned()),
        _ => h.other_session.clone(),
    };
    // The harness's own sessions must survive: their owner's DELETE goes
    // to a session opened for it instead.
    let owners_delete =
        (token_is_alice && matches!(s(4) % 8, 4 | 5)) || (s(1) % 8 == 4 && s(4) % 8 == 7);
    let mut throwaway = None;
    if method == Method::DELETE && owners_delete {
        let token = if token_is_alice {
            &h.token
        } else {
            &h.other_token
        };
        session = runtime().block_on(h.initialize(token));
        throwaway.clone_from(&session);
    }
    let version = pick(
        s(5),
        &[
            "",
            "",
            "",
            "",
            "2025-06-18",
            "2025-03-26",
            "2026-07-28",
            "1999-01-01",
        ],
    );
    let origin = pick(
        s(6),
        &[
            "",
            "",
            "",
            "",
            "",
            "",
            "http://evil.example",
            mandate_fuzz::PUBLIC_URL,
        ],
    );
    // Mcp-Method / Mcp-Name (the stateless revision requires them to match
    // the body): none, taken from the body, or fixed.
    let sent_json: Option<Value> = serde_json::from_slice(body).ok();
    let from_body = |key: &str| -> String {
        let m = sent_json.as_ref();
        let v = match key {
            "method" => m.and_then(|m| m.get("method")),
            _ => m
                .and_then(|m| m.get("params"))
                .and_then(|p| p.get("name").or_else(|| p.get("uri"))),
        };
        v.and_then(Value::as_str).unwrap_or_default().to_owned()
    };
    let (mcp_method, mcp_name) = match s(7) % 8 {
        0..=4 => (String::new(), String::new()),
        5 => (from_body("method"), from_body("name")),
        6 => ("tools/call".to_owned(), String::new()),
        _ => ("initialize".to_owned(), "x".to_owned()),
    };

    let mut req = Request::builder()
        .method(method.clone())
        .uri("/mcp")
        .header(header::HOST, HOST);
    if let Some(a) = &auth {
        req = req.header(header::AUTHORIZATION, a);
    }
    for (name, value) in [
        (header::CONTENT_TYPE.as_str(), content_type),
        (header::ACCEPT.as_str(), accept),
        ("mcp-protocol-version", version),
        (header::ORIGIN.as_str(), origin),
        ("mcp-method", mcp_method.as_str()),
        ("mcp-name", mcp_name.as_str()),
    ] {
        if !value.is_empty() {
            req = req.header(name, value);
        }
    }
    if let Some(id) = &session {
        req = req.header("mcp-session-id", id);
    }
    // A header value the fuzzer made invalid is not a request anyone can send.
    let Ok(req) = req.body(Body::from(body.to_vec())) else {
        return;
    };

    runtime().block_on(async {
        let resp = match h.router.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = resp.status();
        if status.is_server_error() {
            finding(format!(
                "HTTP {status} for {method} body {:?}",
                String::from_utf8_lossy(body)
            ));
        }
        if !valid_auth && status != StatusCode::UNAUTHORIZED {
            finding(format!("no valid token but HTTP {status}"));
        }
        if status == StatusCode::UNAUTHORIZED
            && !resp.headers().contains_key(header::WWW_AUTHENTICATE)
        {
            finding("401 without WWW-Authenticate");
        }
        let new_session = if session.is_none() {
            resp.headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        } else {
            None
        };
        let challenge = resp
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let resp_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();

        // A GET is the server's event stream: it stays open by design.
        if method != Method::GET {
            let read = tokio::time::timeout(
                Duration::from_secs(10),
                axum::body::to_bytes(resp.into_body(), 16 * MAX_BODY),
            )
            .await;
            let bytes = match read {
                Err(_) => finding(format!(
                    "{method} response never completed: {:?}",
                    String::from_utf8_lossy(body)
                )),
                Ok(Err(e)) => finding(format!("response body: {e}")),
                Ok(Ok(b)) => b,
            };
            if *DEBUG {
                eprintln!(
                    "{method} -> {status} {challenge} {}",
                    String::from_utf8_lossy(&bytes)
                );
            }
            let sent: Option<Value> = serde_json::from_slice(body).ok();
            let calls = sent.as_ref().map(tool_calls).unwrap_or_default();
            // Ids also used by other requests of a batch may have results.
            let other_ids = sent.as_ref().map(other_request_ids).unwrap_or_default();
            let scope = Scope::parse(SCOPE);
            for m in messages(&resp_type, &bytes) {
                if let Some(e) = m.get("error")
                    && !e.get("code").is_some_and(Value::is_i64)
                {
                    finding(format!("JSON-RPC error without an integer code: {m}"));
                }
                let Some(result) = m.get("result") else {
                    continue;
                };
                let id = m.get("id").cloned().unwrap_or(Value::Null);
                for (call_id, name) in &calls {
                    if *call_id == id
                        && !id.is_null()
                        && !other_ids.contains(&id)
                        && result.get("isError") != Some(&Value::Bool(true))
                    {
                        let covered = name.as_deref().is_some_and(|n| scope.covers(n));
                        finding(format!(
                            "tools/call {name:?} (in scope: {covered}) answered with a result: {m}"
                        ));
                    }
                }
            }
            if status == StatusCode::FORBIDDEN && challenge.contains("insufficient_scope") {
                let outside = calls
                    .iter()
                    .any(|(_, n)| n.as_deref().is_some_and(|n| !scope.covers(n)));
                if !outside {
                    finding(format!(
                        "insufficient_scope for calls all in scope: {:?}",
                        calls
                    ));
                }
            }
        }

        // Close a session this input opened (or the harness opened for its
        // DELETE, which may have been refused), so sessions do not pile up.
        if let Some(id) = new_session.or(throwaway) {
            let token = if token_is_alice {
                &h.token
            } else {
                &h.other_token
            };
            let del = Request::delete("/mcp")
                .header(header::HOST, HOST)
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .header("mcp-session-id", id)
                .body(Body::empty());
            if let Ok(del) = del {
                let _ = h.router.clone().oneshot(del).await;
            }
        }
    });
});
