//! Engine tests against the shipped quickstart policies and small custom sets.

use super::*;
use mandate_core::{Effect, Obligation, Scope, ToolClass, ToolName};
use serde_json::json;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn shipped_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart/policies")
}

fn shipped() -> Result<PolicyEngine, PolicyError> {
    PolicyEngine::load_dir(&shipped_dir())
}

fn principal(scope: &str) -> Principal {
    Principal {
        iss: "https://broker.test".into(),
        sub: "alice".into(),
        act: vec!["assistant".into()],
        scope: Scope::parse(scope),
        task_id: Some("task-1".into()),
        build: Some("b".repeat(64)),
        sid: Some("s1".into()),
        jti: None,
        exp: 0,
    }
}

fn call(tool: &str, class: ToolClass, args: serde_json::Value) -> Result<ToolCall, String> {
    let name = ToolName::parse(tool).ok_or("bad tool name")?;
    let args = match args {
        serde_json::Value::Object(m) => m,
        _ => return Err("args must be an object".into()),
    };
    Ok(ToolCall::new(name, class, args))
}

fn decide_with(
    engine: &PolicyEngine,
    p: &Principal,
    c: &ToolCall,
    session: &SessionFacts,
) -> Decision {
    engine.decide(&DecisionRequest {
        principal: p,
        call: c,
        session,
        now_unix: 1_767_225_600,
    })
}

fn decide(engine: &PolicyEngine, scope: &str, c: &ToolCall) -> Decision {
    decide_with(engine, &principal(scope), c, &SessionFacts::default())
}

/// A temporary policy directory: the shipped schema plus `files`.
fn temp_set(files: &[(&str, &str)]) -> Result<tempfile::TempDir, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    std::fs::copy(
        shipped_dir().join("mandate.cedarschema"),
        dir.path().join("mandate.cedarschema"),
    )?;
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text)?;
    }
    Ok(dir)
}

const READ_PERMIT: &str = r#"
@id("read")
permit (principal, action == Mandate::Action::"read", resource) when { context.in_scope };
"#;

#[test]
fn read_in_scope_is_allowed_without_obligations() -> TestResult {
    let engine = shipped()?;
    let d = decide(
        &engine,
        "docs.*",
        &call("docs.search", ToolClass::Read, json!({"query": "refunds"}))?,
    );
    assert_eq!(d.effect, Effect::Allow, "{d:?}");
    assert!(d.obligations.is_empty());
    assert_eq!(d.policies, vec!["read-in-scope".to_owned()]);
    assert_eq!(
        d.reasons,
        vec!["read-only tool within the delegated scope".to_owned()]
    );
    assert_eq!(d.policy_hash, engine.policy_hash());
    Ok(())
}

#[test]
fn read_out_of_scope_is_denied_by_default() -> TestResult {
    let engine = shipped()?;
    let d = decide(
        &engine,
        "docs.search",
        &call("bank.get_balance", ToolClass::Read, json!({}))?,
    );
    assert_eq!(d.effect, Effect::Deny);
    assert!(d.policies.is_empty());
    assert_eq!(d.reasons, vec![DEFAULT_DENY_REASON.to_owned()]);
    Ok(())
}

#[test]
fn transfer_in_scope_needs_approval() -> TestResult {
    let engine = shipped()?;
    let d = decide(
        &engine,
        "bank.*",
        &call(
            "bank.transfer",
            ToolClass::Financial,
            json!({"amount": 50, "to": "bob"}),
        )?,
    );
    assert_eq!(d.effect, Effect::Allow, "{d:?}");
    assert_eq!(d.obligations, vec![Obligation::Approval]);
    assert!(d.requires_approval());
    assert_eq!(d.policies, vec!["high-impact-needs-approval".to_owned()]);
    Ok(())
}

#[test]
fn transfer_over_the_limit_is_forbidden_with_reason() -> TestResult {
    let engine = shipped()?;
    let d = decide(
        &engine,
        "bank.*",
        &call(
            "bank.transfer",
            ToolClass::Financial,
            json!({"amount": 20000, "to": "bob"}),
        )?,
    );
    assert_eq!(d.effect, Effect::Deny);
    assert_eq!(d.policies, vec!["financial-amount-limit".to_owned()]);
    assert_eq!(
        d.reasons,
        vec!["amount exceeds the per-call limit of 10000 for agents".to_owned()]
    );
    assert!(d.obligations.is_empty());
    Ok(())
}

