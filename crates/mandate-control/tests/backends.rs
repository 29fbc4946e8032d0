//! One suite, both backends: every case runs on SQLite and on PostgreSQL
//! (`MANDATE_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`; `skip` skips the PostgreSQL
//! half). PostgreSQL cases each get a schema of their own, dropped
//! afterwards. The cross-replica cases open two stores on one database,
//! as two `mandate serve` replicas do.

use mandate_control::ephemeral::{Kind, OnFull};
use mandate_control::{
    ApprovalStatus, ChangeKind, ControlError, ControlStore, GrantStatus, IntentKey, Location,
    McpSession, NewApproval, RevocationKind, TaskStatus, Topic,
};
use mandate_core::{CallerData, ManualClock, Scope};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn pg_url() -> String {
    std::env::var("MANDATE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A place for one test's store: a temporary SQLite file, or a fresh
/// PostgreSQL schema (dropped when this is).
struct Place {
    location: Location,
    _dir: Option<tempfile::TempDir>,
    schema: Option<String>,
}

impl Place {
    fn sqlite() -> TestResult<Self> {
        let dir = tempfile::tempdir()?;
        Ok(Self {
            location: Location::Sqlite(dir.path().join("control.sqlite")),
            _dir: Some(dir),
            schema: None,
        })
    }

    fn postgres() -> Option<Self> {
        let url = pg_url();
        if url == "skip" {
            return None;
        }
        let schema = format!(
            "ctl_t{}_{}_{}",
            std::process::id(),
            mandate_core::Clock::system().now_ms(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Some(Self {
            location: Location::Postgres {
                url,
                schema: schema.clone(),
            },
            _dir: None,
            schema: Some(schema),
        })
    }

    async fn open(&self) -> TestResult<Arc<ControlStore>> {
        Ok(Arc::new(
            ControlStore::open_at(self.location.clone())
                .await?
                .with_poll(Duration::from_millis(50)),
        ))
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some(schema) = self.schema.take() {
            let url = pg_url();
            // The blocking client needs a thread outside the runtime.
            let _ = std::thread::spawn(move || {
                if let Ok(mut c) = ::postgres::Client::connect(&url, ::postgres::NoTls) {
                    let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
                }
            })
            .join();
        }
    }
}

/// Runs `case` on SQLite, then on PostgreSQL (unless skipped).
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> super::TestResult {
                    super::$name(super::Place::sqlite()?).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> super::TestResult {
                    match super::Place::postgres() {
                        Some(place) => super::$name(place).await,
                        None => Ok(()),
                    }
                }
            )*
        }
    };
}

both!(
    revocations_are_durable_idempotent_and_liftable,
    the_change_gate_needs_two_operators,
    an_approval_binds_to_its_arguments_and_releases_once,
    ending_a_task_revokes_its_tokens,
    intent_grants_are_used_up_exactly_once,
    tool_pins_are_upserted,
    a_lease_has_one_holder_until_it_expires,
    mcp_sessions_are_found_by_every_replica_and_bounded,
    ephemeral_state_is_shared_bounded_and_taken_once,
);

fn mcp_session(id: &str, subject: &str, created_ms: i64, exp: i64) -> McpSession {
    McpSession {
        id: id.to_owned(),
        subject: subject.to_owned(),
        binding: format!("[\"iss\",\"{subject}\",[\"agent\"],\"sid-1\"]"),
        init_params: r#"{"protocolVersion":"2025-11-25"}"#.to_owned(),
        exp,
        created_ms,
    }
}

/// A session stored by one replica is found by another with its binding
/// and parameters; a later token raises its expiry; stored sessions are
/// bounded per subject (newest kept) and in total, and expired ones go.
async fn mcp_sessions_are_found_by_every_replica_and_bounded(place: Place) -> TestResult {
    let (a, b) = (place.open().await?, place.open().await?);
    let first = mcp_session("s1", "alice", 1_000, 5_000);
    a.open_mcp_session(first.clone(), 2).await?;
    assert_eq!(b.mcp_session("s1").await?, Some(first.clone()));
    assert_eq!(b.mcp_session("nope").await?, None);

    b.touch_mcp_session("s1", 6_000).await?;
    b.touch_mcp_session("s1", 5_500).await?;
    assert_eq!(
        a.mcp_session("s1").await?.map(|s| s.exp),
        Some(6_000),
        "never lowered"
    );

    // Alice's cap of two: her third session pushes out her oldest only.
    a.open_mcp_session(mcp_session("s2", "alice", 2_000, 5_000), 2)
        .await?;
    a.open_mcp_session(mcp_session("m1", "mallory", 2_500, 5_000), 2)
        .await?;
    b.open_mcp_session(mcp_session("s3", "alice", 3_000, 5_000), 2)
        .await?;
    assert_eq!(a.mcp_session("s1").await?, None, "alice's oldest went");
    for id in ["s2", "s3", "m1"] {
        assert!(a.mcp_session(id).await?.is_some(), "{id} kept");
    }

    // Closed by its client on any replica: gone for all.
    b.close_mcp_session("s2").await?;
    assert_eq!(a.mcp_session("s2").await?, None);

    // Expired before 5,001 (s3, m1 at 5,000): pruned; then the total cap.
    a.open_mcp_session(mcp_session("s4", "alice", 4_000, 9_000), 2)
        .await?;
    a.open_mcp_session(mcp_session("b1", "bob", 4_500, 9_000), 2)
        .await?;
    assert_eq!(a.prune_mcp_sessions(5_001, 10).await?, 2);
    assert_eq!(
        b.prune_mcp_sessions(5_001, 1).await?,
        1,
        "total cap: oldest goes"
    );
    assert!(a.mcp_session("s4").await?.is_none());
    assert!(a.mcp_session("b1").await?.is_some());
    Ok(())
}

/// Short-lived state written by one replica is read by another until it
/// expires; a key is taken by one replica only; an update never brings
/// back a row another replica removed; each kind is bounded on its own,
/// refusing or evicting the row that expires soonest.
async fn ephemeral_state_is_shared_bounded_and_taken_once(place: Place) -> TestResult {
    let clock = ManualClock::at_ms(1_000_000);
    let open = || async {
        TestResult::Ok(Arc::new(
            ControlStore::open_at(place.location.clone())
                .await?
                .with_clock(clock.clock()),
        ))
    };
    let (a, b) = (open().await?, open().await?);
    let t0 = clock.clock().now_ms();

    assert!(
        a.put_ephemeral(
            Kind::PageSignedIn,
            "k1",
            "one".into(),
            t0 + 1_000,
            2,
            OnFull::Refuse
        )
        .await?
    );
    let seen = b.ephemeral(Kind::PageSignedIn, "k1").await?;
    assert_eq!(seen.map(|e| e.value), Some("one".to_owned()));
    assert_eq!(
        b.ephemeral(Kind::PageAnonymous, "k1").await?,
        None,
        "kinds apart"
    );

    // Bounded: the second key fits, the third is refused; a live key is
    // rewritten whatever the bound.
    assert!(
        b.put_ephemeral(
            Kind::PageSignedIn,
            "k2",
            "two".into(),
            t0 + 2_000,
            2,
            OnFull::Refuse
        )
        .await?
    );
    assert!(
        !a.put_ephemeral(
            Kind::PageSignedIn,
            "k3",
            "three".into(),
            t0 + 3_000,
            2,
            OnFull::Refuse
        )
        .await?,
        "refused at the bound"
    );
    assert!(
        a.put_ephemeral(
            Kind::PageSignedIn,
            "k1",
            "uno".into(),
            t0 + 1_500,
            2,
            OnFull::Refuse
        )
        .await?
    );
    // Evicting: the row that expires soonest (k1) makes room.
    assert!(
        a.put_ephemeral(
            Kind::PageSignedIn,
            "k3",
            "three".into(),
            t0 + 3_000,
            2,
            OnFull::EvictSoonest
        )
        .await?
    );
    assert_eq!(b.ephemeral(Kind::PageSignedIn, "k1").await?, None);
    assert_eq!(a.count_ephemeral(Kind::PageSignedIn).await?, 2);

    // Taken once, whichever replica asks first.
    assert!(
        a.put_ephemeral(
            Kind::McpCode,
            "c",
            "grant".into(),
            t0 + 500,
            10,
            OnFull::Refuse
        )
        .await?
    );
    let (x, y) = tokio::join!(
        a.take_ephemeral(Kind::McpCode, "c"),
        b.take_ephemeral(Kind::McpCode, "c")
    );
    assert_eq!(
        usize::from(x?.is_some()) + usize::from(y?.is_some()),
        1,
        "exactly one replica gets the code"
    );

    // Dropped on one replica: an update on the other does not revive it.
    b.drop_ephemeral(Kind::PageSignedIn, "k2").await?;
    assert!(
        !a.update_ephemeral(Kind::PageSignedIn, "k2", "again".into(), t0 + 9_000)
            .await?
    );
    assert!(
        a.update_ephemeral(Kind::PageSignedIn, "k3", "tres".into(), t0 + 9_000)
            .await?
    );

    // Expired rows are never returned, nor taken, and free their place.
    assert!(
        a.put_ephemeral(
            Kind::McpCode,
            "late",
            "g".into(),
            t0 + 500,
            1,
            OnFull::Refuse
        )
        .await?
    );
    clock.advance(Duration::from_millis(600));
    assert_eq!(b.ephemeral(Kind::McpCode, "late").await?, None);
    assert_eq!(b.take_ephemeral(Kind::McpCode, "late").await?, None);
    assert_eq!(a.count_ephemeral(Kind::McpCode).await?, 0);
    assert!(
        a.put_ephemeral(
            Kind::McpCode,
            "next",
            "g".into(),
            t0 + 5_000,
            1,
            OnFull::Refuse
        )
        .await?,
        "the expired row no longer counts"
    );
    assert_eq!(
        a.ephemeral(Kind::PageSignedIn, "k3")
            .await?
            .map(|e| (e.value, e.expires_ms)),
        Some(("tres".to_owned(), t0 + 9_000))
    );
    Ok(())
}

/// One holder at a time: a second holder is refused while the lease is
/// renewed, takes it once it expires, and at once after a release.
async fn a_lease_has_one_holder_until_it_expires(place: Place) -> TestResult {
    let a = place.open().await?;
    let b = place.open().await?;
    let ttl = Duration::from_millis(300);
    assert!(a.lease("signer", "replica-a", ttl).await?);
    assert!(!b.lease("signer", "replica-b", ttl).await?, "held by A");
    assert!(a.lease("signer", "replica-a", ttl).await?, "A renews");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        b.lease("signer", "replica-b", ttl).await?,
        "B takes it once A's expired"
    );
    assert!(!a.lease("signer", "replica-a", ttl).await?, "A lost it");
    b.release_lease("signer", "replica-b").await?;
    assert!(
        a.lease("signer", "replica-a", ttl).await?,
        "released: A takes it at once"
    );
    assert!(
        b.lease("other", "replica-b", ttl).await?,
        "leases are per name"
    );
    Ok(())
}

