//! Blocking work (sled, files, model loads, image decoding) run off the async threads, answered by one flat
//! `Result`.
//!
//! `tokio::task::spawn_blocking(f).await` gives `Result<Result<T, E>, JoinError>`: the outer error only says the task
//! stopped (it panicked, or the runtime dropped it at shutdown), the inner one is the work's own failure. Checking
//! one and not the other is an easy mistake with a quiet outcome: `if let Err(e) = spawn_blocking(|| put()).await`
//! let a command run when its sequence number was never written (issue 25). [`run`] folds both into the caller's
//! own error type, so `?` or a `match` sees every failure and no caller unwraps a nested result by hand. This is the
//! one place in the crate that calls `spawn_blocking`.

/// The blocking work stopped before it finished (it panicked, or the runtime shut down under it), so whatever it
/// was doing may be done, half done or not done: a caller must treat it as failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the blocking work stopped before it finished ({0}); what it was doing may be half done, so it counts as failed")]
pub struct Panicked(String);

impl From<tokio::task::JoinError> for Panicked {
    fn from(e: tokio::task::JoinError) -> Panicked {
        Panicked(if e.is_panic() {
            "it panicked".into()
        } else {
            "the runtime shut down under it".into()
        })
    }
}

/// Paths that still carry errors as text (older code, API messages) take the sentence as is.
impl From<Panicked> for String {
    fn from(p: Panicked) -> String {
        p.to_string()
    }
}

/// Work whose errors are `std::io::Error` (file writes) can use [`run`] directly.
impl From<Panicked> for std::io::Error {
    fn from(p: Panicked) -> std::io::Error {
        std::io::Error::other(p)
    }
}

/// Runs `f` on the blocking pool and returns its result, or [`Panicked`] (as the caller's `E`) when it did not
/// finish: one `Result`, so a failure of the work and a failure to run it cannot be told apart by accident.
pub async fn run<T, E, F>(f: F) -> Result<T, E>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<Panicked> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(Panicked::from(e).into()),
    }
}

/// [`run`] for work that cannot fail on its own (it returns a plain value): only [`Panicked`] can come back.
pub async fn value<T, F>(f: F) -> Result<T, Panicked>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(Panicked::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum WorkError {
        #[error("the work failed")]
        Failed,
        #[error(transparent)]
        Panicked(#[from] Panicked),
    }

    /// The work's own result, its own error and a panic all come back as one flat `Result`.
    #[tokio::test]
    async fn every_outcome_is_one_flat_result() {
        assert_eq!(run(|| Ok::<_, WorkError>(7)).await.unwrap(), 7);
        assert!(matches!(
            run(|| Err::<u8, _>(WorkError::Failed)).await,
            Err(WorkError::Failed)
        ));
        let panicked = run(|| -> Result<u8, WorkError> { panic!("injected") }).await;
        match panicked {
            Err(WorkError::Panicked(p)) => assert!(p.to_string().contains("panicked"), "{p}"),
            other => panic!("a panic must come back as Panicked: {other:?}"),
        }
        assert_eq!(value(|| 3).await.unwrap(), 3);
        assert!(value(|| -> u8 { panic!("injected") }).await.is_err());
    }
}