#[test]
fn amount_of_the_wrong_type_fails_closed() -> TestResult {
    let engine = shipped()?;
    for amount in [
        json!("20000"),
        json!(20000.5),
        json!([20000]),
        json!({"value": 20000}),
    ] {
        let d = decide(
            &engine,
            "bank.*",
            &call(
                "bank.transfer",
                ToolClass::Financial,
                json!({"amount": amount, "to": "bob"}),
            )?,
        );
        assert_eq!(d.effect, Effect::Deny, "amount {amount}: {d:?}");
        assert!(
            d.reasons.iter().any(|r| r.contains("`amount`")),
            "amount {amount}: {:?}",
            d.reasons
        );
        // The value itself is not echoed into the (audited) reason.
        assert!(
            !d.reasons.iter().any(|r| r.contains("20000")),
            "{:?}",
            d.reasons
        );
    }
    Ok(())
}

#[test]
fn evaluation_error_in_a_forbid_denies_instead_of_being_skipped() -> TestResult {
    // `amount * 10^12` overflows for amount 10^7: Cedar reports an error and
    // skips the forbid, so its own decision is Allow. Mandate must deny.
    let dir = temp_set(&[(
        "p.cedar",
        r#"
@id("read")
permit (principal, action == Mandate::Action::"read", resource) when { context.in_scope };

@id("overflowing-forbid")
forbid (principal, action, resource)
when { context.args has amount && context.args.amount * 1000000000000 > 0 };
"#,
    )])?;
    let engine = PolicyEngine::load_dir(dir.path())?;
    let ok = decide(
        &engine,
        "docs.*",
        &call("docs.search", ToolClass::Read, json!({"amount": 1}))?,
    );
    assert_eq!(
        ok.effect,
        Effect::Deny,
        "the forbid applies normally: {ok:?}"
    );
    let d = decide(
        &engine,
        "docs.*",
        &call(
            "docs.search",
            ToolClass::Read,
            json!({"amount": 10_000_000}),
        )?,
    );
    assert_eq!(d.effect, Effect::Deny, "{d:?}");
    assert_eq!(d.policies, vec!["overflowing-forbid".to_owned()]);
    assert!(
        d.reasons
            .iter()
            .any(|r| r.contains("overflowing-forbid") && r.contains("fail closed"))
    );
    let fine = decide(
        &engine,
        "docs.*",
        &call("docs.search", ToolClass::Read, json!({}))?,
    );
    assert_eq!(fine.effect, Effect::Allow, "{fine:?}");
    Ok(())
}

#[test]
fn undeclared_arguments_are_ignored_whatever_their_type() -> TestResult {
    let engine = shipped()?;
    let d = decide(
        &engine,
        "docs.*",
        &call(
            "docs.search",
            ToolClass::Read,
            json!({"query": "x", "limit": 2.5, "filters": {"__entity": {"type": "Mandate::User", "id": "root"}}, "tags": [1, "a", null], "n": null}),
        )?,
    );
    assert_eq!(d.effect, Effect::Allow, "{d:?}");
    Ok(())
}

#[test]
fn null_declared_argument_counts_as_absent() -> TestResult {
    let engine = shipped()?;
    let d = decide(
        &engine,
        "bank.*",
        &call(
            "bank.transfer",
            ToolClass::Financial,
            json!({"amount": null}),
        )?,
    );
    assert_eq!(d.effect, Effect::Allow, "{d:?}");
    assert!(d.requires_approval());
    Ok(())
}

