//! Operator keys: ed25519 signing keys in 0600 files, and the device's list of trusted public keys.
//!
//! A key id is derived from the public key (first 8 bytes of its SHA-256, hex), so a signature can never claim to
//! come from a key it does not belong to. Trusted-key file: one `<public key hex> [comment]` per line, `#` comments;
//! `outpostctl keygen` prints exactly such a line, ready to append.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::path::Path;

use super::{BundleError, BundleSignature};

pub type KeyId = String;

const PRIVATE_PREFIX: &str = "outpost-ed25519-private:";

pub fn key_id(public: &VerifyingKey) -> KeyId {
    hex::encode(&Sha256::digest(public.as_bytes())[..8])
}

/// A private key as stored on the operator's machine.
pub struct SigningKeyFile {
    key: SigningKey,
}

impl std::fmt::Debug for SigningKeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        write!(f, "SigningKeyFile(id {})", self.id())
    }
}

impl SigningKeyFile {
    pub fn generate() -> Result<SigningKeyFile, BundleError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| BundleError::Key {
            path: "<random>".into(),
            message: e.to_string(),
        })?;
        Ok(SigningKeyFile {
            key: SigningKey::from_bytes(&secret),
        })
    }

    pub fn id(&self) -> KeyId {
        key_id(&self.key.verifying_key())
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// The line to append to a trusted-keys file.
    pub fn trusted_line(&self, comment: &str) -> String {
        format!("{} {}", self.public_hex(), comment)
    }

    /// Writes the private key, readable by the owner only.
    pub fn save(&self, path: &Path) -> Result<(), BundleError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| BundleError::Key {
                path: path.display().to_string(),
                message: format!("{e} (refusing to overwrite an existing key)"),
            })?;
        writeln!(f, "{PRIVATE_PREFIX}{}", hex::encode(self.key.to_bytes()))?;
        f.sync_all()?;
        Ok(())
    }

    pub fn load(path: &Path) -> Result<SigningKeyFile, BundleError> {
        let err = |m: &str| BundleError::Key {
            path: path.display().to_string(),
            message: m.to_string(),
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(&e.to_string()))?;
        let hexkey = text
            .trim()
            .strip_prefix(PRIVATE_PREFIX)
            .ok_or_else(|| err("not an outpost private key file"))?;
        let bytes: [u8; 32] = hex::decode(hexkey)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| err("the key is not 32 hex-encoded bytes"))?;
        Ok(SigningKeyFile {
            key: SigningKey::from_bytes(&bytes),
        })
    }

    pub fn sign(&self, message: &[u8]) -> BundleSignature {
        BundleSignature {
            key_id: self.id(),
            signature: self.key.sign(message).to_bytes().to_vec(),
        }
    }
}

/// The public keys a device trusts.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<(KeyId, VerifyingKey)>,
}

impl TrustedKeys {
    pub fn parse(text: &str) -> Result<TrustedKeys, String> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let hexkey = line.split_whitespace().next().unwrap_or("");
            let bytes: [u8; 32] = hex::decode(hexkey)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| {
                    format!("line {}: expected a 64-hex-digit ed25519 public key", n + 1)
                })?;
            let key =
                VerifyingKey::from_bytes(&bytes).map_err(|e| format!("line {}: {e}", n + 1))?;
            keys.push((key_id(&key), key));
        }
        Ok(TrustedKeys { keys })
    }

    pub fn from_file(path: &Path) -> Result<TrustedKeys, BundleError> {
        let text = std::fs::read_to_string(path).map_err(|e| BundleError::Key {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        TrustedKeys::parse(&text).map_err(|m| BundleError::Key {
            path: path.display().to_string(),
            message: m,
        })
    }

    /// The keys by id, in the order they were listed.
    pub fn entries(&self) -> &[(KeyId, VerifyingKey)] {
        &self.keys
    }

    /// A set of the given keys (ids derived from them).
    pub fn from_keys(keys: impl IntoIterator<Item = VerifyingKey>) -> TrustedKeys {
        TrustedKeys {
            keys: keys.into_iter().map(|k| (key_id(&k), k)).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// True when a key with this id is in the set.
    pub fn knows(&self, key_id: &str) -> bool {
        self.keys.iter().any(|(id, _)| id == key_id)
    }

    /// True when `key_id` is trusted and `sig` is its strict signature over `msg`.
    pub fn verify(&self, key_id: &str, msg: &[u8], sig: &[u8]) -> bool {
        let Ok(sig) = <[u8; 64]>::try_from(sig) else {
            return false;
        };
        let sig = Signature::from_bytes(&sig);
        self.keys
            .iter()
            .any(|(id, k)| id == key_id && k.verify_strict(msg, &sig).is_ok())
    }
}

/// The key ids among `sigs` that `keys` does not list, once each: what a refusal names when a signature comes from a
/// key that a rotation removed (or that was never trusted).
pub fn strangers(keys: &TrustedKeys, sigs: &[super::BundleSignature]) -> Vec<KeyId> {
    let mut out: Vec<KeyId> = Vec::new();
    for s in sigs {
        if !keys.knows(&s.key_id) && !out.contains(&s.key_id) {
            out.push(s.key_id.clone());
        }
    }
    out
}