fn alice(task: Option<&str>) -> CallerData {
    CallerData {
        iss: "https://idp.example".into(),
        sub: "alice".into(),
        act: vec!["assistant".into()],
        scope: Scope::parse("docs.*"),
        task_id: task.map(str::to_owned),
        build: None,
        sid: Some("s1".into()),
        jti: None,
    }
}

async fn revocations_are_durable_idempotent_and_liftable(place: Place) -> TestResult {
    let store = place.open().await?;
    let r = store
        .revoke(RevocationKind::Agent, "assistant", "leaked prompt", "ops")
        .await?;
    assert!(store.check(&alice(None).caller()).is_some());
    let again = store
        .revoke(RevocationKind::Agent, " assistant ", "other", "ops2")
        .await?;
    assert_eq!(again.id, r.id, "revoking twice returns the first");
    assert!(matches!(
        store.revoke(RevocationKind::User, "  ", "r", "ops").await,
        Err(ControlError::Invalid(_))
    ));
    drop(store);
    let store = place.open().await?;
    assert_eq!(
        store.check(&alice(None).caller()).map(|r| r.reason),
        Some("leaked prompt".into()),
        "a reopened store still refuses"
    );
    store.lift(r.id, "ops").await?;
    assert!(store.check(&alice(None).caller()).is_none());
    assert!(matches!(
        store.lift(r.id, "ops").await,
        Err(ControlError::Conflict(_))
    ));
    assert!(matches!(
        store.revocation(9_999_999).await,
        Err(ControlError::NotFound { .. })
    ));
    assert_eq!(store.revocations(true).await?.len(), 1);
    assert!(store.revocations(false).await?.is_empty());
    Ok(())
}