#[test]
fn arguments_too_deep_or_too_large_are_denied() -> TestResult {
    let engine = shipped()?;
    let mut deep = json!("x");
    for _ in 0..20 {
        deep = json!({ "d": deep });
    }
    let d = decide(
        &engine,
        "docs.*",
        &call("docs.search", ToolClass::Read, json!({"extra": deep}))?,
    );
    assert_eq!(d.effect, Effect::Deny);
    assert!(
        d.reasons.iter().any(|r| r.contains("deeper")),
        "{:?}",
        d.reasons
    );

    let big = "y".repeat(limits::MAX_ARGS_BYTES);
    let d = decide(
        &engine,
        "docs.*",
        &call("docs.search", ToolClass::Read, json!({"query": big}))?,
    );
    assert_eq!(d.effect, Effect::Deny);
    assert!(
        d.reasons.iter().any(|r| r.contains("bytes")),
        "{:?}",
        d.reasons
    );
    Ok(())
}

#[test]
fn tainted_session_sinks_need_approval_and_name_the_flow_rule() -> TestResult {
    let engine = shipped()?;
    let session = SessionFacts {
        taint: BTreeSet::from(["untrusted".to_owned()]),
        calls_in_session: 3,
    };
    let d = decide_with(
        &engine,
        &principal("docs.*"),
        &call(
            "docs.send_mail",
            ToolClass::Outbound,
            json!({"to": "eve@example.com"}),
        )?,
        &session,
    );
    assert_eq!(d.effect, Effect::Allow);
    assert_eq!(d.obligations, vec![Obligation::Approval]);
    assert_eq!(
        d.policies,
        vec![
            "high-impact-needs-approval".to_owned(),
            "tainted-session-sinks-need-approval".to_owned()
        ]
    );
    // Reads stay allowed in a tainted session.
    let d = decide_with(
        &engine,
        &principal("docs.*"),
        &call("docs.search", ToolClass::Read, json!({}))?,
        &session,
    );
    assert_eq!(d.effect, Effect::Allow);
    assert!(d.obligations.is_empty());
    Ok(())
}

#[test]
fn session_call_budget_is_enforced() -> TestResult {
    let engine = shipped()?;
    let session = SessionFacts {
        taint: BTreeSet::new(),
        calls_in_session: 1000,
    };
    let d = decide_with(
        &engine,
        &principal("docs.*"),
        &call("docs.search", ToolClass::Read, json!({}))?,
        &session,
    );
    assert_eq!(d.effect, Effect::Deny);
    assert_eq!(d.policies, vec!["session-call-budget".to_owned()]);
    Ok(())
}

#[test]
fn a_token_without_an_agent_is_denied() -> TestResult {
    let engine = shipped()?;
    let mut p = principal("docs.*");
    p.act.clear();
    let d = decide_with(
        &engine,
        &p,
        &call("docs.search", ToolClass::Read, json!({}))?,
        &SessionFacts::default(),
    );
    assert_eq!(d.effect, Effect::Deny);
    assert!(d.reasons.iter().any(|r| r.contains("no agent")));
    Ok(())
}

#[test]
fn obligations_of_all_determining_permits_are_combined() -> TestResult {
    let dir = temp_set(&[(
        "p.cedar",
        r#"
@id("read")
permit (principal, action == Mandate::Action::"read", resource) when { context.in_scope };

@id("redact-customers")
@obligation("redact:email,phone")
permit (principal, action, resource == Mandate::Tool::"docs.list_customers");

@id("redact-more")
@obligation("redact:ssn; approval")
permit (principal, action, resource in Mandate::Upstream::"docs")
when { resource.class == "read" && context.task_id == "" };
"#,
    )])?;
    let engine = PolicyEngine::load_dir(dir.path())?;
    let c = call("docs.list_customers", ToolClass::Read, json!({}))?;
    let d = decide(&engine, "docs.*", &c);
    assert_eq!(d.effect, Effect::Allow);
    assert_eq!(
        d.obligations,
        vec![Obligation::Redact {
            fields: vec!["email".into(), "phone".into()]
        }]
    );
    let mut p = principal("docs.*");
    p.task_id = None;
    let d = decide_with(&engine, &p, &c, &SessionFacts::default());
    assert_eq!(
        d.obligations,
        vec![
            Obligation::Approval,
            Obligation::Redact {
                fields: vec!["email".into(), "phone".into(), "ssn".into()]
            }
        ]
    );
    assert_eq!(d.policies.len(), 3);
    // Ids default to `<file>#policy<N>` when there is no `@id`.
    Ok(())
}

