//! The one request path, for every kind of model and every protocol: admission (one snapshot of the releases),
//! the input prepared and checked for the release that will run it, the A/B arm, the cache, a worker, a failed run
//! answered again by the previous release during a trial, probation's record, the shadow run, the hard case sent to
//! the cloud within the budget, the answer cached. What differs by kind lives in [`super::kind`].

use std::sync::Arc;
use std::time::Instant;

use super::kind::{Cached, Kind, Prepared, Ran, ShadowFrom};
use super::{Service, ServiceError};
use crate::forward::budget::Decision;
use crate::inference::Engine;
use crate::serve::answer::{micros, Answer};
use crate::serve::request::{Admitted, Input, Request};
use crate::serve::shadow::in_candidate_arm;
use crate::store::{CacheKey, CachedResult};
use crate::telemetry::Outcome;
use crate::wire::status::{ArmName, Source};

/// A request's answer, and the release that gave it (a protocol renders the answer with that release's spec: its
/// labels, its outputs).
pub struct Answered {
    pub answer: Answer,
    pub release: Arc<Engine>,
}

impl Service {
    /// The releases a request is judged and run by, read once when it comes in (see [`Admitted`]).
    pub fn admit(&self) -> Admitted {
        Admitted {
            engine: self.engine(),
            fallback: self.fallback(),
            candidate: self.candidate(),
        }
    }

    /// Admits, answers and counts one request (what a caller without a protocol of its own uses: the fleet
    /// simulation, the benchmarks).
    pub async fn answer(&self, request: Request) -> Result<Answered, ServiceError> {
        let start = Instant::now();
        let result = self.handle(&self.admit(), request).await;
        self.count(
            match &result {
                Ok(a) => Ok(a.answer.source()),
                Err(e) => Err(e.outcome()),
            },
            start,
        );
        result
    }

    /// Counts one request's outcome, whichever protocol brought it and wherever it was refused, and the queue depth.
    pub fn count(&self, result: Result<Source, Outcome>, start: Instant) {
        let outcome = match result {
            Ok(s) if s.from_cache() => Outcome::Cache,
            Ok(_) => Outcome::Edge,
            Err(o) => o,
        };
        self.counters.record(outcome, start.elapsed());
        metrics::gauge!(crate::telemetry::QUEUE_DEPTH).set(self.pool.depth() as f64);
    }

