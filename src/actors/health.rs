//! The live picture of the actor tree that `GET /health/actors` serves: each
//! actor's state, restarts, last failure and jobs in flight.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Where an actor is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorState {
    Starting,
    Running,
    /// Running but waiting for a dependency (the broker) to come back.
    Connecting,
    /// Died; its supervisor restarts it after a backoff.
    Restarting,
    /// Stopped on purpose (shutdown).
    Stopped,
    /// Died too often: its supervisor gave up (restart intensity exceeded).
    Failed,
}

/// One actor's line in the health report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActorHealth {
    pub name: String,
    pub state: ActorState,
    pub restarts: u32,
    pub last_failure: Option<String>,
    pub last_failure_at: Option<DateTime<Utc>>,
    pub jobs_in_flight: usize,
}

/// The whole tree, as `GET /health/actors` returns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActorTreeHealth {
    /// The lease owner name of this process's jobs.
    pub worker_id: String,
    pub role: &'static str,
    pub actors: Vec<ActorHealth>,
}

/// Shared, cheap-to-clone registry each actor writes its own line into.
#[derive(Clone, Default)]
pub(crate) struct HealthBoard {
    lines: Arc<Mutex<BTreeMap<String, ActorHealth>>>,
}

impl HealthBoard {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, ActorHealth>> {
        // A panic while holding this lock cannot leave a line half-written
        // in a way that matters: keep serving it.
        self.lines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn with(&self, name: &str, f: impl FnOnce(&mut ActorHealth)) {
        let mut lines = self.lock();
        let line = lines
            .entry(name.to_string())
            .or_insert_with(|| ActorHealth {
                name: name.to_string(),
                state: ActorState::Starting,
                restarts: 0,
                last_failure: None,
                last_failure_at: None,
                jobs_in_flight: 0,
            });
        f(line);
    }

    pub(crate) fn set_state(&self, name: &str, state: ActorState) {
        self.with(name, |line| line.state = state);
    }

    pub(crate) fn set_in_flight(&self, name: &str, jobs: usize) {
        self.with(name, |line| line.jobs_in_flight = jobs);
    }

    /// Records a failure; `restarted` also counts a restart.
    pub(crate) fn failure(&self, name: &str, reason: &str, restarted: bool) {
        self.with(name, |line| {
            line.last_failure = Some(reason.to_string());
            line.last_failure_at = Some(Utc::now());
            if restarted {
                line.restarts += 1;
            }
        });
    }

    pub(crate) fn get(&self, name: &str) -> Option<ActorHealth> {
        self.lock().get(name).cloned()
    }

    pub(crate) fn snapshot(&self) -> Vec<ActorHealth> {
        self.lock().values().cloned().collect()
    }

    /// Jobs held by the consumers (each delivery not yet settled).
    pub(crate) fn consumer_jobs(&self) -> usize {
        self.lock()
            .values()
            .filter(|line| line.name.starts_with("consumer."))
            .map(|line| line.jobs_in_flight)
            .sum()
    }
}