#[test]
fn default_ids_name_file_and_position() -> TestResult {
    let dir = temp_set(&[(
        "a.cedar",
        "permit (principal, action == Mandate::Action::\"read\", resource);\n\
         permit (principal, action == Mandate::Action::\"write\", resource);",
    )])?;
    let engine = PolicyEngine::load_dir(dir.path())?;
    let d = decide(&engine, "", &call("x.y", ToolClass::Write, json!({}))?);
    assert_eq!(d.policies, vec!["a.cedar#policy1".to_owned()]);
    assert_eq!(
        d.reasons,
        vec!["permitted by policy `a.cedar#policy1`".to_owned()]
    );
    Ok(())
}

#[test]
fn a_parse_error_names_file_line_and_column() -> TestResult {
    let dir = temp_set(&[
        ("ok.cedar", READ_PERMIT),
        (
            "broken.cedar",
            "// first line\npermit (principal, action, resource)\nwhen { context.in_scope &&& true };\n",
        ),
    ])?;
    let err = PolicyEngine::load_dir(dir.path())
        .err()
        .ok_or("loaded a broken set")?;
    let msg = err.to_string();
    assert!(matches!(err, PolicyError::Syntax(_)), "{msg}");
    assert!(msg.contains("broken.cedar:3:"), "{msg}");
    let first = err.diagnostics().first().ok_or("no diagnostics")?;
    assert_eq!(first.file(), "broken.cedar");
    assert_eq!(first.line(), Some(3));
    assert!(first.column().is_some_and(|c| c > 1), "{first}");
    Ok(())
}

#[test]
fn a_validation_error_names_file_line_and_column() -> TestResult {
    let dir = temp_set(&[(
        "v.cedar",
        "@id(\"unsafe\")\npermit (principal, action == Mandate::Action::\"financial\", resource)\nwhen {\n  context.args.amount < 100\n};\n",
    )])?;
    let err = PolicyEngine::load_dir(dir.path())
        .err()
        .ok_or("loaded an invalid set")?;
    let msg = err.to_string();
    assert!(matches!(err, PolicyError::Invalid(_)), "{msg}");
    assert!(msg.contains("v.cedar:4:"), "{msg}");
    Ok(())
}

#[test]
fn annotation_mistakes_are_refused() -> TestResult {
    for (text, needle) in [
        (
            "@obligations(\"approval\")\npermit (principal, action, resource);",
            "unknown annotation `@obligations`",
        ),
        (
            "@obligation(\"aproval\")\npermit (principal, action, resource);",
            "unknown obligation",
        ),
        (
            "@obligation(\"approval\")\nforbid (principal, action, resource);",
            "only applies to `permit`",
        ),
        (
            "@id(\"x\") permit (principal, action, resource);\n@id(\"x\") forbid (principal, action, resource);",
            "already used at p.cedar:1:1",
        ),
        (
            "permit (principal, action, resource == ?resource);",
            "templates",
        ),
    ] {
        let dir = temp_set(&[("p.cedar", text)])?;
        let err = PolicyEngine::load_dir(dir.path()).err().ok_or("accepted")?;
        assert!(err.to_string().contains(needle), "{needle}: {err}");
        assert!(err.to_string().contains("p.cedar"), "{err}");
    }
    let dir = temp_set(&[(
        "p.cedar",
        "@x_owner(\"team\")\n@id(\"fine\")\npermit (principal, action, resource);",
    )])?;
    assert!(PolicyEngine::load_dir(dir.path()).is_ok());
    Ok(())
}

