//! A model-based test of the approval lifecycle in the control store:
//! random sequences of create / approve / deny (with the hash the person
//! saw, matching or not) / close (expire, withdraw, …) / release (with the
//! held call's hash, matching or not) / re-release, on requests before and
//! past their deadline and on unknown ids, run against the real SQLite
//! store and a small state machine. After every step the two must agree,
//! and the safety properties hold: a request is released at most once,
//! only when approved, only with its exact argument hash, and a decided
//! request cannot be decided again.

use mandate_control::{ApprovalStatus, ControlError, ControlStore, NewApproval};
use proptest::prelude::*;
use std::collections::BTreeMap;

const HASHES: [&str; 3] = ["hash-a", "hash-b", "hash-c"];

fn hash(i: u8) -> &'static str {
    HASHES.get(usize::from(i)).copied().unwrap_or("hash-a")
}

#[derive(Debug, Clone)]
enum Target {
    /// One of the requests created so far (none yet: an unknown id).
    Existing(prop::sample::Index),
    Unknown,
}

#[derive(Debug, Clone)]
enum Op {
    /// A held call; `late` requests are already past their deadline.
    Create { hash: u8, late: bool },
    /// A person's decision, bound to the hash they were shown.
    Decide {
        target: Target,
        approve: bool,
        seen: u8,
    },
    /// The gateway ends a request without a person (timeout, client gone).
    Close {
        target: Target,
        status: ApprovalStatus,
    },
    /// The held call asks to go ahead with its arguments' hash.
    Release { target: Target, hash: u8 },
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        9 => any::<prop::sample::Index>().prop_map(Target::Existing),
        1 => Just(Target::Unknown),
    ]
}

fn status() -> impl Strategy<Value = ApprovalStatus> {
    prop_oneof![
        Just(ApprovalStatus::Pending),
        Just(ApprovalStatus::Approved),
        Just(ApprovalStatus::Denied),
        Just(ApprovalStatus::Expired),
        Just(ApprovalStatus::Withdrawn),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u8..3, prop::bool::weighted(0.2)).prop_map(|(hash, late)| Op::Create { hash, late }),
        3 => (target(), any::<bool>(), prop_oneof![3 => Just(0u8), 1 => 0u8..3])
            .prop_map(|(target, approve, seen)| Op::Decide { target, approve, seen }),
        1 => (target(), status()).prop_map(|(target, status)| Op::Close { target, status }),
        3 => (target(), prop_oneof![3 => Just(0u8), 1 => 0u8..3])
            .prop_map(|(target, hash)| Op::Release { target, hash }),
    ]
}

/// The state machine: what one request is, in the model.
#[derive(Debug, Clone)]
struct Model {
    hash: &'static str,
    late: bool,
    status: ApprovalStatus,
    released: bool,
    /// Whether a person's decision was recorded (approve or deny).
    decided_by_person: bool,
}

/// What an operation should answer.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// `close_approval`'s answer: whether the request was still pending.
    Closed(bool),
    Conflict,
    Invalid,
    NotFound,
    /// Anything else (a storage failure): never expected.
    Other(String),
}

fn outcome<T>(r: &Result<T, ControlError>) -> Outcome {
    match r {
        Ok(_) => Outcome::Ok,
        Err(ControlError::Conflict(_)) => Outcome::Conflict,
        Err(ControlError::Invalid(_)) => Outcome::Invalid,
        Err(ControlError::NotFound { .. }) => Outcome::NotFound,
        Err(e) => Outcome::Other(e.to_string()),
    }
}

fn new_approval(args_hash: &str, late: bool) -> NewApproval {
    let now = mandate_core::Clock::system().now_ms();
    NewApproval {
        sub: "alice".into(),
        act: vec!["assistant".into()],
        build: None,
        task_id: Some("t".into()),
        session: "sid:s".into(),
        tool: "bank.transfer".into(),
        class: "financial".into(),
        args: serde_json::json!({"amount": 250, "to": "bob"}),
        args_hash: args_hash.into(),
        policies: vec!["high-impact-needs-approval".into()],
        reasons: vec!["high impact".into()],
        taint: Vec::new(),
        untrusted_sources: Vec::new(),
        decision_id: "d".into(),
        correlation_id: "c".into(),
        deadline_ms: if late { now - 1_000 } else { now + 3_600_000 },
        holder: "gw-1".into(),
    }
}

/// A store in a fresh directory, on tmpfs when there is one (the store
/// fsyncs every write; the model does not need the durability).
#[expect(clippy::expect_used, reason = "test setup must fail loudly")]
fn open_store() -> (tempfile::TempDir, ControlStore, tokio::runtime::Runtime) {
    let dir = tempfile::Builder::new()
        .prefix("approvals-model")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("a temporary directory");
    let store =
        ControlStore::open(&dir.path().join("control.sqlite")).expect("the control store opens");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    (dir, store, rt)
}

