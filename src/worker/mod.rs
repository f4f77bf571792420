//! The inference worker pool: N OS threads that run models, fed by a bounded queue.
//!
//! Inference is CPU-bound and blocking, so it never runs on the async threads. The queue is bounded: when it is
//! full, `submit` fails at once and the API answers 503 instead of letting latency grow without limit. Each job
//! carries the engine it was admitted with, so a model swap never changes the model under a request in flight.

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tokio::sync::oneshot;

use crate::inference::{Engine, InferenceError, Prediction, Session};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("all workers are busy and the queue of {0} is full; retry shortly")]
    Full(usize),
    #[error("the agent is shutting down")]
    Closed,
}

struct Job {
    engine: Engine,
    tensor: Vec<f32>,
    reply: oneshot::Sender<Result<Ran, InferenceError>>,
}

/// A finished run: the prediction and the time the model itself took (queueing excluded), which probation compares
/// across models.
#[derive(Debug, Clone)]
pub struct Ran {
    pub prediction: Prediction,
    pub run: std::time::Duration,
}

pub struct Pool {
    tx: Mutex<Option<Sender<Job>>>,
    handles: Mutex<Vec<JoinHandle<()>>>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
    workers: usize,
}

impl Pool {
    /// Starts `workers` threads behind a queue of `capacity` jobs.
    pub fn start(workers: usize, capacity: usize) -> Pool {
        let (tx, rx) = bounded::<Job>(capacity);
        let depth = Arc::new(AtomicUsize::new(0));
        let handles = (0..workers.max(1))
            .map(|i| {
                let rx = rx.clone();
                let depth = depth.clone();
                std::thread::Builder::new()
                    .name(format!("infer-{i}"))
                    .spawn(move || work(rx, depth))
                    .expect("spawn an inference thread")
            })
            .collect();
        Pool {
            tx: Mutex::new(Some(tx)),
            handles: Mutex::new(handles),
            depth,
            capacity,
            workers: workers.max(1),
        }
    }

    /// Queues one inference; the answer arrives on the returned receiver.
    pub fn submit(
        &self,
        engine: Engine,
        tensor: Vec<f32>,
    ) -> Result<oneshot::Receiver<Result<Ran, InferenceError>>, PoolError> {
        let (reply, rx) = oneshot::channel();
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let tx = guard.as_ref().ok_or(PoolError::Closed)?;
        self.depth.fetch_add(1, Ordering::SeqCst);
        match tx.try_send(Job {
            engine,
            tensor,
            reply,
        }) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.depth.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => PoolError::Full(self.capacity),
                    TrySendError::Disconnected(_) => PoolError::Closed,
                })
            }
        }
    }

    /// Jobs waiting for a worker.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Refuses new jobs, lets the workers finish every queued one, and waits for them (blocking).
    pub fn drain(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let handles = std::mem::take(&mut *self.handles.lock().unwrap_or_else(|p| p.into_inner()));
        for h in handles {
            let _ = h.join();
        }
    }
}

fn work(rx: Receiver<Job>, depth: Arc<AtomicUsize>) {
    // One session per thread, rebuilt only when a job brings another model.
    let mut session: Option<Session> = None;
    while let Ok(job) = rx.recv() {
        depth.fetch_sub(1, Ordering::SeqCst);
        let same = session
            .as_ref()
            .is_some_and(|s| s.engine().digest() == job.engine.digest());
        if !same {
            session = None;
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if session.is_none() {
                session = Some(job.engine.session()?);
            }
            crate::fault::maybe_fail_run(job.engine.digest())?;
            let start = std::time::Instant::now();
            let prediction = session
                .as_mut()
                .expect("session was just set")
                .classify(&job.tensor)?;
            Ok(Ran {
                prediction,
                run: start.elapsed(),
            })
        }))
        .unwrap_or_else(|_| {
            // A panic inside the runtime must cost one request, not a worker.
            session = None;
            Err(InferenceError::Run(
                "the inference runtime panicked on this input".into(),
            ))
        });
        let _ = job.reply.send(result);
    }
}