async fn the_change_gate_needs_two_operators(place: Place) -> TestResult {
    let store = place.open().await?;
    let c = store
        .propose(
            ChangeKind::ScopeCeiling,
            "assistant",
            serde_json::json!({"scope": "docs.search"}),
            "h",
            "narrow",
            "ann",
        )
        .await?;
    assert!(store.ceiling("assistant").is_none());
    assert!(store.activate(&c.id, "ann").await.is_err());
    assert!(store.review(&c.id, true, "ann", None).await.is_err());
    store.review(&c.id, true, "bob", Some("ok")).await?;
    store.activate(&c.id, "ann").await?;
    assert!(
        store
            .ceiling("assistant")
            .is_some_and(|s| s.covers("docs.search") && !s.covers("docs.send_mail"))
    );
    assert!(
        store.activate(&c.id, "ann").await.is_err(),
        "activated once"
    );
    // Bootstrap only when nothing is in force.
    let first = store
        .bootstrap(
            ChangeKind::PolicySet,
            "",
            serde_json::json!({}),
            "p1",
            "init",
            "mandate",
        )
        .await?;
    assert!(first.is_some());
    let second = store
        .bootstrap(
            ChangeKind::PolicySet,
            "",
            serde_json::json!({}),
            "p2",
            "init",
            "mandate",
        )
        .await?;
    assert!(second.is_none());
    assert_eq!(store.active_changes(ChangeKind::PolicySet).await?.len(), 1);
    assert_eq!(store.changes().await?.len(), 2);
    Ok(())
}