    /// Answers `request` on the releases `admitted` took: every step below runs against them, whatever swap lands
    /// meanwhile. The caller counts the outcome ([`Service::count`]).
    pub async fn handle(
        &self,
        admitted: &Admitted,
        request: Request,
    ) -> Result<Answered, ServiceError> {
        let start = Instant::now();
        let Request {
            input,
            overrides,
            want_outputs,
        } = request;
        let active = admitted.engine.clone();
        let kind = Kind::of(&active);
        kind.check(&self.name, &active, &input, &overrides)?;
        // Only releases that take this kind of request stand in for the active one.
        let other = |e: &Option<Arc<Engine>>| {
            e.clone()
                .filter(|o| o.release() != active.release() && kind.serves_like(&active, o))
        };
        let fallback = other(&admitted.fallback);
        let candidate = other(&admitted.candidate);
        let split = match &candidate {
            Some(_) if kind.splits() => self.split(),
            _ => 0.0,
        };
        // A stateful model's same inputs are not the same question (its state lives in the stream).
        let stateful = active.spec().raw().is_some_and(|io| io.stateful);
        let cache = self.cache.clone().filter(|_| !stateful);
        let forwarder = self.forwarding.forwarder();
        // A raw model's inputs are hashed only when a cache or a hard case needs the digest.
        let needs_key = kind != Kind::Tensors
            || cache.is_some()
            || (active.task().is_some() && forwarder.is_some());
        let image = input.image().cloned();
        let limits = self.limits;

        // Decoding, the A/B arm and the cache lookup are blocking work.
        let (a, c, img, lookup) = (
            active.clone(),
            candidate.clone(),
            image.clone(),
            cache.clone(),
        );
        let (engine, arm, prepared, key, hit) = crate::blocking::run(move || {
            let prepared = kind.prepare(&a, input, &overrides, &limits)?;
            // One hash of the input: the cache key, and (its input half) the sticky A/B arm.
            let key = needs_key.then(|| prepared.key(a.release_id()));
            let (engine, arm, prepared, key) = match (c, &key) {
                // The candidate's arm: a sticky share of the inputs, when it can take this one.
                (Some(c), Some(k))
                    if split > 0.0
                        && in_candidate_arm(k.input_digest(), split)
                        && (kind.same_input(&a, &c) || img.is_some()) =>
                {
                    let (p, k) = match img {
                        Some(image) if !kind.same_input(&a, &c) => {
                            let p = kind.prepare(&c, Input::Image(image), &overrides, &limits)?;
                            let k = p.key(c.release_id());
                            (p, k)
                        }
                        _ => (prepared, k.for_model(c.release_id())),
                    };
                    (c, Some(ArmName::Candidate), p, Some(k))
                }
                _ => (a, (split > 0.0).then_some(ArmName::Active), prepared, key),
            };
            let hit = match (&lookup, &key) {
                (Some(cache), Some(k)) => cache.get(k).unwrap_or_else(|err| {
                    tracing::debug!(error = %err, "cache lookup failed; running the model");
                    None
                }),
                _ => None,
            };
            Ok::<_, ServiceError>((engine, arm, prepared, key, hit))
        })
        .await?;

        let mut cloud_label: Option<CachedResult> = None;
        if let Some(hit) = hit {
            match kind.cached(&engine, hit, want_outputs, arm, start) {
                Cached::Answer(answer, confidence) => {
                    if let (Some(arm), Some(c)) = (arm, confidence) {
                        self.record_arm(arm, c, None);
                    }
                    return Ok(Answered {
                        answer,
                        release: engine,
                    });
                }
                Cached::CloudLabel(h) => cloud_label = Some(h),
                Cached::Miss => {}
            }
        }

        let on_candidate_arm = arm == Some(ArmName::Candidate);
        // The candidate's arm is compared with the active one on the edge alone: its hard cases are not forwarded.
        let forwarder = forwarder.filter(|_| !on_candidate_arm && cloud_label.is_none());
        // What a shadow run, a retry on the previous release and a hard case start from; the prepared input is
        // copied only for those that will need it.
        let from = |other: &Engine, prepared: &Prepared| {
            if kind.same_input(other, &engine) {
                Some(ShadowFrom::Prepared(prepared.clone()))
            } else {
                image
                    .clone()
                    .map(|b| ShadowFrom::Image(b, limits, overrides))
            }
        };
        let shadow = match (&candidate, on_candidate_arm) {
            (Some(c), false) => {
                let sample = self.staged.sample(self.shadow_fraction());
                (sample || (kind.shadows_hard_cases() && forwarder.is_some()))
                    .then(|| from(c, &prepared).map(|f| (c.clone(), f, sample)))
                    .flatten()
            }
            _ => None,
        };
        // The release a failed run is answered again by: the one that served before the trial, or, for the
        // candidate's arm, the active one.
        let previous = if on_candidate_arm {
            Some(active.clone())
        } else {
            fallback
        };
        let retry = previous.and_then(|p| from(&p, &prepared).map(|f| (p, f)));
        let case_input = match (&image, forwarder) {
            (None, Some(_)) if kind != Kind::Tensors || engine.task().is_some() => {
                Some(prepared.clone())
            }
            _ => None,
        };

        // Whether the release admitted failed and the previous one answered: then the answer is the previous
        // release's, and neither arm's figures take it (the candidate's would count the active's run, the active's an
        // input of the candidate's share).
        let (engine, key, ran, retried) = match self.run(&engine, prepared).await {
            Ok(ran) => (engine, key, ran, false),
            Err(ServiceError::Failed(error)) => {
                self.record_error(engine.release_id(), &error.to_string());
                let Some((previous, from)) = retry else {
                    return Err(ServiceError::Failed(error));
                };
                tracing::warn!(%error, "the model on trial (or the candidate) failed; answering with the previous model");
                let prepared = match from {
                    ShadowFrom::Prepared(p) => p,
                    ShadowFrom::Image(image, limits, overrides) => {
                        let p = previous.clone();
                        crate::blocking::run(move || {
                            kind.prepare(&p, Input::Image(image), &overrides, &limits)
                        })
                        .await?
                    }
                };
                let key = needs_key.then(|| prepared.key(previous.release_id()));
                let ran = self.run(&previous, prepared).await?;
                (previous, key, ran, true)
            }
            Err(e) => return Err(e),
        };
        let run_us = micros(ran.run());
        // The arm that answered: on the candidate's share, a failed run was answered by the active release.
        let arm = if retried && on_candidate_arm {
            Some(ArmName::Active)
        } else {
            arm
        };
        let judged = self.judge(&engine, ran, (want_outputs, cache.is_some()), arm, start)?;
        self.record_run_counted(
            engine.release_id(),
            std::time::Duration::from_micros(run_us),
            judged.confidence,
            judged.count,
        );
        if let (Some(arm), Some(c), false) = (arm, judged.confidence, retried) {
            self.record_arm(arm, c, Some(run_us));
        }
        let mut answer = judged.answer;
        if let (Some(cloud), Answer::Class(r)) = (cloud_label, &mut answer) {
            r.edge_label = Some(std::mem::replace(&mut r.label, cloud.label));
            r.confidence = cloud.confidence;
            r.margin = cloud.margin;
            r.entropy = cloud.entropy;
            r.source = Source::CloudCache;
            r.latency_us = micros(start.elapsed());
            return Ok(Answered {
                answer,
                release: engine,
            });
        }
        // Every run's hardness feeds the drift alarm; a hard case goes to the cloud within the model's forward
        // budget (the hardest first), whichever way it came in.
        let decision = judged
            .hardness
            .filter(|_| !on_candidate_arm)
            .map(|(h, bar, score)| self.weigh(h, bar, score));
        let hard = forwarder
            .filter(|_| decision == Some(Decision::Forward))
            .zip(key.as_ref());
        let case_id =
            hard.map(|(_, k)| crate::forward::case_id(&self.config.fleet.device_id, k.as_bytes()));
        let entry = judged.entry;
        if hard.is_none() {
            self.cache_edge(key.as_ref(), entry.clone()).await;
        }
        if let Some((c, from, sample)) = shadow {
            // A forwarded hard case always runs on the candidate, so the cloud's label can say which was right.
            if sample || case_id.is_some() {
                self.shadow(c, from, &answer, run_us, case_id.clone());
            }
        }
        if let (Some((f, key)), Some(id)) = (hard, case_id) {
            let case = self.case(
                (&id, f.now_unix()),
                key,
                &answer,
                judged.confidence.unwrap_or(0.0),
                image.as_ref(),
                case_input,
                overrides,
            );
            let answered = self.absorb(&mut answer, &id, f.forward(case).await);
            // Cached only once the case is durably queued (so a crash in between cannot leave a cached answer whose
            // case never reached the cloud), and never over the cloud's answer, which may have come meanwhile.
            if !answered {
                self.cache_edge(Some(key), entry).await;
            }
            answer.set_latency(start);
        }
        Ok(Answered {
            answer,
            release: engine,
        })
    }

