//! Wake-ups across replicas: PostgreSQL `LISTEN`/`NOTIFY`.
//!
//! Every write transaction that changes what another replica enforces
//! (a revocation, an approval's decision, a change put in force) sends a
//! notification on the store's channel (its schema's name) with a
//! [`Topic`]; PostgreSQL delivers it when, and only if, the transaction
//! commits. Each shared store keeps one extra connection listening on
//! that channel, on a thread of its own, and bumps a [`tokio::sync::watch`]
//! counter per topic, which held calls, the index refresher and the
//! policy follower wait on. When the listening connection drops it is
//! reopened (every topic is then signalled once, since notifications sent
//! meanwhile are lost); the timers ([`crate::ControlStore::poll_every`])
//! keep running underneath, so a lost notification costs at most one poll.

use postgres::fallible_iterator::FallibleIterator as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString)]
#[cfg_attr(test, derive(strum::VariantArray))]
#[strum(serialize_all = "snake_case")]
pub enum Topic {
    /// A revocation was made or lifted (a task's end pulls one too).
    Revocations,
    /// An approval request (or a task intent's) was decided, closed or
    /// used.
    Approvals,
    /// A change (policy set, scope ceiling) was put in force.
    Changes,
}

impl Topic {
    /// The notification payload.
    pub(crate) fn as_str(self) -> &'static str {
        self.into()
    }
}

/// One counter per topic, bumped on every notification.
#[derive(Debug)]
pub(crate) struct Signals {
    revocations: watch::Sender<u64>,
    approvals: watch::Sender<u64>,
    changes: watch::Sender<u64>,
    /// Whether the listening connection is up now.
    listening: AtomicBool,
}

impl Default for Signals {
    fn default() -> Self {
        Self {
            revocations: watch::Sender::new(0),
            approvals: watch::Sender::new(0),
            changes: watch::Sender::new(0),
            listening: AtomicBool::new(false),
        }
    }
}

impl Signals {
    fn sender(&self, topic: Topic) -> &watch::Sender<u64> {
        match topic {
            Topic::Revocations => &self.revocations,
            Topic::Approvals => &self.approvals,
            Topic::Changes => &self.changes,
        }
    }

    /// Wakes everyone waiting on `topic`.
    pub(crate) fn fire(&self, topic: Topic) {
        self.sender(topic).send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Wakes everyone, whatever they wait on.
    fn fire_all(&self) {
        for topic in [Topic::Revocations, Topic::Approvals, Topic::Changes] {
            self.fire(topic);
        }
    }

    /// A receiver that sees every notification on `topic` from now on.
    pub(crate) fn subscribe(&self, topic: Topic) -> watch::Receiver<u64> {
        self.sender(topic).subscribe()
    }

    pub(crate) fn listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }
}

/// Stops the listening thread when dropped (with the store).
#[derive(Debug)]
pub(crate) struct Listener {
    stop: Arc<AtomicBool>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// How long one wait for a notification lasts before the thread looks
/// whether it should stop.
const WAIT: Duration = Duration::from_millis(500);
/// The longest pause between attempts to reopen the listening connection.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Starts a thread that listens on `channel` and fires `signals`.
pub(crate) fn listen(
    config: postgres::Config,
    channel: String,
    signals: Arc<Signals>,
) -> Result<Listener, std::io::Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::Builder::new()
        .name("control-listen".into())
        .spawn(move || run(&config, &channel, &signals, &flag))?;
    Ok(Listener { stop })
}

fn run(config: &postgres::Config, channel: &str, signals: &Signals, stop: &AtomicBool) {
    let mut backoff = Duration::from_millis(100);
    let mut was_up = true;
    while !stop.load(Ordering::Relaxed) {
        let client = config.connect(postgres::NoTls).and_then(|mut c| {
            c.batch_execute(&format!("LISTEN {channel}"))?;
            Ok(c)
        });
        let mut client = match client {
            Ok(c) => c,
            Err(e) => {
                if was_up {
                    tracing::warn!(error = %e, "control store: cannot listen for other replicas' changes; polling meanwhile");
                    was_up = false;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if !was_up {
            tracing::info!("control store: listening for other replicas' changes again");
        }
        was_up = true;
        backoff = Duration::from_millis(100);
        signals.listening.store(true, Ordering::Relaxed);
        // Anything sent while nobody listened is lost: look once.
        signals.fire_all();
        while !stop.load(Ordering::Relaxed) {
            let next = client.notifications().timeout_iter(WAIT).next();
            match next {
                Ok(Some(n)) => match n.payload().parse::<Topic>() {
                    Ok(topic) => signals.fire(topic),
                    Err(_) => signals.fire_all(),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "control store: the listening connection failed; reopening");
                    break;
                }
                Ok(None) if client.is_closed() => break,
                Ok(None) => {}
            }
        }
        signals.listening.store(false, Ordering::Relaxed);
        drop(client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::VariantArray as _;

    #[test]
    fn topics_round_trip_through_their_payloads() {
        for topic in Topic::VARIANTS {
            assert_eq!(topic.as_str().parse::<Topic>().ok(), Some(*topic));
        }
        assert!("policy".parse::<Topic>().is_err());
    }

    #[test]
    fn a_signal_wakes_only_its_topic() {
        let s = Signals::default();
        let approvals = s.subscribe(Topic::Approvals);
        let revocations = s.subscribe(Topic::Revocations);
        s.fire(Topic::Approvals);
        assert!(approvals.has_changed().unwrap_or(false));
        assert!(!revocations.has_changed().unwrap_or(true));
    }
}