fn held(args_hash: &str, deadline_ms: i64) -> NewApproval {
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
        deadline_ms,
        holder: "gw-1".into(),
    }
}

async fn an_approval_binds_to_its_arguments_and_releases_once(place: Place) -> TestResult {
    let store = place.open().await?;
    let now = store.clock().now_ms();
    let a = store.create_approval(held("hash-a", now + 60_000)).await?;
    assert_eq!(
        store
            .approvals(Some(ApprovalStatus::Pending), 10)
            .await?
            .len(),
        1
    );
    assert_eq!(store.approvals(None, 10).await?.len(), 1);
    assert!(store.release_approval(&a.id, "hash-a").await.is_err());
    assert!(
        store
            .decide_approval(&a.id, true, "carol", None, "hash-b")
            .await
            .is_err()
    );
    let a = store
        .decide_approval(&a.id, true, "carol", Some("ok"), "hash-a")
        .await?;
    assert_eq!(a.status, ApprovalStatus::Approved);
    assert!(store.release_approval(&a.id, "hash-b").await.is_err());
    store.release_approval(&a.id, "hash-a").await?;
    assert!(store.release_approval(&a.id, "hash-a").await.is_err());
    // A late decision expires the request (and is written, though refused).
    let late = store.create_approval(held("h", now - 1)).await?;
    assert!(
        store
            .decide_approval(&late.id, true, "carol", None, "h")
            .await
            .is_err()
    );
    assert_eq!(
        store.approval(&late.id).await?.status,
        ApprovalStatus::Expired
    );
    let w = store.create_approval(held("h", now + 60_000)).await?;
    assert!(
        store
            .close_approval(&w.id, ApprovalStatus::Withdrawn)
            .await?
    );
    assert!(!store.close_approval(&w.id, ApprovalStatus::Expired).await?);
    Ok(())
}