    /// Runs `prepared` on a worker.
    async fn run(&self, engine: &Arc<Engine>, prepared: Prepared) -> Result<Ran, ServiceError> {
        let e = (**engine).clone();
        let busy = ServiceError::Busy;
        Ok(match prepared {
            Prepared::Tensor(t) => {
                Ran::Class(worker_reply(self.pool.submit(e, t).map_err(busy)?).await?)
            }
            Prepared::Task(i) => {
                Ran::Task(worker_reply(self.pool.submit_task(e, i).map_err(busy)?).await?)
            }
            Prepared::Tensors(v) => {
                Ran::Tensors(worker_reply(self.pool.submit_tensors(e, v).map_err(busy)?).await?)
            }
        })
    }

    /// Caches the edge's answer, unless the cloud's answer for this input is there already (blocking work off the
    /// async threads).
    async fn cache_edge(&self, key: Option<&CacheKey>, entry: Option<CachedResult>) {
        let (Some(cache), Some(key), Some(entry)) = (self.cache.clone(), key.cloned(), entry)
        else {
            return;
        };
        match crate::blocking::run(move || cache.insert_unless_cloud(&key, &entry)).await {
            Ok(evicted) if evicted > 0 => {
                metrics::counter!(crate::telemetry::CACHE_EVICTIONS).increment(evicted)
            }
            Err(e) => tracing::debug!(error = %e, "cannot cache the result"),
            _ => {}
        }
    }
}

/// A worker's answer: an input that does not fit the model is the caller's fault, a failed run the release's.
async fn worker_reply<T>(
    rx: tokio::sync::oneshot::Receiver<Result<T, crate::inference::InferenceError>>,
) -> Result<T, ServiceError> {
    use crate::inference::InferenceError;
    rx.await
        .map_err(|_| ServiceError::WorkerLost)?
        .map_err(|e| match e {
            InferenceError::InputShape { .. } | InferenceError::Tensors(_) => {
                ServiceError::BadInput(e)
            }
            InferenceError::Task(ref t) if t.is_request() => ServiceError::BadInput(e),
            other => ServiceError::Failed(other),
        })
}
