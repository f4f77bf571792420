//! The slot controller: the daemon's one task that acts on the slot record.
//!
//! It does two things. It follows the record, so an install, rollback or promote made by `outpost` on the device
//! (or, through the same library calls, by the fleet link) takes effect without a restart. And it carries out
//! probation's verdicts: a locked record transition first, then the engine swap, so that a SIGKILL between the two
//! leaves a record that the next start honours.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use super::models::Base;
use crate::inference::{Engine, Release};
use crate::serve::probation::Verdict;
use crate::serve::Service;
use crate::slots::{install::load_active, SlotError, SlotState, SlotStore};
use crate::wire::status::{Cause, Serving, TransitionKind};

/// How often the record is re-read for changes made by other processes.
const POLL: Duration = Duration::from_millis(250);

pub(crate) async fn run(
    service: Arc<Service>,
    store: SlotStore,
    base: Base,
    mut seen: u64,
    shutdown: CancellationToken,
) {
    // A candidate staged before this start runs in shadow again.
    let st = store.clone();
    if let Ok(state) = crate::blocking::run(move || st.load()).await {
        sync_candidate(&service, &store, &state).await;
    }
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            _ = service.decided().notified() => {}
        }
        if let Some((release, verdict)) = service.trial_verdict(Instant::now()) {
            match verdict {
                Verdict::Continue => {}
                Verdict::Commit(reason) => {
                    if let Some(g) = commit(&service, &store, &release, &reason).await {
                        seen = g;
                    }
                }
                Verdict::Rollback(reason) => {
                    if let Some(g) = rollback(&service, &store, &base, &release, &reason).await {
                        seen = g;
                    }
                }
            }
        }
        let st = store.clone();
        let Ok(state) = crate::blocking::run(move || st.load()).await else {
            continue;
        };
        if state.generation != seen {
            seen = state.generation;
            follow(&service, &store, &base, state).await;
        }
    }
}

/// Is `release` the model on trial in this record?
fn on_trial(state: &SlotState, release: &Release) -> bool {
    state
        .trial
        .as_ref()
        .and_then(|t| state.slot(t.slot))
        .is_some_and(|i| i.matches(release))
}

/// Carries out probation's verdict on `release` in the record (one locked transition); `None` when that release is
/// no longer on trial (someone else ended it: `follow` will see how) or the write failed (retried at the next tick).
async fn judge(
    store: &SlotStore,
    release: &Release,
    verdict: fn(&SlotState) -> Result<SlotState, SlotError>,
) -> Option<SlotState> {
    let (st, r) = (store.clone(), release.clone());
    let done = crate::blocking::run(move || {
        st.update(|s| {
            if !on_trial(s, &r) {
                return Err(SlotError::NoTrial);
            }
            Ok((verdict(s)?, ()))
        })
    })
    .await;
    match done {
        Ok((state, ())) => Some(state),
        Err(SlotError::NoTrial) => None,
        Err(e) => {
            tracing::error!(error = %e, "cannot record the trial's verdict; will retry");
            None
        }
    }
}

async fn commit(
    service: &Service,
    store: &SlotStore,
    release: &Release,
    reason: &str,
) -> Option<u64> {
    let state = judge(store, release, SlotState::commit).await?;
    service.end_trial(release);
    let version = service.engine().spec().version;
    service.note_transition(TransitionKind::Commit, Cause::Probation, reason, version);
    tracing::info!(version, %reason, "model committed");
    Some(state.generation)
}

async fn rollback(
    service: &Service,
    store: &SlotStore,
    base: &Base,
    release: &Release,
    reason: &str,
) -> Option<u64> {
    let state = judge(store, release, SlotState::rollback).await?;
    let version = service.engine().spec().version;
    tracing::warn!(%reason, version, "model on trial rolled back");
    match engine_for(service, store, base, &state).await {
        Some((engine, slot)) => {
            service.swap(engine, slot);
            service.set_release_info(state.active_info());
        }
        None => tracing::error!(
            "the previous model cannot be loaded; still serving the model that failed its trial"
        ),
    }
    service.note_transition(TransitionKind::Rollback, Cause::Probation, reason, version);
    Some(state.generation)
}

