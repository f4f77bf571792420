//! The device's trust, kept in its state dir: one file holding the signed document's exact bytes, replaced
//! atomically, so that a SIGKILL at any instant leaves version N or N+1 and never a mix.
//!
//! A file, not a sled record, so that `outpost trust apply` works beside a running daemon (sled allows one process)
//! and the daemon picks the new version up. Every change holds an OS lock on `trust.lock` from the read to the write,
//! so the daemon taking a version over MQTT and an operator applying one by hand never interleave.
//!
//! Once a document has been stored the key files are never read again for trust: the marker `trust.adopted` is
//! written before the first document, and a trust file that is then missing or corrupt is an error (every signed
//! thing refused, serving untouched, the status says why) rather than a fall-back to keys that may have been revoked.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::chain::{self, SignedTrust};
use super::document::{Role, Trust, TrustDocument};
use super::TrustError;

pub const TRUST_FILE: &str = "trust";
pub const ADOPTED_FILE: &str = "trust.adopted";
pub const RESET_FILE: &str = "trust.reset";
const LOCK_FILE: &str = "trust.lock";

/// A `outpost trust reset` from the device's console: kept beside the trust so the status can show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetRecord {
    pub unix: u64,
    /// The version the device held before (None: its trust file was missing or corrupt).
    pub from_version: Option<u64>,
    pub to_version: u64,
}

/// What an application of documents did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub from: u64,
    pub to: u64,
}

/// The trust files of one state dir.
#[derive(Debug, Clone)]
pub struct TrustDir {
    dir: PathBuf,
}

fn io(path: &Path, e: std::io::Error) -> TrustError {
    TrustError::Io {
        path: path.display().to_string(),
        message: if e.kind() == std::io::ErrorKind::StorageFull {
            format!("the disk is full ({e}): free space in the state dir and try again")
        } else {
            e.to_string()
        },
    }
}

