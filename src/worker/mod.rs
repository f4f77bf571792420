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

use crate::inference::task::{Decoded, Fit, Overrides};
use crate::inference::{Engine, InferenceError, Prediction, Session, TensorValue};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("all workers are busy and the queue of {0} is full; retry shortly")]
    Full(usize),
    #[error("the agent is shutting down")]
    Closed,
}

struct Job {
    engine: Engine,
    work: Work,
}

/// What a job runs: a classifier on one input tensor, or a raw tensor model on its inputs.
enum Work {
    Classify(Vec<f32>, oneshot::Sender<Result<Ran, InferenceError>>),
    Tensors(
        Vec<TensorValue>,
        oneshot::Sender<Result<RanTensors, InferenceError>>,
    ),
    /// A task model (detector, scorer) on one preprocessed image, decoded with the call's overrides.
    Task(TaskInput, oneshot::Sender<Result<RanTask, InferenceError>>),
}

/// What a task model's run takes: the image's tensor, how the image was fitted, and the call's thresholds.
#[derive(Debug, Clone)]
pub struct TaskInput {
    pub tensor: Vec<f32>,
    pub fit: Fit,
    pub overrides: Overrides,
}

/// A finished run of a task model: the decoded answer and its hardness, and the time the model took.
#[derive(Debug, Clone)]
pub struct RanTask {
    pub decoded: Decoded,
    /// The outputs it was decoded from (the Open Inference Protocol can return them).
    pub outputs: Vec<TensorValue>,
    pub run: std::time::Duration,
}

/// A finished run of a raw tensor model: its outputs and the time the model took.
#[derive(Debug, Clone)]
pub struct RanTensors {
    pub outputs: Vec<TensorValue>,
    pub run: std::time::Duration,
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
        self.queue(Job {
            engine,
            work: Work::Classify(tensor, reply),
        })?;
        Ok(rx)
    }

    /// Queues one run of a raw tensor model.
    pub fn submit_tensors(
        &self,
        engine: Engine,
        inputs: Vec<TensorValue>,
    ) -> Result<oneshot::Receiver<Result<RanTensors, InferenceError>>, PoolError> {
        let (reply, rx) = oneshot::channel();
        self.queue(Job {
            engine,
            work: Work::Tensors(inputs, reply),
        })?;
        Ok(rx)
    }

    /// Queues one run of a task model (detector, scorer).
    pub fn submit_task(
        &self,
        engine: Engine,
        input: TaskInput,
    ) -> Result<oneshot::Receiver<Result<RanTask, InferenceError>>, PoolError> {
        let (reply, rx) = oneshot::channel();
        self.queue(Job {
            engine,
            work: Work::Task(input, reply),
        })?;
        Ok(rx)
    }

    fn queue(&self, job: Job) -> Result<(), PoolError> {
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let tx = guard.as_ref().ok_or(PoolError::Closed)?;
        self.depth.fetch_add(1, Ordering::SeqCst);
        match tx.try_send(job) {
            Ok(()) => Ok(()),
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

/// How long a worker waits without a job before it hands the memory its runs freed back to the system.
const IDLE_TRIM: std::time::Duration = std::time::Duration::from_secs(1);

fn work(rx: Receiver<Job>, depth: Arc<AtomicUsize>) {
    // One session per thread, rebuilt only when a job brings another release: a session answers with its own
    // engine's spec, so the same model bytes under another version or labels need their own (keyed by the file
    // digest, a re-release answered with the old labels).
    let mut session: Option<Session> = None;
    // Runs since this thread last handed freed memory back (see inference::release_freed_memory).
    let mut ran = false;
    loop {
        let job = match rx.recv_timeout(IDLE_TRIM) {
            Ok(job) => job,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                // Idle after runs: what they freed (input tensors, scratch, decoded images on other threads)
                // goes back to the system instead of holding the burst's peak. Never under load.
                if std::mem::take(&mut ran) {
                    crate::inference::release_freed_memory();
                }
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        };
        ran = true;
        depth.fetch_sub(1, Ordering::SeqCst);
        let same = session
            .as_ref()
            .is_some_and(|s| s.engine().release_id() == job.engine.release_id());
        if !same {
            session = None;
        }
        match job.work {
            Work::Classify(tensor, reply) => {
                let result = guarded(&mut session, &job.engine, |s| {
                    let start = std::time::Instant::now();
                    let prediction = s.classify(&tensor)?;
                    Ok(Ran {
                        prediction,
                        run: start.elapsed(),
                    })
                });
                let _ = reply.send(result);
            }
            Work::Tensors(inputs, reply) => {
                let result = guarded(&mut session, &job.engine, |s| {
                    let start = std::time::Instant::now();
                    let outputs = s.run_tensors(&inputs)?;
                    Ok(RanTensors {
                        outputs,
                        run: start.elapsed(),
                    })
                });
                let _ = reply.send(result);
            }
            Work::Task(input, reply) => {
                let result = guarded(&mut session, &job.engine, |s| {
                    let start = std::time::Instant::now();
                    let (decoded, outputs) =
                        s.run_task(&input.tensor, &input.fit, &input.overrides)?;
                    Ok(RanTask {
                        decoded,
                        outputs,
                        run: start.elapsed(),
                    })
                });
                let _ = reply.send(result);
            }
        }
    }
}

/// Runs `f` on the thread's session for `engine` (made when missing), with fault injection, catching a panic of the
/// runtime: it costs one request, not a worker.
fn guarded<T>(
    session: &mut Option<Session>,
    engine: &Engine,
    f: impl FnOnce(&mut Session) -> Result<T, InferenceError>,
) -> Result<T, InferenceError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if session.is_none() {
            *session = Some(engine.session()?);
        }
        crate::fault::maybe_fail_run(engine.digest())?;
        f(session.as_mut().expect("session was just set"))
    }))
    .unwrap_or_else(|_| {
        *session = None;
        Err(InferenceError::Run(
            "the inference runtime panicked on this input".into(),
        ))
    })
}