fn pick<'a>(ids: &'a [String], t: &Target) -> Option<&'a str> {
    match t {
        Target::Existing(i) if !ids.is_empty() => ids.get(i.index(ids.len())).map(String::as_str),
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_store_follows_the_approval_state_machine(ops in proptest::collection::vec(op(), 1..40)) {
        let (_dir, store, rt) = open_store();
        let mut ids: Vec<String> = Vec::new();
        let mut model: BTreeMap<String, Model> = BTreeMap::new();
        let mut releases: BTreeMap<String, u32> = BTreeMap::new();

        for op in &ops {
            match op {
                Op::Create { hash: h, late } => {
                    let created = rt.block_on(store.create_approval(new_approval(hash(*h), *late)));
                    prop_assert!(created.is_ok(), "{:?}", created);
                    if let Ok(a) = created {
                        prop_assert_eq!(a.status, ApprovalStatus::Pending);
                        ids.push(a.id.clone());
                        model.insert(a.id, Model {
                            hash: hash(*h),
                            late: *late,
                            status: ApprovalStatus::Pending,
                            released: false,
                            decided_by_person: false,
                        });
                    }
                }
                Op::Decide { target, approve, seen } => {
                    let seen = hash(*seen);
                    let Some(id) = pick(&ids, target) else {
                        let r = rt.block_on(store.decide_approval("apr-unknown", *approve, "carol", None, seen));
                        prop_assert_eq!(outcome(&r), Outcome::NotFound);
                        continue;
                    };
                    let Some(m) = model.get_mut(id) else { continue };
                    let r = rt.block_on(store.decide_approval(id, *approve, "carol", Some("ok"), seen));
                    let want = if m.status != ApprovalStatus::Pending || m.hash != seen {
                        Outcome::Conflict
                    } else if m.late {
                        m.status = ApprovalStatus::Expired;
                        Outcome::Conflict
                    } else {
                        m.status = if *approve { ApprovalStatus::Approved } else { ApprovalStatus::Denied };
                        m.decided_by_person = true;
                        Outcome::Ok
                    };
                    prop_assert_eq!(outcome(&r), want, "decide {:?} on {:?}", op, m);
                }
                Op::Close { target, status } => {
                    let Some(id) = pick(&ids, target) else {
                        let r = rt.block_on(store.close_approval("apr-unknown", *status));
                        let want = if matches!(status, ApprovalStatus::Pending | ApprovalStatus::Approved) {
                            Outcome::Invalid
                        } else {
                            Outcome::Closed(false)
                        };
                        prop_assert_eq!(r.as_ref().map_or_else(|_| outcome(&r), |b| Outcome::Closed(*b)), want);
                        continue;
                    };
                    let Some(m) = model.get_mut(id) else { continue };
                    let r = rt.block_on(store.close_approval(id, *status));
                    let want = if matches!(status, ApprovalStatus::Pending | ApprovalStatus::Approved) {
                        Outcome::Invalid
                    } else if m.status == ApprovalStatus::Pending {
                        m.status = *status;
                        Outcome::Closed(true)
                    } else {
                        Outcome::Closed(false)
                    };
                    prop_assert_eq!(r.as_ref().map_or_else(|_| outcome(&r), |b| Outcome::Closed(*b)), want, "{:?}", op);
                }
                Op::Release { target, hash: h } => {
                    let h = hash(*h);
                    let Some(id) = pick(&ids, target) else {
                        let r = rt.block_on(store.release_approval("apr-unknown", h));
                        prop_assert_eq!(outcome(&r), Outcome::NotFound);
                        continue;
                    };
                    let Some(m) = model.get_mut(id) else { continue };
                    let r = rt.block_on(store.release_approval(id, h));
                    let want = if m.status == ApprovalStatus::Approved && !m.released && m.hash == h {
                        m.released = true;
                        Outcome::Ok
                    } else {
                        Outcome::Conflict
                    };
                    prop_assert_eq!(outcome(&r), want, "release {:?} on {:?}", op, m);
                    if r.is_ok() {
                        *releases.entry(id.to_owned()).or_default() += 1;
                    }
                }
            }

            // The store agrees with the model on every request, and the
            // safety properties hold whatever the model says.
            for (id, m) in &model {
                let a = rt.block_on(store.approval(id));
                prop_assert!(a.is_ok(), "{:?}", a);
                let Ok(a) = a else { continue };
                prop_assert_eq!(a.status, m.status, "{}", id);
                prop_assert_eq!(a.released_ms.is_some(), m.released, "{}", id);
                prop_assert_eq!(a.decided_by.is_some(), m.decided_by_person, "{}", id);
                prop_assert_eq!(a.request.args_hash.as_str(), m.hash);
                if a.released_ms.is_some() {
                    prop_assert_eq!(a.status, ApprovalStatus::Approved, "released but not approved");
                }
                prop_assert!(releases.get(id).copied().unwrap_or(0) <= 1, "released twice");
            }
        }

        // Listing by status finds exactly the model's requests.
        for s in [
            ApprovalStatus::Pending,
            ApprovalStatus::Approved,
            ApprovalStatus::Denied,
            ApprovalStatus::Expired,
            ApprovalStatus::Withdrawn,
        ] {
            let listed = rt.block_on(store.approvals(Some(s), 1000)).map(|v| v.len()).unwrap_or(usize::MAX);
            prop_assert_eq!(listed, model.values().filter(|m| m.status == s).count(), "{:?}", s);
        }
    }
}

/// Two stores on one database (two gateway replicas) racing to release
/// the same approval: exactly one release wins.
#[test]
fn concurrent_releases_from_two_replicas_release_once() -> Result<(), ControlError> {
    let (dir, first, rt) = open_store();
    let second = ControlStore::open(&dir.path().join("control.sqlite"))?;
    for round in 0..5 {
        let a = rt.block_on(first.create_approval(new_approval("hash-a", false)))?;
        let a = rt.block_on(second.decide_approval(&a.id, true, "carol", None, "hash-a"))?;
        let rt = &rt;
        let wins = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let store = if i % 2 == 0 { &first } else { &second };
                    let id = a.id.clone();
                    s.spawn(move || rt.block_on(store.release_approval(&id, "hash-a")).is_ok())
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(false))
                .filter(|won| *won)
                .count()
        });
        assert_eq!(wins, 1, "round {round}");
        assert!(rt.block_on(first.approval(&a.id))?.released_ms.is_some());
    }
    Ok(())
}
