//! What `outpost trust` does on the device's console, beside a running daemon or without one: the same stored
//! trust and the same rules the daemon uses, through the trust file's lock.

use std::path::Path;

use super::document::Trust;
use super::stored::{Applied, TrustDir};
use super::TrustError;
use crate::config::Config;

/// The stored trust, or version 1 from the config's key files: stored now when `store` (what the daemon does at
/// its first start), else only derived (a hand-run install leaves storing it to the daemon, which has the whole
/// config: the cloud keys too).
pub fn stored_or_derived(config: &Config, store: bool) -> Result<Trust, TrustError> {
    super::live::stored_or_derived(
        &TrustDir::new(&config.agent.state_dir),
        super::live::from_config(config),
        store,
    )
}

/// Takes `files` (signed trust documents, any order) as newer versions of the device's trust. Each version taken
/// raises the device's time floor to its issue time.
pub fn apply(config: &Config, files: &[impl AsRef<Path>]) -> Result<Applied, TrustError> {
    let mut docs = Vec::with_capacity(files.len());
    for f in files {
        docs.push(read_capped(f.as_ref())?);
    }
    stored_or_derived(config, true)?;
    let dir = TrustDir::new(&config.agent.state_dir);
    let applied = dir.apply(&docs)?;
    if let Some((_, t)) = dir.read()? {
        crate::clock::Clock::open(&config.agent.state_dir).observe(t.document().issued_unix);
    }
    Ok(applied)
}

/// Replaces the device's trust with `file`, when its root is lost (see [`TrustDir::reset`]).
pub fn reset(config: &Config, file: &Path) -> Result<Trust, TrustError> {
    let doc = read_capped(file)?;
    let clock = crate::clock::Clock::open(&config.agent.state_dir);
    let t = TrustDir::new(&config.agent.state_dir).reset(&doc, clock.reading().trusted_now())?;
    clock.observe(t.document().issued_unix);
    Ok(t)
}

/// Reads a document file, refusing one over the cap before reading it whole.
pub fn read_capped(path: &Path) -> Result<Vec<u8>, TrustError> {
    let io = |e: std::io::Error| TrustError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > super::chain::MAX_SIGNED as u64 {
        return Err(TrustError::TooLarge {
            size: size as usize,
            cap: super::chain::MAX_SIGNED,
        });
    }
    std::fs::read(path).map_err(io)
}
