//! Engine tests against the shipped quickstart policies and small custom sets.

use super::*;
use mandate_core::{CallerData, Effect, Obligation, Scope, ToolClass, ToolName};
use serde_json::json;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn shipped_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart/policies")
}

fn shipped() -> Result<PolicyEngine, PolicyError> {
    PolicyEngine::load_dir(&shipped_dir())
}

fn principal(scope: &str) -> CallerData {
    CallerData {
        iss: "https://broker.test".into(),
        sub: "alice".into(),
        act: vec!["assistant".into()],
        scope: Scope::parse(scope),
        task_id: Some("task-1".into()),
        build: Some("b".repeat(64)),
        sid: Some("s1".into()),
        jti: None,
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
    p: &CallerData,
    c: &ToolCall,
    session: &SessionFacts,
) -> Decision {
    engine.decide(&DecisionRequest {
        caller: p.caller(),
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

use std::collections::BTreeMap;

#[test]
fn read_in_scope_is_allowed_without_obligations() -> TestResult {
    let engine = shipped()?;
    let d = decide(
        &engine,
        "docs.*",
        &call("docs.search", ToolClass::Read, json!({"query": "refunds"}))?,
    );
    assert_eq!(d.effect(), Effect::Allow, "{d:?}");
    assert!(d.obligations().is_empty());
    assert_eq!(d.policies(), vec!["read-in-scope".to_owned()]);
    assert_eq!(
        d.reasons(),
        vec!["read-only tool within the delegated scope".to_owned()]
    );
    assert_eq!(d.policy_hash(), engine.policy_hash());
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
    assert_eq!(d.effect(), Effect::Deny);
    assert!(d.policies().is_empty());
    assert_eq!(d.reasons(), vec![DEFAULT_DENY_REASON.to_owned()]);
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
            json!({"amount": 50, "to": "acc-9"}),
        )?,
    );
    assert_eq!(d.effect(), Effect::Allow, "{d:?}");
    assert_eq!(d.obligations(), vec![Obligation::Approval]);
    assert!(d.requires_approval());
    assert_eq!(d.policies(), vec!["high-impact-needs-approval".to_owned()]);
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
            json!({"amount": 20000, "to": "acc-9"}),
        )?,
    );
    assert_eq!(d.effect(), Effect::Deny);
    assert_eq!(d.policies(), vec!["financial-amount-limit".to_owned()]);
    assert_eq!(
        d.reasons(),
        vec!["amount exceeds the per-call limit of 10000 for agents".to_owned()]
    );
    assert!(d.obligations().is_empty());
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
                json!({"amount": amount, "to": "acc-9"}),
            )?,
        );
        assert_eq!(d.effect(), Effect::Deny, "amount {amount}: {d:?}");
        assert!(
            d.reasons().iter().any(|r| r.contains("`amount`")),
            "amount {amount}: {:?}",
            d.reasons()
        );
        // The value itself is not echoed into the (audited) reason.
        assert!(
            !d.reasons().iter().any(|r| r.contains("20000")),
            "{:?}",
            d.reasons()
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
        ok.effect(),
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
    assert_eq!(d.effect(), Effect::Deny, "{d:?}");
    assert_eq!(d.policies(), vec!["overflowing-forbid".to_owned()]);
    assert!(
        d.reasons()
            .iter()
            .any(|r| r.contains("overflowing-forbid") && r.contains("fail closed"))
    );
    let fine = decide(
        &engine,
        "docs.*",
        &call("docs.search", ToolClass::Read, json!({}))?,
    );
    assert_eq!(fine.effect(), Effect::Allow, "{fine:?}");
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
    assert_eq!(d.effect(), Effect::Allow, "{d:?}");
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
    assert_eq!(d.effect(), Effect::Allow, "{d:?}");
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
    assert_eq!(d.effect(), Effect::Deny);
    assert!(
        d.reasons().iter().any(|r| r.contains("deeper")),
        "{:?}",
        d.reasons()
    );

    let big = "y".repeat(limits::MAX_ARGS_BYTES);
    let d = decide(
        &engine,
        "docs.*",
        &call("docs.search", ToolClass::Read, json!({"query": big}))?,
    );
    assert_eq!(d.effect(), Effect::Deny);
    assert!(
        d.reasons().iter().any(|r| r.contains("bytes")),
        "{:?}",
        d.reasons()
    );
    Ok(())
}

