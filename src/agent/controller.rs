//! The slot controller: the daemon's one task that acts on the slot record.
//!
//! It does three things, one at a time, so that two changes of the served model never interleave:
//! - it applies what an install in this process hands over ([`crate::serve::Handoff`]: the record the install wrote
//!   and its gated engine) at once, without parsing the model again;
//! - it follows the record, which it polls, so an install, rollback or promote made by `outpost` on the device (another
//!   process) takes effect without a restart;
//! - it carries out probation's verdicts: a locked record transition first, then the engine swap, so that a SIGKILL
//!   between the two leaves a record that the next start honours.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use super::models::Base;
use super::AgentError;
use crate::inference::{Engine, Release};
use crate::serve::probation::Verdict;
use crate::serve::Service;
use crate::slots::{install::load_active, SlotError, SlotState, SlotStore};
use crate::wire::status::{Cause, Serving, TransitionKind};

/// How often the record is re-read for changes made by other processes (an install in this process hands its
/// release over instead).
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
        sync_candidate(&service, &store, &state, None).await;
    }
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            _ = service.decided().notified() => {}
            _ = service.handed().notified() => {}
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
        // An install's hand-off, unless the record has moved past it since (a hand-run rollback decides then). The
        // same generation as the last record read is applied too: the poll may have read the install's record before
        // the hand-off came, and failed to load it or loaded it again (then `follow` finds it serving already).
        if let Some(h) = service.take_handoff() {
            if h.state.generation >= seen {
                seen = h.state.generation;
                follow(&service, &store, &base, h.state, Some(&h.engine)).await;
                continue;
            }
            tracing::debug!(
                generation = h.state.generation,
                seen,
                "an older hand-off is dropped"
            );
        }
        let st = store.clone();
        let Ok(state) = crate::blocking::run(move || st.load()).await else {
            continue;
        };
        if state.generation != seen {
            seen = state.generation;
            follow(&service, &store, &base, state, None).await;
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
    match engine_for(service, store, base, &state, None).await {
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
/// else the engine an install in this process handed over with that record, else loaded from the slot's files.
async fn engine_for(
    service: &Service,
    store: &SlotStore,
    base: &Base,
    state: &SlotState,
    handed: Option<&Arc<Engine>>,
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
    if let Some(engine) = handed.filter(|e| want.is_some_and(|i| i.matches(e.release()))) {
        return Some((engine.clone(), slot));
    }
    let (st, s, b) = (store.clone(), state.clone(), base.clone());
    let loaded = crate::blocking::run(move || match load_active(&st, &s)? {
        Some(e) => Ok(e),
        // No live release: the base, if the model has one (else the registry stops serving it).
        None => b.load()?.ok_or(AgentError::NothingToServe),
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
async fn sync_candidate(
    service: &Service,
    store: &SlotStore,
    state: &SlotState,
    handed: Option<&Arc<Engine>>,
) {
    let want = state.candidate.zip(state.candidate_info());
    let have = service.candidate();
    match want {
        None if have.is_some() => {
            tracing::info!("candidate dropped");
            service.set_candidate(None);
        }
        Some((slot, info)) if !have.is_some_and(|c| info.matches(c.release())) => {
            if let Some(engine) = handed.filter(|e| info.matches(e.release())) {
                tracing::info!(version = info.version, digest = %info.digest, "candidate staged: running in shadow");
                service.set_candidate(Some(engine.clone()));
                return;
            }
            let digest = info.digest.clone();
            let (st, s) = (store.clone(), state.clone());
            let load =
                move || crate::slots::install::load_slot(&st, &s, slot).map_err(AgentError::from);
            match crate::blocking::run(load).await {
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

/// Applies a record: one an install in this process wrote and handed over with its engine, or one read from disk.
async fn follow(
    service: &Service,
    store: &SlotStore,
    base: &Base,
    state: SlotState,
    handed: Option<&Arc<Engine>>,
) {
    sync_candidate(service, store, &state, handed).await;
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
    let Some((engine, slot)) = engine_for(service, store, base, &state, handed).await else {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::Handoff;
    use crate::slots::{SlotId, SlotInfo};

    /// An install in this process reaches its model's serving side through the hand-off: the service serves the very
    /// engine the install built (the same allocation: never parsed again from the slot's files), live on trial,
    /// although the slot holds no model file that the poll of the record could load.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handed_over_release_serves_at_once_without_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let store = SlotStore::open(dir.path()).unwrap();
        let first = Base::Builtin.load().unwrap().unwrap();
        let mut spec = first.spec().clone();
        spec.version += 1;
        let next = Arc::new(Engine::load_builtin(spec).unwrap());
        let name = first.spec().name.clone();
        let pool = Arc::new(crate::worker::Pool::start(1, 16));
        let config = crate::config::Config::default();
        let service = Arc::new(Service::new(&name, first, pool, None, &config));
        let shutdown = CancellationToken::new();
        let controller = tokio::spawn(run(
            service.clone(),
            store.clone(),
            Base::Builtin,
            0,
            shutdown.clone(),
        ));

        // What an install writes once its variant passed the gate: the release in slot A, live on trial.
        let info = SlotInfo {
            name: name.clone(),
            version: next.spec().version,
            digest: next.digest().to_string(),
            variant: "int8".into(),
            reason: "only variant".into(),
            hardness_threshold: None,
            spec_digest: Some(crate::inference::spec_digest(next.spec())),
            spare: None,
            budget: None,
            baseline: None,
            signers: vec![],
            trust_version: None,
        };
        let state = SlotState::default().flip(SlotId::A, info);
        {
            let _lock = store.lock().unwrap();
            store.save(&state).unwrap();
        }
        service.hand_over(Handoff {
            state,
            slot: SlotId::A,
            engine: next.clone(),
        });

        let deadline = Instant::now() + Duration::from_secs(30);
        while !Arc::ptr_eq(&service.engine(), &next) {
            assert!(
                Instant::now() < deadline,
                "the handed-over release never served"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(service.on_trial(), "an install goes live on trial");
        assert_eq!(service.slot(), Serving::slot(SlotId::A));
        shutdown.cancel();
        controller.await.unwrap();
    }
}