/// Work that must never delay an answer nor take more than a share of one core (shadow runs of a candidate model):
/// one thread behind a small queue. A job that finds the queue full is refused at once, and after each job of
/// duration t the thread rests t * (1/share - 1), so it keeps to `share` of a core whatever the load.
pub struct Background {
    tx: Sender<Box<dyn FnOnce() + Send>>,
    share: f64,
}

impl Background {
    pub fn start(max_cpu_share: f64, capacity: usize) -> Arc<Background> {
        let (tx, rx) = bounded::<Box<dyn FnOnce() + Send>>(capacity.max(1));
        let share = max_cpu_share.clamp(0.01, 1.0);
        std::thread::Builder::new()
            .name("shadow".into())
            .spawn(move || {
                for job in rx {
                    let t = std::time::Instant::now();
                    job();
                    let busy = t.elapsed();
                    if share < 1.0 {
                        std::thread::sleep(busy.mul_f64(1.0 / share - 1.0));
                    }
                }
            })
            .expect("spawn the shadow thread");
        Arc::new(Background { tx, share })
    }

    /// Queues `job`; false (and the job dropped) when the queue is full.
    pub fn try_run(&self, job: impl FnOnce() + Send + 'static) -> bool {
        self.tx.try_send(Box::new(job)).is_ok()
    }

    pub fn share(&self) -> f64 {
        self.share
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::time::{Duration, Instant};

    #[test]
    fn background_keeps_to_its_cpu_share_and_refuses_when_full() {
        let bg = Background::start(0.25, 4);
        let busy_us = Arc::new(AtomicU64::new(0));
        let (mut accepted, mut refused) = (0, 0);
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(800) {
            let b = busy_us.clone();
            let ok = bg.try_run(move || {
                let t = Instant::now();
                while t.elapsed() < Duration::from_millis(4) {
                    std::hint::spin_loop();
                }
                b.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
            });
            if ok {
                accepted += 1
            } else {
                refused += 1
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        let wall = start.elapsed().as_micros() as f64;
        let share = busy_us.load(Ordering::Relaxed) as f64 / wall;
        assert!(
            share < 0.3,
            "shadow work took {share:.2} of a core (cap 0.25)"
        );
        assert!(share > 0.1, "shadow work barely ran: {share:.2}");
        assert!(
            refused > accepted,
            "a full queue refuses: {accepted} accepted, {refused} refused"
        );
    }
}