#[test]
fn tainted_session_sinks_need_approval_and_name_the_flow_rule() -> TestResult {
    let engine = shipped()?;
    let session = SessionFacts {
        taint: BTreeSet::from(["untrusted".to_owned()]),
        calls_in_session: 3,
        ..SessionFacts::default()
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
    assert_eq!(d.effect(), Effect::Allow);
    assert_eq!(d.obligations(), vec![Obligation::Approval]);
    assert_eq!(
        d.policies(),
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
    assert_eq!(d.effect(), Effect::Allow);
    assert!(d.obligations().is_empty());
    Ok(())
}

#[test]
fn session_call_budget_is_enforced() -> TestResult {
    let engine = shipped()?;
    let session = SessionFacts {
        calls_in_session: 1000,
        ..SessionFacts::default()
    };
    let d = decide_with(
        &engine,
        &principal("docs.*"),
        &call("docs.search", ToolClass::Read, json!({}))?,
        &session,
    );
    assert_eq!(d.effect(), Effect::Deny);
    assert_eq!(d.policies(), vec!["session-call-budget".to_owned()]);
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
    assert_eq!(d.effect(), Effect::Deny);
    assert!(d.reasons().iter().any(|r| r.contains("no agent")));
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
    assert_eq!(d.effect(), Effect::Allow);
    assert_eq!(
        d.obligations(),
        vec![Obligation::Redact {
            fields: vec!["email".into(), "phone".into()]
        }]
    );
    let mut p = principal("docs.*");
    p.task_id = None;
    let d = decide_with(&engine, &p, &c, &SessionFacts::default());
    assert_eq!(
        d.obligations(),
        vec![
            Obligation::Approval,
            Obligation::Redact {
                fields: vec!["email".into(), "phone".into(), "ssn".into()]
            }
        ]
    );
    assert_eq!(d.policies().len(), 3);
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
    assert_eq!(d.policies(), vec!["a.cedar#policy1".to_owned()]);
    assert_eq!(
        d.reasons(),
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
    assert_eq!(d.effect(), Effect::Allow);
    assert_eq!(d.policy_hash(), good_hash);

    // Fixing the file makes the next reload take effect.
    std::fs::write(
        dir.path().join("broken.cedar"),
        "@id(\"no-docs\") forbid (principal, action, resource in Mandate::Upstream::\"docs\");",
    )?;
    engine.reload()?;
    assert_eq!(engine.reload_failures(), 1);
    assert_ne!(engine.policy_hash(), good_hash);
    let d = decide(&engine, "docs.*", &c);
    assert_eq!(d.effect(), Effect::Deny);
    assert_eq!(d.policies(), vec!["no-docs".to_owned()]);
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
        summary.starts_with("14 policies in 4 files valid against schema mandate.cedarschema"),
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
    let engine = Arc::new(shipped()?);
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
    assert_eq!(d.effect(), Effect::Deny, "{d:?}");
    assert_eq!(d.policies(), vec!["nothing-after-hours".to_owned()]);
    Ok(())
}

fn directory(groups: &[(&str, &[&str])], builds: &[(&str, &str)]) -> Directory {
    Directory {
        groups: groups
            .iter()
            .map(|(user, gs)| {
                (
                    (*user).to_owned(),
                    gs.iter().map(|g| (*g).to_owned()).collect(),
                )
            })
            .collect(),
        builds: builds
            .iter()
            .map(|(hash, name)| {
                (
                    (*hash).to_owned(),
                    BuildInfo {
                        name: (*name).to_owned(),
                    },
                )
            })
            .collect(),
    }
}

#[test]
fn groups_come_from_the_directory_and_survive_reloads() -> TestResult {
    let dir = temp_set(&[(
        "p.cedar",
        r#"
@id("editors-write")
permit (principal, action == Mandate::Action::"write", resource)
when { context.user in Mandate::Group::"editors" };
"#,
    )])?;
    let engine = PolicyEngine::load_dir(dir.path())?;
    let c = call("wiki.update_page", ToolClass::Write, json!({}))?;
    let alice = principal("");
    let mut bob = principal("");
    bob.sub = "bob".into();

    // No directory: nobody is in a group.
    assert!(engine.directory().groups.is_empty());
    let d = decide_with(&engine, &alice, &c, &SessionFacts::default());
    assert_eq!(d.effect(), Effect::Deny, "{d:?}");

    engine.set_directory(directory(
        &[("alice", &["staff", "editors"]), ("bob", &["staff"])],
        &[],
    ));
    assert_eq!(engine.directory().groups.len(), 2);
    let d = decide_with(&engine, &alice, &c, &SessionFacts::default());
    assert_eq!(d.effect(), Effect::Allow, "{d:?}");
    assert_eq!(d.policies(), vec!["editors-write".to_owned()]);
    let d = decide_with(&engine, &bob, &c, &SessionFacts::default());
    assert_eq!(d.effect(), Effect::Deny, "{d:?}");

    // A reload that changes the policies keeps the directory.
    std::fs::write(
        dir.path().join("q.cedar"),
        "@id(\"read\") permit (principal, action == Mandate::Action::\"read\", resource);",
    )?;
    engine.reload()?;
    assert_eq!(engine.policy_count(), 2);
    let d = decide_with(&engine, &alice, &c, &SessionFacts::default());
    assert_eq!(d.effect(), Effect::Allow, "{d:?}");

    // Replacing the directory takes effect on the next decision.
    engine.set_directory(Directory::default());
    let d = decide_with(&engine, &alice, &c, &SessionFacts::default());
    assert_eq!(d.effect(), Effect::Deny, "{d:?}");
    Ok(())
}

#[test]
fn builds_are_registered_only_through_the_directory() -> TestResult {
    let dir = temp_set(&[(
        "p.cedar",
        r#"
@id("any-call") permit (principal, action, resource);

@id("unregistered-build")
@reason("this agent build is not registered")
forbid (principal, action, resource) unless { context.build.registered };

@id("not-the-pinned-build")
forbid (principal, action == Mandate::Action::"financial", resource)
unless { context.build == Mandate::Build::"cafe01" && context.build.name == "payer v2" };
"#,
    )])?;
    let engine = PolicyEngine::load_dir(dir.path())?;
    let read = call("docs.search", ToolClass::Read, json!({}))?;
    let pay = call("bank.transfer", ToolClass::Financial, json!({"amount": 1}))?;
    let mut p = principal("");
    let run = |p: &CallerData, c: &ToolCall| decide_with(&engine, p, c, &SessionFacts::default());

    p.build = Some("cafe01".into());
    let d = run(&p, &read);
    assert_eq!(d.effect(), Effect::Deny, "unregistered: {d:?}");
    assert_eq!(d.policies(), vec!["unregistered-build".to_owned()]);
    assert_eq!(
        d.reasons(),
        vec!["this agent build is not registered".to_owned()]
    );

    engine.set_directory(directory(&[], &[("cafe01", "payer v2"), ("", "empty")]));
    assert_eq!(run(&p, &read).effect(), Effect::Allow);
    assert_eq!(run(&p, &pay).effect(), Effect::Allow);

    // Another registered build may read but is not the pinned payer.
    engine.set_directory(directory(
        &[],
        &[("cafe01", "payer v1"), ("beef02", "reader"), ("", "empty")],
    ));
    let d = run(&p, &pay);
    assert_eq!(
        d.policies(),
        vec!["not-the-pinned-build".to_owned()],
        "{d:?}"
    );
    p.build = Some("beef02".into());
    assert_eq!(run(&p, &read).effect(), Effect::Allow);
    assert_eq!(run(&p, &pay).effect(), Effect::Deny);

    // A token without a build is the build "", which is never registered,
    // even when the configuration lists "".
    p.build = None;
    let d = run(&p, &read);
    assert_eq!(d.policies(), vec!["unregistered-build".to_owned()], "{d:?}");
    p.build = Some(String::new());
    assert_eq!(run(&p, &read).effect(), Effect::Deny);
    Ok(())
}

#[test]
fn task_is_an_entity_and_a_string() -> TestResult {
    let dir = temp_set(&[(
        "p.cedar",
        r#"
@id("task-1") permit (principal, action, resource) when { context.task == Mandate::Task::"task-1" };
@id("invoices") permit (principal, action, resource) when { context.task_id like "invoice-*" };
"#,
    )])?;
    let engine = PolicyEngine::load_dir(dir.path())?;
    let c = call("docs.search", ToolClass::Read, json!({}))?;
    let mut p = principal("");
    let run = |p: &CallerData| decide_with(&engine, p, &c, &SessionFacts::default());
    assert_eq!(run(&p).policies(), vec!["task-1".to_owned()]);
    p.task_id = Some("invoice-7".into());
    assert_eq!(run(&p).policies(), vec!["invoices".to_owned()]);
    p.task_id = None;
    assert_eq!(run(&p).effect(), Effect::Deny);
    Ok(())
}

#[test]
fn each_session_counter_reaches_the_policies() -> TestResult {
    let dir = temp_set(&[(
        "p.cedar",
        r#"
@id("all") permit (principal, action, resource);
@id("task-calls") forbid (principal, action, resource) when { context.calls_in_task >= 10 };
@id("tool-calls") forbid (principal, action, resource) when { context.tool_calls_in_session >= 3 };
@id("rate") forbid (principal, action, resource) when { context.calls_last_minute >= 60 };
@id("money") forbid (principal, action, resource) when { context.amount_in_task > 100 };
@id("approved") forbid (principal, action, resource) when { context.approved };
@id("session") forbid (principal, action, resource) when { context.calls_in_session >= 1000 };
"#,
    )])?;
    let engine = PolicyEngine::load_dir(dir.path())?;
    let c = call("docs.search", ToolClass::Read, json!({}))?;
    let p = principal("");
    let run = |s: SessionFacts| decide_with(&engine, &p, &c, &s);
    let d = run(SessionFacts::default());
    assert_eq!(d.policies(), vec!["all".to_owned()], "{d:?}");

    let cases: [(&str, SessionFacts, SessionFacts); 6] = [
        (
            "task-calls",
            SessionFacts {
                calls_in_task: 9,
                ..SessionFacts::default()
            },
            SessionFacts {
                calls_in_task: 10,
                ..SessionFacts::default()
            },
        ),
        (
            "tool-calls",
            SessionFacts {
                tool_calls_in_session: 2,
                ..SessionFacts::default()
            },
            SessionFacts {
                tool_calls_in_session: 3,
                ..SessionFacts::default()
            },
        ),
        (
            "rate",
            SessionFacts {
                calls_last_minute: 59,
                ..SessionFacts::default()
            },
            SessionFacts {
                calls_last_minute: 60,
                ..SessionFacts::default()
            },
        ),
        (
            "money",
            SessionFacts {
                amount_in_task: 100,
                ..SessionFacts::default()
            },
            SessionFacts {
                amount_in_task: 101,
                ..SessionFacts::default()
            },
        ),
        (
            "approved",
            SessionFacts {
                approved: false,
                ..SessionFacts::default()
            },
            SessionFacts {
                approved: true,
                ..SessionFacts::default()
            },
        ),
        (
            "session",
            SessionFacts {
                calls_in_session: 999,
                ..SessionFacts::default()
            },
            SessionFacts {
                calls_in_session: 1000,
                ..SessionFacts::default()
            },
        ),
    ];
    for (id, below, at) in cases {
        let d = run(below);
        assert_eq!(d.effect(), Effect::Allow, "{id} below the limit: {d:?}");
        let d = run(at);
        assert_eq!(d.effect(), Effect::Deny, "{id} at the limit: {d:?}");
        assert_eq!(d.policies(), vec![id.to_owned()], "{d:?}");
    }

    // Counters beyond Cedar's `Long` reach policies as i64::MAX, not as a
    // wrapped negative number.
    let d = run(SessionFacts {
        calls_in_task: u64::MAX,
        ..SessionFacts::default()
    });
    assert_eq!(d.policies(), vec!["task-calls".to_owned()], "{d:?}");
    Ok(())
}

/// A reload that is refused leaves the last good set serving, unchanged.
fn assert_refused_reload_keeps_serving(
    files: &[(&str, &str)],
    kind: fn(&PolicyError) -> bool,
    needles: &[&str],
) -> TestResult {
    let dir = temp_set(&[("p.cedar", READ_PERMIT)])?;
    let engine = PolicyEngine::load_dir(dir.path())?;
    let good = engine.policy_hash();
    let c = call("docs.search", ToolClass::Read, json!({}))?;
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text)?;
    }
    let err = engine.reload().err().ok_or("reload accepted a bad set")?;
    assert!(kind(&err), "{err:?}");
    let msg = err.to_string();
    for needle in needles {
        assert!(msg.contains(needle), "{needle:?} not in: {msg}");
    }
    assert_eq!(engine.reload_failures(), 1);
    assert_eq!(engine.policy_hash(), good);
    let d = decide(&engine, "docs.*", &c);
    assert_eq!(d.effect(), Effect::Allow, "{d:?}");
    assert_eq!(d.policy_hash(), good);
    Ok(())
}

#[test]
fn reload_refuses_a_syntax_error_with_its_position() -> TestResult {
    assert_refused_reload_keeps_serving(
        &[(
            "99-broken.cedar",
            "@id(\"broken\")\npermit (principal, action, resource)\nwhen { context.in_scope && };\n",
        )],
        |e| matches!(e, PolicyError::Syntax(_)),
        &["99-broken.cedar:3:"],
    )
}

#[test]
fn reload_refuses_a_policy_that_violates_the_schema() -> TestResult {
    assert_refused_reload_keeps_serving(
        &[(
            "99-types.cedar",
            "@id(\"types\")\nforbid (principal, action, resource)\nwhen {\n  context.calls_in_task > \"many\"\n};\n",
        )],
        |e| matches!(e, PolicyError::Invalid(_)),
        &["99-types.cedar:4:", "strict mode"],
    )
}

#[test]
fn reload_refuses_a_policy_reading_an_unknown_attribute() -> TestResult {
    assert_refused_reload_keeps_serving(
        &[(
            "99-typo.cedar",
            "@id(\"typo\")\nforbid (principal, action, resource)\nwhen { context.calls_per_minute > 10 };\n",
        )],
        |e| matches!(e, PolicyError::Invalid(_)),
        &["99-typo.cedar:3:", "calls_per_minute"],
    )?;
    // An unknown entity attribute likewise; an undeclared argument behind
    // `has` makes the forbid impossible, which is refused as well.
    assert_refused_reload_keeps_serving(
        &[(
            "99-typo.cedar",
            "forbid (principal, action, resource)\nwhen { !context.build.trusted };\n",
        )],
        |e| matches!(e, PolicyError::Invalid(_)),
        &["99-typo.cedar:2:", "trusted"],
    )?;
    assert_refused_reload_keeps_serving(
        &[(
            "99-typo.cedar",
            "forbid (principal, action, resource)\nwhen { context.args has iban && context.args.iban == \"x\" };\n",
        )],
        |e| matches!(e, PolicyError::Invalid(_)),
        &["99-typo.cedar:1:1:", "impossible", "declare arguments"],
    )
}

#[test]
fn reload_refuses_a_schema_that_breaks_the_contract() -> TestResult {
    let schema = std::fs::read_to_string(shipped_dir().join("mandate.cedarschema"))?;
    for (from, to, needle) in [
        ("approved: Bool,", "", "does not declare `approved`"),
        (
            "calls_last_minute: Long,",
            "calls_last_minute: String,",
            "calls_last_minute",
        ),
        (
            "registered: Bool,",
            "registered: Bool,\n    owner: String,",
            "Build",
        ),
        ("entity User in [Group];", "entity User;", "User in [Group]"),
    ] {
        let broken = schema.replace(from, to);
        assert_ne!(broken, schema, "{from}");
        assert_refused_reload_keeps_serving(
            &[("mandate.cedarschema", &broken)],
            |e| matches!(e, PolicyError::Contract(_)),
            &["mandate.cedarschema", needle],
        )?;
    }
    Ok(())
}

/// Slicing and combining give what Cedar gives on the whole set: the same
/// effect, the same determining policies and the same erring policies.
#[test]
fn sliced_evaluation_matches_the_whole_set() -> TestResult {
    let extra = r#"
@id("x-any") permit (principal, action, resource) when { context.args has query };
@id("x-group") forbid (principal, action in Mandate::Action::"call", resource)
when { context.user in Mandate::Group::"blocked" };
@id("x-eq-group") permit (principal, action == Mandate::Action::"call", resource);
@id("x-list") permit (principal, action in [Mandate::Action::"write", Mandate::Action::"financial"], resource in Mandate::Upstream::"bank");
@id("x-tool") forbid (principal, action, resource == Mandate::Tool::"docs.send_mail") when { context.taint.contains("secret") };
@id("x-tool-in") permit (principal, action, resource in Mandate::Tool::"wiki.update_page");
@id("x-is") permit (principal, action == Mandate::Action::"access_control", resource is Mandate::Tool) when { context.build.registered };
@id("x-is-in") forbid (principal, action, resource is Mandate::Tool in Mandate::Upstream::"iam") when { context.calls_last_minute > 3 };
@id("x-overflow") forbid (principal, action, resource in Mandate::Upstream::"bank")
when { context.args has amount && context.args.amount * 1000000000000 > 0 };
@id("x-agent") permit (principal == Mandate::Agent::"assistant", action == Mandate::Action::"irreversible", resource);
@id("x-other-agent") forbid (principal == Mandate::Agent::"other", action, resource);
@id("x-nowhere") permit (principal, action, resource == Mandate::Tool::"nowhere.tool");
"#;
    let mut files: Vec<(String, String)> = Vec::new();
    for entry in std::fs::read_dir(shipped_dir())? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "cedar")
            && let Some(name) = path.file_name().and_then(|n| n.to_str())
        {
            files.push((name.to_owned(), std::fs::read_to_string(&path)?));
        }
    }
    files.push(("90-extra.cedar".to_owned(), extra.to_owned()));
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let dir = temp_set(&refs)?;
    let engine = PolicyEngine::load_dir(dir.path())?;
    engine.set_directory(directory(&[("bob", &["blocked"])], &[("b1", "one")]));
    let versioned = engine.directory.load();
    let snap = engine.current.load();

    let tools = [
        "docs.search",
        "docs.send_mail",
        "bank.transfer",
        "bank.get_balance",
        "wiki.update_page",
        "iam.grant_role",
        "nowhere.tool",
    ];
    let args = [
        json!({}),
        json!({"query": "q"}),
        json!({"amount": 5, "to": "acc-1"}),
        json!({"amount": 10_000_000, "to": "ACME-1"}),
    ];
    let sessions = [
        SessionFacts::default(),
        SessionFacts {
            taint: BTreeSet::from(["secret".to_owned(), "untrusted".to_owned()]),
            calls_last_minute: 70,
            calls_in_task: 600,
            ..SessionFacts::default()
        },
    ];
    let mut principals = Vec::new();
    for (sub, agent, build) in [
        ("alice", "assistant", Some("b1")),
        ("bob", "assistant", None),
        ("carol", "other", Some("b2")),
    ] {
        let mut p = principal("docs.* bank.* wiki.update_page");
        p.sub = sub.into();
        p.act = vec![agent.into()];
        p.build = build.map(str::to_owned);
        principals.push(p);
    }

    let mut compared = 0;
    for tool in tools {
        for class in ToolClass::ALL {
            for a in &args {
                for s in &sessions {
                    for p in &principals {
                        let c = call(tool, class, a.clone())?;
                        let req = DecisionRequest {
                            caller: p.caller(),
                            call: &c,
                            session: s,
                            now_unix: 0,
                        };
                        let got = engine.decide(&req);
                        let prepared = request::prepare(&snap, &versioned, &req)?;
                        let whole = snap.authorizer.is_authorized(
                            &prepared.request,
                            &snap.policies,
                            &prepared.entities,
                        );
                        let errors: BTreeSet<String> = whole
                            .diagnostics()
                            .errors()
                            .map(|e| match e {
                                cedar_policy::AuthorizationError::PolicyEvaluationError(pe) => {
                                    pe.policy_id().to_string()
                                }
                            })
                            .collect();
                        let determining: BTreeSet<String> = whole
                            .diagnostics()
                            .reason()
                            .map(ToString::to_string)
                            .collect();
                        let deny = whole.decision() == cedar_policy::Decision::Deny;
                        let (effect, policies) = if !errors.is_empty() {
                            let mut ids = errors.clone();
                            if deny {
                                ids.extend(determining);
                            }
                            (Effect::Deny, ids)
                        } else if deny {
                            (Effect::Deny, determining)
                        } else {
                            (Effect::Allow, determining)
                        };
                        let context = format!("{tool} {class} {a} {:?} {}", s.taint, p.sub);
                        assert_eq!(got.effect(), effect, "{context}: {got:?}");
                        let got_policies: BTreeSet<String> =
                            got.policies().iter().cloned().collect();
                        assert_eq!(got_policies, policies, "{context}: {got:?}");
                        compared += 1;
                    }
                }
            }
        }
    }
    assert_eq!(compared, 7 * 6 * 4 * 2 * 3);
    Ok(())
}