/// The engine the record says should serve: the kept fallback or the current engine when it is the same release,
/// else the engine an install in this process built and gated for that slot, else loaded from the slot's files.
async fn engine_for(
    service: &Service,
    store: &SlotStore,
    base: &Base,
    state: &SlotState,
) -> Option<(Arc<Engine>, Serving)> {
    let want = state.active_info();
    let slot = state.active.map(Serving::slot).unwrap_or(base.serving());
    for candidate in [service.fallback(), Some(service.engine())]
        .into_iter()
        .flatten()
    {
        if want.is_some_and(|i| i.matches(candidate.release())) {
            return Some((candidate, slot));
        }
    }
    if let (Some(active), Some(info)) = (state.active, want) {
        if let Some(engine) = service.take_installed(Serving::slot(active), info) {
            return Some((engine, slot));
        }
    }
    let (st, s, b) = (store.clone(), state.clone(), base.clone());
    let loaded = crate::blocking::run(move || match load_active(&st, &s) {
        Ok(Some(e)) => Ok(e),
        // No live release: the base, if the model has one (else the registry stops serving it).
        Ok(None) => b
            .load()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the model has no live release and no base".to_string()),
        Err(e) => Err(e),
    })
    .await;
    match loaded {
        Ok(engine) => Some((Arc::new(engine), slot)),
        Err(e) => {
            tracing::error!(error = %e, "cannot load the model the slot record names");
            None
        }
    }
}

/// Makes the service's candidate the one the record stages (or none).
async fn sync_candidate(service: &Service, store: &SlotStore, state: &SlotState) {
    let want = state.candidate.zip(state.candidate_info());
    let have = service.candidate();
    match want {
        None if have.is_some() => {
            tracing::info!("candidate dropped");
            service.set_candidate(None);
        }
        Some((slot, info)) if !have.is_some_and(|c| info.matches(c.release())) => {
            if let Some(engine) = service.take_installed(Serving::slot(slot), info) {
                tracing::info!(version = info.version, digest = %info.digest, "candidate staged: running in shadow");
                service.set_candidate(Some(engine));
                return;
            }
            let digest = info.digest.clone();
            let (st, s) = (store.clone(), state.clone());
            match crate::blocking::run(move || crate::slots::install::load_slot(&st, &s, slot))
                .await
            {
                Ok(engine) => {
                    tracing::info!(version = engine.spec().version, %digest, "candidate staged: running in shadow");
                    service.set_candidate(Some(Arc::new(engine)));
                }
                Err(e) => tracing::error!(error = %e, "cannot load the staged candidate"),
            }
        }
        _ => {}
    }
}

/// Applies a record written by another process.
async fn follow(service: &Service, store: &SlotStore, base: &Base, state: SlotState) {
    sync_candidate(service, store, &state).await;
    let serving = service.engine();
    // The same release, not the same bytes: a re-release of identical model bytes under a new version or spec
    // must go live (and on trial) like any other.
    let same = match state.active_info() {
        Some(info) => info.matches(serving.release()),
        None => matches!(
            service.slot(),
            Serving::Builtin | Serving::File | Serving::Fallback
        ),
    };
    let on_trial = state
        .trial
        .as_ref()
        .is_some_and(|t| Some(t.slot) == state.active);
    if same && !on_trial && service.end_trial(serving.release()) {
        service.note_transition(
            TransitionKind::Commit,
            Cause::Operator,
            "promoted by an operator",
            serving.spec().version,
        );
        tracing::info!("trial ended by an operator: model committed");
        return;
    }
    if same {
        return;
    }
    let Some((engine, slot)) = engine_for(service, store, base, &state).await else {
        return;
    };
    if on_trial {
        let version = engine.spec().version;
        tracing::info!(slot = slot.name(), version, digest = %engine.digest(), "new model live, on trial");
        service.begin_trial(engine, slot, Some(serving));
        service.set_release_info(state.active_info());
        service.note_transition(
            TransitionKind::Trial,
            Cause::Install,
            &format!("version {version}"),
            version,
        );
    } else {
        tracing::info!(slot = slot.name(), digest = %engine.digest(), "switching to the model the slot record names");
        service.swap(engine, slot);
        service.set_release_info(state.active_info());
        service.note_transition(
            TransitionKind::Rollback,
            Cause::Operator,
            "changed by an operator",
            serving.spec().version,
        );
    }
}