async fn ending_a_task_revokes_its_tokens(place: Place) -> TestResult {
    let store = place.open().await?;
    store
        .start_task("t-1", "research", "alice", i64::MAX, "ops")
        .await?;
    assert!(matches!(
        store
            .start_task("t-1", "research", "bob", i64::MAX, "ops")
            .await,
        Err(ControlError::Conflict(_))
    ));
    assert!(store.check(&alice(Some("t-1")).caller()).is_none());
    store.end_task("t-1", TaskStatus::Completed, "ops").await?;
    assert!(store.check(&alice(Some("t-1")).caller()).is_some());
    assert!(
        store
            .task("t-1")
            .await?
            .is_some_and(|t| t.status == TaskStatus::Completed)
    );
    assert!(store.tasks(false).await?.is_empty());
    assert_eq!(store.tasks(true).await?.len(), 1);
    Ok(())
}

fn intent() -> TestResult<mandate_intent::Intent> {
    Ok(mandate_intent::Intent::parse(&serde_json::json!([
        {"type": "mandate_tool_call", "identifier": "pay", "tool": "bank.send_money",
         "arguments": {"recipient": {"equals": "DE89370400440532013000"}}, "max_uses": 3},
        {"type": "mandate_tool_call", "identifier": "read", "tool": "bank.read_file"}
    ]))?)
}

async fn intent_grants_are_used_up_exactly_once(place: Place) -> TestResult {
    let store = place.open().await?;
    let key = IntentKey::new("https://idp.example", "alice", "t-9");
    let recorded = store
        .record_intent(
            &key,
            &intent()?,
            &[GrantStatus::Pending, GrantStatus::Granted],
            "broker:assistant",
            store.clock().now_ms() + 60_000,
        )
        .await?;
    let approval = recorded.approval_id.clone().ok_or("an approval id")?;
    // Pending: no use can be taken yet.
    assert!(store.consume_grant(&key, "pay").await?.is_none());
    assert_eq!(
        store
            .intent_approvals(Some(ApprovalStatus::Pending), 10)
            .await?
            .len(),
        1
    );
    store
        .decide_intent(&approval, true, "alice", None, &recorded.intent_hash)
        .await?;
    // Eight callers (on two stores when shared) race for three uses.
    let other = place.open().await?;
    let mut racers = Vec::new();
    for i in 0..8 {
        let s = if i % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        let k = key.clone();
        racers.push(tokio::spawn(
            async move { s.consume_first(&k, &["pay"]).await },
        ));
    }
    let mut taken = 0;
    for r in racers {
        if r.await??.is_some() {
            taken += 1;
        }
    }
    assert_eq!(taken, 3, "max_uses is never exceeded");
    assert!(store.refund_grant(&key, "pay").await?);
    assert!(store.consume_grant(&key, "pay").await?.is_some());
    let granted = store.granted_intent(&key).await?.ok_or("granted")?;
    assert_eq!(granted.len(), 2);
    assert_eq!(store.intent_approval(&approval).await?.key, key);
    Ok(())
}

async fn tool_pins_are_upserted(place: Place) -> TestResult {
    let store = place.open().await?;
    assert!(store.tool_pin("u.t").await?.is_none());
    store
        .set_tool_pin("u.t", "fp1", "reads", true, "first use", "mandate")
        .await?;
    let p = store
        .set_tool_pin("u.t", "fp2", "reads and sends", false, "changed", "mandate")
        .await?;
    assert_eq!(
        (p.fingerprint.as_str(), p.status.as_str()),
        ("fp2", "quarantined")
    );
    assert_eq!(store.tool_pins().await?.len(), 1);
    Ok(())
}

// ----- PostgreSQL only: what replicas share ------------------------------