#[test]
fn layout_and_contract_problems_are_refused() -> TestResult {
    // No schema.
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("p.cedar"), READ_PERMIT)?;
    let err = PolicyEngine::load_dir(dir.path()).err().ok_or("accepted")?;
    assert!(err.to_string().contains("exactly one schema"), "{err}");

    // Two schemas.
    let dir = temp_set(&[("p.cedar", READ_PERMIT)])?;
    std::fs::copy(
        dir.path().join("mandate.cedarschema"),
        dir.path().join("other.cedarschema"),
    )?;
    let err = PolicyEngine::load_dir(dir.path()).err().ok_or("accepted")?;
    assert!(err.to_string().contains("more than one schema"), "{err}");

    // No policies.
    let dir = temp_set(&[])?;
    let err = PolicyEngine::load_dir(dir.path()).err().ok_or("accepted")?;
    assert!(err.to_string().contains("no *.cedar"), "{err}");

    // A schema whose context lacks a field Mandate sends.
    let dir = temp_set(&[("p.cedar", READ_PERMIT)])?;
    let schema = std::fs::read_to_string(shipped_dir().join("mandate.cedarschema"))?
        .replace("now: Long,", "");
    std::fs::write(dir.path().join("mandate.cedarschema"), schema)?;
    let err = PolicyEngine::load_dir(dir.path()).err().ok_or("accepted")?;
    assert!(matches!(err, PolicyError::Contract(_)), "{err}");

    // A required `Args` field would deny every call without it.
    let dir = temp_set(&[("p.cedar", READ_PERMIT)])?;
    let schema = std::fs::read_to_string(shipped_dir().join("mandate.cedarschema"))?
        .replace("query?: String", "query: String");
    std::fs::write(dir.path().join("mandate.cedarschema"), schema)?;
    let err = PolicyEngine::load_dir(dir.path()).err().ok_or("accepted")?;
    assert!(matches!(err, PolicyError::Contract(_)), "{err}");

    // A schema syntax error is located.
    let dir = temp_set(&[("p.cedar", READ_PERMIT)])?;
    std::fs::write(
        dir.path().join("mandate.cedarschema"),
        "namespace Mandate {\n  entity ;\n}\n",
    )?;
    let err = PolicyEngine::load_dir(dir.path()).err().ok_or("accepted")?;
    assert!(err.to_string().contains("mandate.cedarschema:2:"), "{err}");
    Ok(())
}

#[test]
fn oversized_sets_are_refused() -> TestResult {
    let policy = "permit (principal, action == Mandate::Action::\"read\", resource);\n";
    let count = usize::try_from(limits::MAX_SOURCE_BYTES)? / policy.len() + 1;
    let dir = temp_set(&[("big.cedar", &policy.repeat(count))])?;
    let err = PolicyEngine::load_dir(dir.path()).err().ok_or("accepted")?;
    assert!(matches!(err, PolicyError::Limit(_)), "{err}");

    let short = "permit(principal,action,resource);";
    let dir = temp_set(&[("many.cedar", &short.repeat(limits::MAX_POLICIES + 1))])?;
    let err = PolicyEngine::load_dir(dir.path()).err().ok_or("accepted")?;
    assert!(matches!(err, PolicyError::Limit(_)), "{err}");
    Ok(())
}

#[test]
fn reload_with_a_broken_file_keeps_the_last_good_set() -> TestResult {
    let dir = temp_set(&[("p.cedar", READ_PERMIT)])?;
    let engine = PolicyEngine::load_dir(dir.path())?;
    let good_hash = engine.policy_hash();
    let c = call("docs.search", ToolClass::Read, json!({}))?;

    std::fs::write(
        dir.path().join("broken.cedar"),
        "permit (principal, action, resource",
    )?;
    let err = engine
        .reload()
        .err()
        .ok_or("reload accepted a broken set")?;
    assert!(err.to_string().contains("broken.cedar"), "{err}");
    assert_eq!(engine.reload_failures(), 1);
    assert_eq!(engine.policy_hash(), good_hash);
    let d = decide(&engine, "docs.*", &c);
    assert_eq!(d.effect, Effect::Allow);
    assert_eq!(d.policy_hash, good_hash);

    // Fixing the file makes the next reload take effect.
    std::fs::write(
        dir.path().join("broken.cedar"),
        "@id(\"no-docs\") forbid (principal, action, resource in Mandate::Upstream::\"docs\");",
    )?;
    engine.reload()?;
    assert_eq!(engine.reload_failures(), 1);
    assert_ne!(engine.policy_hash(), good_hash);
    let d = decide(&engine, "docs.*", &c);
    assert_eq!(d.effect, Effect::Deny);
    assert_eq!(d.policies, vec!["no-docs".to_owned()]);
    Ok(())
}