#[test]
fn an_impossible_permit_is_only_a_warning() -> TestResult {
    let dir = temp_set(&[
        ("p.cedar", READ_PERMIT),
        (
            "q.cedar",
            "@id(\"never\")\npermit (principal, action, resource)\nwhen { context.args has iban };\n",
        ),
    ])?;
    let summary = PolicyEngine::check_dir(dir.path())?;
    assert!(
        summary.contains("warning: q.cedar:1:1:") && summary.contains("impossible"),
        "{summary}"
    );
    Ok(())
}

#[test]
fn policy_test_files_take_session_facts_and_a_directory() -> TestResult {
    let dir = temp_set(&[(
        "p.cedar",
        r#"
@id("all") permit (principal, action, resource);
@id("staff-only") forbid (principal, action, resource) unless { context.user in Mandate::Group::"staff" };
@id("rate") forbid (principal, action, resource) when { context.calls_last_minute >= 5 };
"#,
    )])?;
    let engine = PolicyEngine::load_dir(dir.path())?;
    let tests = tempfile::tempdir()?;
    std::fs::write(
        tests.path().join("t.json"),
        r#"{
  "principal": {"sub": "alice", "act": ["assistant"]},
  "directory": {"groups": {"alice": ["staff"]}},
  "cases": [
    {"name": "staff, slow", "tool": "docs.search", "class": "read",
     "session": {"calls_last_minute": 4}, "expect": {"effect": "allow"}},
    {"name": "staff, fast", "tool": "docs.search", "class": "read",
     "session": {"calls_last_minute": 5}, "expect": {"effect": "deny", "policies": ["rate"]}},
    {"name": "not staff", "principal": {"sub": "bob", "act": ["assistant"]},
     "tool": "docs.search", "class": "read", "expect": {"effect": "deny", "policies": ["staff-only"]}}
  ]
}"#,
    )?;
    let report = run_tests(&engine, tests.path())?;
    assert!(report.all_passed(), "{report}");
    // The file's directory was used for its cases only.
    assert!(engine.directory().groups.is_empty());

    std::fs::write(
        tests.path().join("t.json"),
        r#"{"cases": [{"name": "x", "tool": "docs.search", "class": "read",
  "session": {"calls_per_minute": 4}, "expect": {"effect": "allow"}}]}"#,
    )?;
    let err = run_tests(&engine, tests.path()).err().ok_or("accepted")?;
    assert!(err.to_string().contains("calls_per_minute"), "{err}");
    Ok(())
}