/// A revocation made on one replica is refused on another once it has
/// re-read the store (its timer, `spawn_refresh`, does this every second
/// in `mandate serve`); an approval decided on one releases on the other,
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_revocations_and_approvals() -> TestResult {
    let Some(place) = Place::postgres() else {
        return Ok(());
    };
    let a = place.open().await?;
    let b = place.open().await?;
    let refresher = b.spawn_refresh().ok_or("a shared store")?;
    assert_eq!(b.poll_every(), Some(Duration::from_millis(50)));
    assert!(b.stale().is_none());
    a.revoke(RevocationKind::User, "alice", "lost laptop", "ops")
        .await?;
    let mut seen = false;
    for _ in 0..100 {
        if b.check(&alice(None).caller()).is_some() {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen, "replica B refuses what A revoked");
    refresher.abort();

    let req = a
        .create_approval(held("h", a.clock().now_ms() + 60_000))
        .await?;
    b.decide_approval(&req.id, true, "carol", None, "h").await?;
    let (ra, rb) = tokio::join!(
        a.release_approval(&req.id, "h"),
        b.release_approval(&req.id, "h")
    );
    assert!(ra.is_ok() != rb.is_ok(), "exactly one replica releases");
    Ok(())
}

/// Notifications, not polls: with polls a minute apart, a revocation on
/// A reaches B's index, and a decision on A wakes B's held call, within
/// a second, because PostgreSQL notifies B's listening connection as A's
/// transaction commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_wake_each_other_without_waiting_for_a_poll() -> TestResult {
    let Some(place) = Place::postgres() else {
        return Ok(());
    };
    let minute = Duration::from_secs(60);
    let a = Arc::new(
        ControlStore::open_at(place.location.clone())
            .await?
            .with_poll(minute),
    );
    let b = Arc::new(
        ControlStore::open_at(place.location.clone())
            .await?
            .with_poll(minute),
    );
    // The listeners connect on threads of their own.
    for _ in 0..250 {
        if a.listening() && b.listening() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(a.listening() && b.listening(), "both replicas listen");
    let refresher = b.spawn_refresh().ok_or("a shared store")?;
    // The refresher's first tick is immediate; let it pass.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut approvals = b.signal(Topic::Approvals);
    approvals.mark_unchanged();
    let req = b
        .create_approval(held("h", b.clock().now_ms() + 60_000))
        .await?;
    a.decide_approval(&req.id, true, "carol", None, "h").await?;
    tokio::time::timeout(Duration::from_secs(1), approvals.changed())
        .await
        .map_err(|_| "B is woken by A's decision within a second")??;
    assert_eq!(b.approval(&req.id).await?.status, ApprovalStatus::Approved);

    a.revoke(RevocationKind::User, "alice", "lost laptop", "ops")
        .await?;
    let started = std::time::Instant::now();
    while b.check(&alice(None).caller()).is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "B refuses what A revoked within a second, not a poll (a minute)"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    refresher.abort();

    // A SQLite store never signals: only this process writes it.
    let lite = Place::sqlite()?;
    let local = lite.open().await?;
    assert!(!local.listening());
    let mut quiet = local.signal(Topic::Revocations);
    quiet.mark_unchanged();
    local
        .revoke(RevocationKind::User, "bob", "test", "ops")
        .await?;
    assert!(!quiet.has_changed()?);
    Ok(())
}

/// A store whose database cannot be reached fails every operation (and a
/// shared one reports itself stale), then works again when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_an_error_not_a_hang() -> TestResult {
    // Nothing listens on port 1.
    let started = std::time::Instant::now();
    let r = ControlStore::open_at(Location::Postgres {
        url: "postgres://postgres@127.0.0.1:1/test".into(),
        schema: "mandate_control".into(),
    })
    .await;
    assert!(matches!(r, Err(ControlError::Storage(_))));
    assert!(started.elapsed() < Duration::from_secs(10));
    Ok(())
}

#[test]
fn locations_parse_and_never_print_a_password() {
    let l = Location::parse("postgres://mandate:s3cret@db.internal:5432/prod");
    assert!(l.is_shared());
    let shown = l.to_string();
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("db.internal"));
    assert!(!Location::parse("/var/lib/mandate/control.sqlite").is_shared());
}
