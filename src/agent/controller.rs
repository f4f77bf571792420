//! The slot controller: the daemon's one task that acts on the slot record.
//!
//! It does two things. It follows the record, so an install, rollback or promote made by `outpost` on the device
//! (or, through the same library calls, by the fleet link) takes effect without a restart. And it carries out
//! probation's verdicts: a locked record transition first, then the engine swap, so that a SIGKILL between the two
//! leaves a record that the next start honours.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use super::probation::Verdict;
use super::{load_model, Service};
use crate::inference::Engine;
use crate::slots::{install::load_active, SlotError, SlotId, SlotState, SlotStore};

/// How often the record is re-read for changes made by other processes.
const POLL: Duration = Duration::from_millis(250);

pub(crate) async fn run(
    service: Arc<Service>,
    state_dir: PathBuf,
    mut seen: u64,
    shutdown: CancellationToken,
) {
    let store = match SlotStore::new(&state_dir) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "slot controller cannot start: installs will need a restart");
            return;
        }
    };
    // A candidate staged before this start runs in shadow again.
    let st = store.clone();
    if let Ok(Ok(state)) = tokio::task::spawn_blocking(move || st.load()).await {
        sync_candidate(&service, &store, &state).await;
    }
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            _ = service.decided.notified() => {}
        }
        if let Some((digest, verdict)) = service.trial_verdict(Instant::now()) {
            match verdict {
                Verdict::Continue => {}
                Verdict::Commit(reason) => {
                    if let Some(g) = commit(&service, &store, &digest, &reason).await {
                        seen = g;
                    }
                }
                Verdict::Rollback(reason) => {
                    if let Some(g) = rollback(&service, &store, &digest, &reason).await {
                        seen = g;
                    }
                }
            }
        }
        let st = store.clone();
        let Ok(Ok(state)) = tokio::task::spawn_blocking(move || st.load()).await else {
            continue;
        };
        if state.generation != seen {
            seen = state.generation;
            follow(&service, &store, state).await;
        }
    }
}

fn trial_digest(state: &SlotState) -> Option<&str> {
    let t = state.trial.as_ref()?;
    state.slot(t.slot).map(|i| i.digest.as_str())
}

async fn commit(service: &Service, store: &SlotStore, digest: &str, reason: &str) -> Option<u64> {
    let (st, d) = (store.clone(), digest.to_string());
    let done = tokio::task::spawn_blocking(move || {
        st.update(|s| {
            if trial_digest(s) != Some(d.as_str()) {
                return Err(SlotError::NoTrial);
            }
            Ok((s.commit()?, ()))
        })
    })
    .await;
    match done {
        Ok(Ok((state, ()))) => {
            service.end_trial(digest);
            service.note_transition(
                "commit",
                "probation",
                reason,
                service.engine().spec().version,
            );
            tracing::info!(version = service.engine().spec().version, %reason, "model committed");
            Some(state.generation)
        }
        Ok(Err(SlotError::NoTrial)) => None, // someone else ended it; `follow` will see how
        other => {
            tracing::error!(result = ?other.map(|r| r.map(|_| ())), "cannot commit the trial; will retry");
            None
        }
    }
}

async fn rollback(service: &Service, store: &SlotStore, digest: &str, reason: &str) -> Option<u64> {
    let (st, d) = (store.clone(), digest.to_string());
    let done = tokio::task::spawn_blocking(move || {
        st.update(|s| {
            if trial_digest(s) != Some(d.as_str()) {
                return Err(SlotError::NoTrial);
            }
            Ok((s.rollback()?, ()))
        })
    })
    .await;
    match done {
        Ok(Ok((state, ()))) => {
            let version = service.engine().spec().version;
            tracing::warn!(%reason, version, "model on trial rolled back");
            match engine_for(service, store, &state).await {
                Some((engine, slot)) => {
                    service.swap(engine, &slot);
                    service.set_model_threshold(state.active_info().and_then(|i| i.hardness_threshold));
                }
                None => tracing::error!("the previous model cannot be loaded; still serving the model that failed its trial"),
            }
            service.note_transition("rollback", "probation", reason, version);
            Some(state.generation)
        }
        Ok(Err(SlotError::NoTrial)) => None,
        other => {
            tracing::error!(result = ?other.map(|r| r.map(|_| ())), "cannot roll the trial back; will retry");
            None
        }
    }
}