impl TrustDir {
    pub fn new(state_dir: &Path) -> TrustDir {
        TrustDir {
            dir: state_dir.to_path_buf(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(TRUST_FILE)
    }

    /// Takes the trust's lock (blocking); released when the file is dropped or the process dies.
    fn lock(&self) -> Result<File, TrustError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        let path = self.dir.join(LOCK_FILE);
        let file = crate::fsutil::lock_file(&path).map_err(|e| io(&path, e))?;
        Ok(file)
    }

    /// The stored trust: `None` on a device that never stored one; an error when one was stored and its file is
    /// gone, unreadable or corrupt.
    pub fn read(&self) -> Result<Option<(Vec<u8>, Trust)>, TrustError> {
        let path = self.path();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let (_, trust) = chain::decode(&bytes).map_err(|e| TrustError::Corrupt {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
                Ok(Some((bytes, trust)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.dir.join(ADOPTED_FILE).exists() {
                    Err(TrustError::Missing(path.display().to_string()))
                } else {
                    Ok(None)
                }
            }
            Err(e) => Err(io(&path, e)),
        }
    }

    /// The document, then (once) the marker: a kill between the two leaves a stored document without a marker,
    /// which reads as stored. From the marker on, a missing file is an error, never a derivation from key files
    /// that a rotation may have revoked.
    fn write(&self, bytes: &[u8]) -> Result<(), TrustError> {
        let path = self.path();
        crate::fsutil::write_atomic(&path, bytes).map_err(|e| io(&path, e))?;
        let marker = self.dir.join(ADOPTED_FILE);
        if !marker.exists() {
            crate::fsutil::write_atomic(
                &marker,
                b"a trust document is stored here; see README, Keys and rotation\n",
            )
            .map_err(|e| io(&marker, e))?;
        }
        Ok(())
    }

    /// Stores version 1 derived from the key files when nothing is stored yet, and returns what is stored. A
    /// device that stored a document keeps it, whatever the key files say now.
    pub fn adopt(&self, v1: &TrustDocument) -> Result<Trust, TrustError> {
        let _lock = self.lock()?;
        if let Some((_, trust)) = self.read()? {
            return Ok(trust);
        }
        let bytes = unsigned(v1);
        let (_, trust) = chain::decode(&bytes)?;
        if trust.version() != 1 {
            return Err(TrustError::Malformed(format!(
                "a derived document is version 1, not {}",
                trust.version()
            )));
        }
        self.write(&bytes)?;
        Ok(trust)
    }

    /// Takes each of `documents` that is newer than the stored trust, in version order, one version at a time (a
    /// device that missed rotations walks the chain). The one already stored, byte for byte, is skipped; an older
    /// one, or another document of the stored version, is refused as a replay. Each version is written as it is
    /// taken, so a failure part-way keeps the versions before it.
    pub fn apply(&self, documents: &[Vec<u8>]) -> Result<Applied, TrustError> {
        let _lock = self.lock()?;
        let (mut bytes, mut current) = self.read()?.ok_or(TrustError::NoTrust)?;
        let from = current.version();
        let mut sorted: Vec<(u64, &Vec<u8>)> = documents
            .iter()
            .map(|d| Ok((chain::decode(d)?.1.version(), d)))
            .collect::<Result<_, TrustError>>()?;
        sorted.sort_by_key(|(v, _)| *v);
        for (version, doc) in sorted {
            if version == current.version() && **doc == bytes {
                continue;
            }
            let next = chain::verify_next(&current, doc)?;
            self.write(doc)?;
            bytes = doc.clone();
            current = next;
        }
        Ok(Applied {
            from,
            to: current.version(),
        })
    }

    /// A new trust from the device's own console, when a threshold of root keys is lost or leaked and no signed
    /// rotation can help: any well-formed document signed by a threshold of its own root keys (proof that whoever
    /// resets holds the new root), whatever the stored one says. Logged and recorded for the status.
    pub fn reset(&self, document: &[u8], now_unix: u64) -> Result<Trust, TrustError> {
        let _lock = self.lock()?;
        let (signed, trust) = chain::decode(document)?;
        let needed = trust.role(Role::Root).map_or(usize::MAX, |(_, t)| t);
        let valid = trust
            .signers(
                Role::Root,
                &chain::message(&signed.document),
                &signed.signatures,
            )
            .len();
        if valid < needed {
            return Err(TrustError::TooFewRootSignatures {
                version: trust.version(),
                valid,
                needed,
            });
        }
        let from_version = self.read().ok().flatten().map(|(_, t)| t.version());
        let record = ResetRecord {
            unix: now_unix,
            from_version,
            to_version: trust.version(),
        };
        let path = self.dir.join(RESET_FILE);
        let json = serde_json::to_vec(&record).expect("a reset record encodes");
        crate::fsutil::write_atomic(&path, &json).map_err(|e| io(&path, e))?;
        self.write(document)?;
        tracing::warn!(
            from = ?from_version,
            to = trust.version(),
            "the trust was reset from the device's console"
        );
        Ok(trust)
    }

    /// The last reset, if any (a record that does not read is shown as none: it is information, not trust).
    pub fn last_reset(&self) -> Option<ResetRecord> {
        std::fs::read(self.dir.join(RESET_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }
}

/// A document stored without signatures: version 1 derived on the device from its own files needs none (it is no
/// more than the files it came from).
pub fn unsigned(document: &TrustDocument) -> Vec<u8> {
    postcard::to_stdvec(&SignedTrust {
        document: document.to_bytes(),
        signatures: Vec::new(),
    })
    .expect("a trust document always encodes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{SigningKeyFile, TrustedKeys};
    use crate::trust::{RoleKeys, TrustKey};

    fn key() -> SigningKeyFile {
        SigningKeyFile::generate().unwrap()
    }

    fn keys(ks: &[&SigningKeyFile]) -> TrustedKeys {
        TrustedKeys::parse(
            &ks.iter()
                .map(|k| k.trusted_line("x"))
                .collect::<Vec<_>>()
                .join("\n"),
        )
        .unwrap()
    }

    /// `doc` with version `version` and root `root` (threshold 1), other roles unchanged.
    fn next(doc: &TrustDocument, version: u64, root: &SigningKeyFile) -> TrustDocument {
        let mut d = doc.clone();
        d.version = version;
        if !d.keys.iter().any(|k| k.id == root.id()) {
            d.keys.push(TrustKey {
                id: root.id(),
                kind: "ed25519".into(),
                public: hex::decode(root.public_hex()).unwrap(),
            });
        }
        d.roles[0].1 = RoleKeys {
            keys: vec![root.id()],
            threshold: 1,
        };
        d
    }

    #[test]
    fn adopt_then_apply_then_a_missing_file_is_an_error_not_a_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let t = TrustDir::new(dir.path());
        let (k1, k2) = (key(), key());
        let v1 = TrustDocument::from_files(Some(&keys(&[&k1])), 1, None, None);
        assert_eq!(t.read().unwrap().map(|x| x.1.version()), None);
        assert_eq!(t.adopt(&v1).unwrap().version(), 1);
        // Adopting again (another key file now) keeps what is stored.
        let other = TrustDocument::from_files(Some(&keys(&[&k2])), 1, None, None);
        assert_eq!(
            t.adopt(&other).unwrap().root_ids(),
            vec![k1.id()],
            "the stored trust governs"
        );
        let v2 = next(&v1, 2, &k2);
        let signed = chain::sign(&v2, &[&k1, &k2]);
        assert_eq!(
            t.apply(std::slice::from_ref(&signed)).unwrap(),
            Applied { from: 1, to: 2 }
        );
        assert_eq!(std::fs::read(t.path()).unwrap(), signed);
        // The same again is no change; version 1 again is a replay.
        assert_eq!(
            t.apply(std::slice::from_ref(&signed)).unwrap(),
            Applied { from: 2, to: 2 }
        );
        let e = t.apply(&[unsigned(&v1)]).unwrap_err();
        assert!(matches!(e, TrustError::Replay { .. }), "{e}");
        // Deleted: an error, and adopting from the files does not bring version 1 back.
        std::fs::remove_file(t.path()).unwrap();
        assert!(matches!(t.read(), Err(TrustError::Missing(_))));
        assert!(matches!(t.adopt(&v1), Err(TrustError::Missing(_))));
        // Corrupt: an error too.
        std::fs::write(t.path(), b"garbage").unwrap();
        assert!(matches!(t.read(), Err(TrustError::Corrupt { .. })));
        // A reset from the console needs the new root's own signature.
        let v1b = next(&v1, 1, &k2);
        let e = t.reset(&unsigned(&v1b), 5).unwrap_err();
        assert!(matches!(e, TrustError::TooFewRootSignatures { .. }), "{e}");
        assert!(
            matches!(t.read(), Err(TrustError::Corrupt { .. })),
            "nothing changed"
        );
        let reset = chain::sign(&v1b, &[&k2]);
        assert_eq!(t.reset(&reset, 5).unwrap().root_ids(), vec![k2.id()]);
        assert_eq!(t.read().unwrap().unwrap().0, reset);
        assert_eq!(
            t.last_reset(),
            Some(ResetRecord {
                unix: 5,
                from_version: None,
                to_version: 1
            })
        );
    }

    #[test]
    fn a_device_behind_walks_the_chain_and_keeps_what_it_took_before_a_bad_link() {
        let dir = tempfile::tempdir().unwrap();
        let t = TrustDir::new(dir.path());
        let (k1, k2, k3, k4) = (key(), key(), key(), key());
        let v1 = TrustDocument::from_files(Some(&keys(&[&k1])), 1, None, None);
        t.adopt(&v1).unwrap();
        let v2 = next(&v1, 2, &k2);
        let v3 = next(&v2, 3, &k3);
        let v4 = next(&v3, 4, &k4);
        let s2 = chain::sign(&v2, &[&k1, &k2]);
        let s3 = chain::sign(&v3, &[&k2, &k3]);
        // Version 4 not signed by version 3's root.
        let bad4 = chain::sign(&v4, &[&k4]);
        let e = t.apply(&[bad4, s3.clone(), s2.clone()]).unwrap_err();
        assert!(
            matches!(e, TrustError::TooFewRootSignatures { version: 3, .. }),
            "{e}"
        );
        assert_eq!(
            t.read().unwrap().unwrap().0,
            s3,
            "versions 2 and 3 were taken"
        );
        // A gap is refused and changes nothing.
        let v5 = next(&v4, 5, &k4);
        let e = t.apply(&[chain::sign(&v5, &[&k3, &k4])]).unwrap_err();
        assert!(matches!(e, TrustError::Gap { .. }), "{e}");
        assert_eq!(t.read().unwrap().unwrap().0, s3);
    }
}