#[test]
fn decimal_arguments_compare_as_decimals() -> TestResult {
    let dir = temp_set(&[(
        "limit.cedar",
        r#"
@id("small-payments")
permit (principal, action == Mandate::Action::"financial", resource)
when { context.in_scope && context.args has price && context.args.price.lessThanOrEqual(decimal("100.0")) };
"#,
    )])?;
    let schema_path = dir.path().join("mandate.cedarschema");
    let schema = std::fs::read_to_string(&schema_path)?
        .replace("amount?: Long,", "amount?: Long,\n    price?: decimal,");
    std::fs::write(&schema_path, schema)?;
    let engine = PolicyEngine::load_dir(dir.path())?;
    let pay = |price: serde_json::Value| -> Result<Decision, String> {
        let c = call("bank.pay", ToolClass::Financial, json!({ "price": price }))?;
        Ok(decide(&engine, "bank.*", &c))
    };
    for (price, effect) in [
        (json!(99.99), Effect::Allow),
        (json!(100), Effect::Allow),
        (json!(100.0001), Effect::Deny),
        (json!(30000), Effect::Deny),
        (json!(-0.5), Effect::Allow),
    ] {
        let d = pay(price.clone())?;
        assert_eq!(d.effect(), effect, "price {price}: {d:?}");
    }
    // More precision than a Cedar decimal holds is refused, never rounded
    // down to fit under the limit.
    let d = pay(json!(99.99999))?;
    assert_eq!(d.effect(), Effect::Deny, "{d:?}");
    assert!(
        d.reasons().iter().any(|r| r.contains("`price`")),
        "{:?}",
        d.reasons()
    );
    Ok(())
}