#[test]
fn policy_hash_covers_names_and_contents() -> TestResult {
    let a = temp_set(&[("p.cedar", READ_PERMIT)])?;
    let b = temp_set(&[("q.cedar", READ_PERMIT)])?;
    let c = temp_set(&[("p.cedar", READ_PERMIT), ("notes.txt", "ignored")])?;
    let ha = PolicyEngine::load_dir(a.path())?.policy_hash();
    let hb = PolicyEngine::load_dir(b.path())?.policy_hash();
    let hc = PolicyEngine::load_dir(c.path())?.policy_hash();
    assert_ne!(ha, hb);
    assert_eq!(ha, hc);
    assert_eq!(ha.len(), 64);
    Ok(())
}

#[test]
fn check_dir_accepts_the_shipped_set() -> TestResult {
    let summary = PolicyEngine::check_dir(&shipped_dir())?;
    assert!(
        summary.starts_with("6 policies in 4 files valid against schema mandate.cedarschema"),
        "{summary}"
    );
    Ok(())
}

#[test]
fn shipped_policy_tests_pass() -> TestResult {
    let engine = shipped()?;
    let report = run_tests(&engine, &shipped_dir().join("tests"))?;
    assert!(report.all_passed(), "{report}");
    assert!(report.cases.len() >= 10, "{report}");
    Ok(())
}

#[test]
fn policy_test_runner_reports_failures_and_malformed_files() -> TestResult {
    let engine = shipped()?;
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("t.json"),
        r#"{
  "principal": {"sub": "alice", "act": ["assistant"], "scope": "docs.*"},
  "cases": [
    {"name": "wrong on purpose", "tool": "docs.search", "class": "read",
     "expect": {"effect": "deny"}},
    {"name": "right", "tool": "docs.search", "class": "read",
     "expect": {"effect": "allow", "policies": ["read-in-scope"], "reason_contains": "scope"}}
  ]
}"#,
    )?;
    let report = run_tests(&engine, dir.path())?;
    assert_eq!((report.passed(), report.failed()), (1, 1), "{report}");
    assert!(
        report.to_string().contains("FAIL t.json: wrong on purpose"),
        "{report}"
    );

    std::fs::write(
        dir.path().join("t.json"),
        "{\n  \"cases\": [\n    {\"name\": \"x\", \"tool\": \"docs.search\", \"clas\": \"read\"}\n  ]\n}",
    )?;
    let err = run_tests(&engine, dir.path()).err().ok_or("accepted")?;
    assert!(err.to_string().contains("t.json:3:"), "{err}");
    Ok(())
}

#[test]
fn engine_is_shareable_across_threads() -> TestResult {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PolicyEngine>();
    let engine = std::sync::Arc::new(shipped()?);
    let c = call("docs.search", ToolClass::Read, json!({}))?;
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let engine = engine.clone();
            let c = c.clone();
            std::thread::spawn(move || (0..50).all(|_| decide(&engine, "docs.*", &c).is_allow()))
        })
        .collect();
    for h in handles {
        assert!(h.join().map_err(|_| "thread panicked")?);
    }
    Ok(())
}

#[test]
fn nested_action_groups_are_honoured() -> TestResult {
    let dir = temp_set(&[(
        "p.cedar",
        r#"
@id("read") permit (principal, action == Mandate::Action::"read", resource);
@id("nothing-after-hours") forbid (principal, action in Mandate::Action::"everything", resource)
when { context.now > 100 };
"#,
    )])?;
    let schema = std::fs::read_to_string(shipped_dir().join("mandate.cedarschema"))?.replace(
        "action call;",
        "action everything;\n  action call in [everything];",
    );
    std::fs::write(dir.path().join("mandate.cedarschema"), schema)?;
    let engine = PolicyEngine::load_dir(dir.path())?;
    let d = decide(
        &engine,
        "",
        &call("docs.search", ToolClass::Read, json!({}))?,
    );
    assert_eq!(d.effect, Effect::Deny, "{d:?}");
    assert_eq!(d.policies, vec!["nothing-after-hours".to_owned()]);
    Ok(())
}
