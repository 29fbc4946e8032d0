use super::*;
use mandate_core::ManualClock;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const T0: i64 = 1_800_000_000_000;

fn open() -> TestResult<(tempfile::TempDir, Store, ManualClock)> {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::at_ms(T0);
    let store = Store::open(&dir.path().join("control.sqlite"))?.with_clock(clock.clock());
    Ok((dir, store, clock))
}

fn key(task: &str) -> IntentKey {
    IntentKey::new("https://mandate.example", "alice@example.com", task)
}

/// Read the history (granted by policy), pay the landlord twice at most
/// (needs the user), and any outbound tool (refused by policy).
fn intent() -> TestResult<Intent> {
    Ok(Intent::parse(&json!([
        {"type": "mandate_tool_call", "tool": "bank.get_most_recent_transactions", "max_uses": 1},
        {"type": "mandate_tool_call", "tool": "bank.send_money", "identifier": "rent",
         "arguments": {"recipient": {"equals": "GB29NWBK60161331926819"}, "amount": {"max": 2200}},
         "max_uses": 2},
        {"type": "mandate_tool_call", "class": "outbound"},
    ]))?)
}

use GrantStatus::{Granted, Pending, Refused};

fn statuses(t: &TaskIntent) -> Vec<GrantStatus> {
    t.grants.iter().map(|g| g.status).collect()
}

fn ids(i: &Intent) -> Vec<&str> {
    i.grants().iter().map(|g| g.identifier()).collect()
}

#[test]
fn pending_grants_are_one_approval_granted_together() -> TestResult {
    let (_dir, store, _) = open()?;
    let i = intent()?;
    let t = store.record_intent(
        &key("t1"),
        &i,
        &[Granted, Pending, Refused],
        "assistant",
        T0 + 60_000,
    )?;
    assert_eq!(t.approval, Some(ApprovalStatus::Pending));
    let approval = t.approval_id.clone().ok_or("an approval id")?;
    assert!(approval.starts_with("apr-"));
    assert_eq!(t.intent_hash, i.hash());
    assert_eq!(ids(&t.granted()), ["g1"]);
    assert_eq!(ids(&t.pending()), ["rent"]);
    assert_eq!(
        t.state("rent").map(|g| (g.max_uses, g.uses_left, g.used)),
        Some((Some(2), Some(2), 0))
    );
    // Pending: not usable yet.
    assert!(!t.has_use_left("rent"));
    assert_eq!(store.consume_grant(&key("t1"), "rent")?, None);
    // The approval page's list.
    let listed = store.intent_approvals(Some(ApprovalStatus::Pending), 10)?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, key("t1"));
    assert_eq!(store.intent_approval(&approval)?, t);
    // A decision binds to the intent shown.
    assert!(matches!(
        store.decide_intent(&approval, true, "alice@example.com", None, "another-hash"),
        Err(ControlError::Conflict(_))
    ));
    let t = store.decide_intent(&approval, true, "alice@example.com", Some("yes"), &i.hash())?;
    assert_eq!(t.approval, Some(ApprovalStatus::Approved));
    assert_eq!(t.decided_by.as_deref(), Some("alice@example.com"));
    assert_eq!(statuses(&t), [Granted, Granted, Refused]);
    assert_eq!(ids(&t.granted()), ["g1", "rent"]);
    // Decided once.
    assert!(matches!(
        store.decide_intent(&approval, false, "alice@example.com", None, &i.hash()),
        Err(ControlError::Conflict(_))
    ));
    assert!(
        store
            .intent_approvals(Some(ApprovalStatus::Pending), 10)?
            .is_empty()
    );
    assert_eq!(store.intent_approvals(None, 10)?.len(), 1);
    assert_eq!(
        store.intent(&key("t1"))?.map(|t| t.granted().len()),
        Some(2)
    );
    Ok(())
}

#[test]
fn a_refused_intent_refuses_every_pending_grant() -> TestResult {
    let (_dir, store, _) = open()?;
    let i = intent()?;
    let t = store.record_intent(
        &key("t1"),
        &i,
        &[Granted, Pending, Pending],
        "assistant",
        T0 + 60_000,
    )?;
    let approval = t.approval_id.ok_or("an approval id")?;
    let t = store.decide_intent(&approval, false, "alice@example.com", Some("no"), &i.hash())?;
    assert_eq!(t.approval, Some(ApprovalStatus::Denied));
    assert_eq!(statuses(&t), [Granted, Refused, Refused]);
    assert_eq!(store.consume_grant(&key("t1"), "rent")?, None);
    assert!(store.consume_grant(&key("t1"), "g1")?.is_some());
    Ok(())
}

#[test]
fn an_intent_policy_grants_whole_needs_no_approval() -> TestResult {
    let (_dir, store, _) = open()?;
    let t = store.record_intent(
        &key("t1"),
        &intent()?,
        &[Granted, Granted, Refused],
        "assistant",
        T0,
    )?;
    assert_eq!((t.approval_id, t.approval), (None, None));
    assert!(store.intent_approvals(None, 10)?.is_empty());
    // An empty intent is an intent too: nothing granted.
    let t = store.record_intent(&key("t2"), &Intent::default(), &[], "assistant", T0)?;
    assert!(t.granted().is_empty() && t.approval.is_none());
    Ok(())
}