#[test]
fn a_set_in_memory_checks_and_hashes_as_its_directory_does() -> TestResult {
    let dir = shipped_dir();
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.is_file() {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or("file name")?
                .to_owned();
            files.insert(name, std::fs::read_to_string(&path)?);
        }
    }
    let from_disk = PolicyEngine::load_dir(&dir)?.policy_hash();
    assert_eq!(PolicyEngine::check_sources(&files)?, from_disk);
    // A broken policy is refused with the file named, and nothing is written anywhere.
    files.insert(
        "99-broken.cedar".into(),
        "permit (principal, action, resource) when { context.nope };".into(),
    );
    let err = PolicyEngine::check_sources(&files)
        .err()
        .ok_or("a broken set was accepted")?
        .to_string();
    assert!(err.contains("99-broken.cedar"), "{err}");
    files.remove("99-broken.cedar");
    files.insert("../escape.cedar".into(), READ_PERMIT.into());
    assert!(PolicyEngine::check_sources(&files).is_err());
    Ok(())
}

#[test]
fn agent_reason_is_said_by_the_denying_forbid_and_checked() -> TestResult {
    let set = r#"
@id("no-transfers")
@reason("operators: transfers are closed this week")
@agent_reason("payments are paused this week; ask the user to pay by hand")
forbid (principal, action, resource) when { resource == Mandate::Tool::"bank.transfer" };
@id("all") permit (principal, action, resource);
"#;
    let dir = temp_set(&[("p.cedar", set)])?;
    let engine = PolicyEngine::load_dir(dir.path())?;
    let denied = decide(
        &engine,
        "bank.*",
        &call("bank.transfer", ToolClass::Financial, serde_json::json!({}))?,
    );
    assert!(!denied.is_allow());
    assert_eq!(
        denied.record().agent_reason.as_deref(),
        Some("payments are paused this week; ask the user to pay by hand")
    );
    // The operators' reason is recorded, not said.
    assert_eq!(
        denied.reasons(),
        ["operators: transfers are closed this week"]
    );
    let allowed = decide(
        &engine,
        "bank.*",
        &call("bank.get_balance", ToolClass::Read, serde_json::json!({}))?,
    );
    assert!(allowed.is_allow() && allowed.record().agent_reason.is_none());
    for (text, problem) in [
        (
            "@agent_reason(\"hi\") permit (principal, action, resource);",
            "only applies to `forbid`",
        ),
        (
            "@agent_reason(\" \") forbid (principal, action, resource);",
            "visible text",
        ),
        (
            "@agent_reason(\"two\nlines\") forbid (principal, action, resource);",
            "visible text",
        ),
    ] {
        let bad = temp_set(&[("p.cedar", text)])?;
        let err = PolicyEngine::load_dir(bad.path())
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains(problem)),
            "{text}: {err:?}"
        );
    }
    Ok(())
}