/// The engine the record says should serve, reusing the kept fallback or the current engine when digests match.
async fn engine_for(
    service: &Service,
    store: &SlotStore,
    state: &SlotState,
) -> Option<(Arc<Engine>, String)> {
    let want = state.active_info().map(|i| i.digest.clone());
    let slot = state
        .active
        .map(SlotId::name)
        .unwrap_or("builtin")
        .to_string();
    for candidate in [service.fallback(), Some(service.engine())]
        .into_iter()
        .flatten()
    {
        let matches = match &want {
            Some(d) => candidate.digest() == d,
            None => false,
        };
        if matches {
            return Some((candidate, slot));
        }
    }
    let (st, s, config) = (store.clone(), state.clone(), service.config().clone());
    let loaded = tokio::task::spawn_blocking(move || match load_active(&st, &s) {
        Ok(Some(e)) => Ok(e),
        Ok(None) => load_model(&config).map_err(|e| e.to_string()),
        Err(e) => Err(e),
    })
    .await;
    match loaded {
        Ok(Ok(engine)) => {
            let slot = if state.active.is_none() && service.config().model.path.is_some() {
                "file".to_string()
            } else {
                slot
            };
            Some((Arc::new(engine), slot))
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot load the model the slot record names");
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "model loading task failed");
            None
        }
    }
}

/// Makes the service's candidate the one the record stages (or none).
async fn sync_candidate(service: &Service, store: &SlotStore, state: &SlotState) {
    let want = state
        .candidate
        .zip(state.candidate_info().map(|i| i.digest.clone()));
    let have = service.candidate().map(|c| c.digest().to_string());
    match want {
        None if have.is_some() => {
            tracing::info!("candidate dropped");
            service.set_candidate(None);
        }
        Some((slot, digest)) if have.as_deref() != Some(digest.as_str()) => {
            let (st, s) = (store.clone(), state.clone());
            match tokio::task::spawn_blocking(move || {
                crate::slots::install::load_slot(&st, &s, slot)
            })
            .await
            {
                Ok(Ok(engine)) => {
                    tracing::info!(version = engine.spec().version, %digest, "candidate staged: running in shadow");
                    service.set_candidate(Some(Arc::new(engine)));
                }
                Ok(Err(e)) => tracing::error!(error = %e, "cannot load the staged candidate"),
                Err(e) => tracing::error!(error = %e, "candidate loading task failed"),
            }
        }
        _ => {}
    }
}

/// Applies a record written by another process.
async fn follow(service: &Service, store: &SlotStore, state: SlotState) {
    sync_candidate(service, store, &state).await;
    let want = state.active_info().map(|i| i.digest.clone());
    let serving = service.engine();
    let same = match &want {
        Some(d) => serving.digest() == d,
        None => matches!(service.slot().as_str(), "builtin" | "file" | "fallback"),
    };
    let on_trial = trial_digest(&state).is_some_and(|d| Some(d) == want.as_deref());
    if same && !on_trial && service.end_trial(serving.digest()) {
        service.note_transition(
            "commit",
            "operator",
            "promoted by an operator",
            serving.spec().version,
        );
        tracing::info!("trial ended by an operator: model committed");
        return;
    }
    if same {
        return;
    }
    let Some((engine, slot)) = engine_for(service, store, &state).await else {
        return;
    };
    if on_trial {
        let version = engine.spec().version;
        tracing::info!(slot = %slot, version, digest = %engine.digest(), "new model live, on trial");
        service.begin_trial(engine, &slot, Some(serving));
        service.set_model_threshold(state.active_info().and_then(|i| i.hardness_threshold));
        service.note_transition("trial", "install", &format!("version {version}"), version);
    } else {
        tracing::info!(slot = %slot, digest = %engine.digest(), "switching to the model the slot record names");
        service.swap(engine, &slot);
        service.set_model_threshold(state.active_info().and_then(|i| i.hardness_threshold));
        service.note_transition(
            "rollback",
            "operator",
            "changed by an operator",
            serving.spec().version,
        );
    }
}