#[test]
fn a_task_has_one_intent() -> TestResult {
    let (_dir, store, _) = open()?;
    let i = intent()?;
    let first = store.record_intent(
        &key("t1"),
        &i,
        &[Granted, Pending, Refused],
        "assistant",
        T0 + 1,
    )?;
    // The same intent again: the record as it is (statuses unchanged).
    let again = store.record_intent(
        &key("t1"),
        &i,
        &[Granted, Granted, Granted],
        "assistant",
        T0 + 2,
    )?;
    assert_eq!(again, first);
    let other = Intent::parse(&json!([{"type": "mandate_tool_call", "tool": "bank.send_money"}]))?;
    assert!(matches!(
        store.record_intent(&key("t1"), &other, &[Granted], "assistant", T0),
        Err(ControlError::Conflict(_))
    ));
    // Malformed requests.
    assert!(matches!(
        store.record_intent(&key("t2"), &i, &[Granted], "assistant", T0),
        Err(ControlError::Invalid(_))
    ));
    assert!(matches!(
        store.record_intent(
            &IntentKey::new("", "alice", "t3"),
            &i,
            &[Granted; 3],
            "assistant",
            T0
        ),
        Err(ControlError::Invalid(_))
    ));
    Ok(())
}

#[test]
fn uses_are_counted_down_to_zero_and_no_further() -> TestResult {
    let (_dir, store, clock) = open()?;
    let k = key("t1");
    store.record_intent(
        &k,
        &intent()?,
        &[Granted, Granted, Granted],
        "assistant",
        T0,
    )?;
    let first = store.consume_grant(&k, "rent")?.ok_or("a use")?;
    assert_eq!(
        first,
        Consumed {
            identifier: "rent".into(),
            uses_left: Some(1),
            used: 1
        }
    );
    clock.advance(std::time::Duration::from_secs(1));
    assert_eq!(
        store.consume_grant(&k, "rent")?.map(|c| c.uses_left),
        Some(Some(0))
    );
    assert_eq!(store.consume_grant(&k, "rent")?, None);
    let t = store.intent(&k)?.ok_or("recorded")?;
    let rent = t.state("rent").ok_or("rent")?;
    assert_eq!(
        (rent.uses_left, rent.used, rent.last_used_ms),
        (Some(0), 2, Some(T0 + 1000))
    );
    assert!(!t.has_use_left("rent"));
    // No count: used as often as asked, counted all the same.
    for n in 1..=5 {
        assert_eq!(
            store.consume_grant(&k, "g2")?,
            Some(Consumed {
                identifier: "g2".into(),
                uses_left: None,
                used: n
            })
        );
    }
    assert!(store.intent(&k)?.ok_or("recorded")?.has_use_left("g2"));
    // Unknown grants have nothing to give.
    assert_eq!(store.consume_grant(&k, "nope")?, None);
    Ok(())
}

#[test]
fn consume_first_takes_the_first_covering_grant_with_a_use_left() -> TestResult {
    let (_dir, store, _) = open()?;
    let k = key("t1");
    store.record_intent(
        &k,
        &intent()?,
        &[Granted, Granted, Granted],
        "assistant",
        T0,
    )?;
    let order = ["rent", "g2"];
    assert_eq!(
        store.consume_first(&k, &order)?.map(|c| c.identifier),
        Some("rent".into())
    );
    assert_eq!(
        store.consume_first(&k, &order)?.map(|c| c.identifier),
        Some("rent".into())
    );
    assert_eq!(
        store.consume_first(&k, &order)?.map(|c| c.identifier),
        Some("g2".into())
    );
    assert_eq!(store.consume_first(&k, &["rent"])?, None);
    assert_eq!(store.consume_first(&k, &[])?, None);
    Ok(())
}

#[test]
fn another_user_issuer_or_task_can_neither_read_nor_use_the_grants() -> TestResult {
    let (_dir, store, _) = open()?;
    let k = key("t1");
    let t = store.record_intent(
        &k,
        &intent()?,
        &[Granted, Granted, Granted],
        "assistant",
        T0,
    )?;
    let others = [
        IntentKey::new("https://mandate.example", "mallory@example.com", "t1"),
        IntentKey::new("https://evil.example", "alice@example.com", "t1"),
        IntentKey::new("https://mandate.example", "alice@example.com", "t2"),
    ];
    for other in &others {
        assert_eq!(store.intent(other)?, None, "{other:?}");
        assert_eq!(store.intent(other)?.map(|t| t.granted()), None);
        assert_eq!(store.consume_grant(other, "rent")?, None);
        assert_eq!(store.consume_first(other, &["g1", "rent", "g2"])?, None);
    }
    assert_eq!(store.intent(&k)?, Some(t));
    // Another user's task of the same id has its own intent and uses.
    store.record_intent(
        &others[0],
        &intent()?,
        &[Granted, Granted, Granted],
        "assistant",
        T0,
    )?;
    store.consume_grant(&others[0], "rent")?;
    store.consume_grant(&others[0], "rent")?;
    assert_eq!(
        store.consume_grant(&k, "rent")?.map(|c| c.uses_left),
        Some(Some(1))
    );
    Ok(())
}

#[test]
fn a_late_or_closed_approval_refuses_the_pending_grants() -> TestResult {
    let (_dir, store, clock) = open()?;
    let i = intent()?;
    let t = store.record_intent(
        &key("t1"),
        &i,
        &[Pending, Pending, Granted],
        "assistant",
        T0 + 60_000,
    )?;
    let approval = t.approval_id.ok_or("an approval id")?;
    clock.advance(std::time::Duration::from_secs(61));
    assert!(matches!(
        store.decide_intent(&approval, true, "alice@example.com", None, &i.hash()),
        Err(ControlError::Conflict(_))
    ));
    let t = store.intent_approval(&approval)?;
    assert_eq!(t.approval, Some(ApprovalStatus::Expired));
    assert_eq!(statuses(&t), [Refused, Refused, Granted]);

    let t = store.record_intent(
        &key("t2"),
        &i,
        &[Pending, Granted, Granted],
        "assistant",
        T0 + 600_000,
    )?;
    let approval = t.approval_id.ok_or("an approval id")?;
    assert!(matches!(
        store.close_intent_approval(&approval, ApprovalStatus::Approved),
        Err(ControlError::Invalid(_))
    ));
    assert!(store.close_intent_approval(&approval, ApprovalStatus::Withdrawn)?);
    assert!(!store.close_intent_approval(&approval, ApprovalStatus::Expired)?);
    let t = store.intent_approval(&approval)?;
    assert_eq!(
        (t.approval, statuses(&t)),
        (
            Some(ApprovalStatus::Withdrawn),
            vec![Refused, Granted, Granted]
        )
    );
    assert!(matches!(
        store.decide_intent(&approval, true, "alice@example.com", None, &i.hash()),
        Err(ControlError::Conflict(_))
    ));
    assert!(matches!(
        store.intent_approval("apr-nope"),
        Err(ControlError::NotFound { .. })
    ));
    Ok(())
}

#[test]
fn intents_and_their_uses_survive_a_restart() -> TestResult {
    let (dir, store, _) = open()?;
    let k = key("t1");
    store.record_intent(
        &k,
        &intent()?,
        &[Granted, Granted, Pending],
        "assistant",
        T0,
    )?;
    store.consume_grant(&k, "rent")?;
    let before = store.intent(&k)?;
    drop(store);
    let store = Store::open(&dir.path().join("control.sqlite"))?;
    assert_eq!(store.intent(&k)?, before);
    assert_eq!(
        store.consume_grant(&k, "rent")?.map(|c| c.uses_left),
        Some(Some(0))
    );
    Ok(())
}

#[test]
fn a_tampered_row_is_reported_not_trusted() -> TestResult {
    let (_dir, store, _) = open()?;
    let k = key("t1");
    store.record_intent(
        &k,
        &intent()?,
        &[Granted, Granted, Granted],
        "assistant",
        T0,
    )?;
    store.write(|tx| {
        tx.execute(
            "UPDATE intents SET intent = replace(intent, '2200', '999999')",
            crate::db::args![],
        )
    })?;
    assert!(matches!(
        store.intent(&k),
        Err(ControlError::Corrupt { .. })
    ));
    Ok(())
}

/// Many threads, on two connections to one database (as two replicas
/// would be), race for the last uses: exactly `max_uses` calls win.
#[test]
fn racing_callers_take_exactly_the_uses_there_are() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("control.sqlite");
    let a = Arc::new(Store::open(&path)?);
    let b = Arc::new(Store::open(&path)?);
    let limited = Intent::parse(&json!([
        {"type": "mandate_tool_call", "tool": "bank.send_money", "max_uses": 7},
        {"type": "mandate_tool_call", "tool": "bank.get_balance"},
    ]))?;
    let k = key("race");
    a.record_intent(&k, &limited, &[Granted, Granted], "assistant", T0)?;
    let won = AtomicUsize::new(0);
    let unlimited = AtomicUsize::new(0);
    let failures = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for n in 0..16 {
            let store = if n % 2 == 0 {
                Arc::clone(&a)
            } else {
                Arc::clone(&b)
            };
            let (k, won, unlimited, failures) = (&k, &won, &unlimited, &failures);
            s.spawn(move || {
                for _ in 0..5 {
                    match store.consume_grant(k, "g1") {
                        Ok(Some(_)) => {
                            won.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(None) => {}
                        Err(_) => {
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    if let Ok(Some(_)) = store.consume_grant(k, "g2") {
                        unlimited.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    assert_eq!(won.load(Ordering::SeqCst), 7);
    assert_eq!(unlimited.load(Ordering::SeqCst), 80);
    let t = b.intent(&k)?.ok_or("recorded")?;
    assert_eq!(
        t.state("g1").map(|g| (g.uses_left, g.used)),
        Some((Some(0), 7))
    );
    assert_eq!(
        t.state("g2").map(|g| (g.uses_left, g.used)),
        Some((None, 80))
    );
    Ok(())
}
