//! The signed form of a trust document and the rule that takes version N+1 over version N.

use serde::{Deserialize, Serialize};

use super::document::{Role, Trust, TrustDocument};
use super::TrustError;
use crate::bundle::{BundleSignature, SigningKeyFile};

/// Signatures over a trust document are domain-separated: no bundle, command or answer signature can pass as one.
pub const DOMAIN: &[u8] = b"outpost-trust-v1\0";

/// The largest signed document taken: far under a managed broker's message (AWS IoT Core: 128 KB), and room for
/// hundreds of keys.
pub const MAX_SIGNED: usize = 64 * 1024;

/// What is published and stored: the document's exact bytes and the signatures over them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedTrust {
    #[serde(with = "serde_bytes")]
    pub document: Vec<u8>,
    pub signatures: Vec<BundleSignature>,
}

pub(crate) fn message(document: &[u8]) -> Vec<u8> {
    [DOMAIN, document].concat()
}

/// Signs `document` with each of `keys` (the old root's and the new root's, for a rotation).
pub fn sign(document: &TrustDocument, keys: &[&SigningKeyFile]) -> Vec<u8> {
    let bytes = document.to_bytes();
    let msg = message(&bytes);
    let signed = SignedTrust {
        signatures: keys.iter().map(|k| k.sign(&msg)).collect(),
        document: bytes,
    };
    postcard::to_stdvec(&signed).expect("a signed trust document always encodes")
}

/// Decodes a signed document (size first) and checks the document on its own.
pub fn decode(bytes: &[u8]) -> Result<(SignedTrust, Trust), TrustError> {
    if bytes.len() > MAX_SIGNED {
        return Err(TrustError::TooLarge {
            size: bytes.len(),
            cap: MAX_SIGNED,
        });
    }
    let signed: SignedTrust = match postcard::take_from_bytes(bytes) {
        Ok((s, [])) => s,
        Ok((_, rest)) => {
            return Err(TrustError::Malformed(format!(
                "{} bytes after the signatures",
                rest.len()
            )))
        }
        Err(e) => return Err(TrustError::Malformed(e.to_string())),
    };
    let document: TrustDocument = match postcard::take_from_bytes(&signed.document) {
        Ok((d, [])) => d,
        Ok((_, rest)) => {
            return Err(TrustError::Malformed(format!(
                "{} bytes after the document",
                rest.len()
            )))
        }
        Err(e) => return Err(TrustError::Malformed(e.to_string())),
    };
    let trust = document.check()?;
    Ok((signed, trust))
}

/// Takes `bytes` as the version after `current`: well-formed, exactly one version newer, signed by a threshold of
/// `current`'s root keys and a threshold of its own root keys (distinct keys each). A device that missed several
/// rotations calls this once per version, in order.
pub fn verify_next(current: &Trust, bytes: &[u8]) -> Result<Trust, TrustError> {
    if current.role(Role::Root).is_none() {
        return Err(TrustError::NoRoot);
    }
    let (signed, next) = decode(bytes)?;
    let (version, now) = (next.version(), current.version());
    if version <= now {
        return Err(TrustError::Replay {
            version,
            current: now,
        });
    }
    if version != now + 1 {
        return Err(TrustError::Gap {
            version,
            current: now,
        });
    }
    let msg = message(&signed.document);
    for (by, version) in [(current, now), (&next, version)] {
        let needed = by.role(Role::Root).map_or(usize::MAX, |(_, t)| t);
        let valid = by.signers(Role::Root, &msg, &signed.signatures).len();
        if valid < needed {
            return Err(TrustError::TooFewRootSignatures {
                version,
                valid,
                needed,
            });
        }
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::{RoleKeys, TrustKey};

    fn key() -> SigningKeyFile {
        SigningKeyFile::generate().unwrap()
    }

    fn entry(k: &SigningKeyFile) -> TrustKey {
        TrustKey {
            id: k.id(),
            kind: "ed25519".into(),
            public: hex::decode(k.public_hex()).unwrap(),
        }
    }

    fn role(keys: &[&SigningKeyFile], threshold: u32) -> RoleKeys {
        RoleKeys {
            keys: keys.iter().map(|k| k.id()).collect(),
            threshold,
        }
    }

    /// A document of `version` whose root is `root` at `threshold` and whose other roles are `op`.
    fn doc(
        version: u64,
        root: &[&SigningKeyFile],
        threshold: u32,
        op: &SigningKeyFile,
    ) -> TrustDocument {
        let mut keys: Vec<TrustKey> = root.iter().map(|k| entry(k)).collect();
        if !root.iter().any(|k| k.id() == op.id()) {
            keys.push(entry(op));
        }
        TrustDocument {
            version,
            issued_unix: 1_796_601_600,
            keys,
            roles: vec![
                ("root".into(), role(root, threshold)),
                ("bundles".into(), role(&[op], 1)),
                ("commands".into(), role(&[op], 1)),
            ],
        }
    }

    /// Version 1, trusted as derived (never signed by anything before it).
    fn v1(root: &[&SigningKeyFile], threshold: u32, op: &SigningKeyFile) -> Trust {
        doc(1, root, threshold, op).check().unwrap()
    }

    #[test]
    fn a_rotation_needs_the_old_root_and_the_new_root() {
        let (r1, r2, r3, op) = (key(), key(), key(), key());
        let current = v1(&[&r1, &r2], 2, &op);
        // Moves the root to r3 alone: signed by both old root keys and the new one.
        let next = doc(2, &[&r3], 1, &op);
        let taken = verify_next(&current, &sign(&next, &[&r1, &r2, &r3])).unwrap();
        assert_eq!(taken.version(), 2);
        assert_eq!(taken.root_ids(), vec![r3.id()]);
        // One leaked key of the two-key root is not enough, whoever else signs.
        let e = verify_next(&current, &sign(&next, &[&r1, &r3])).unwrap_err();
        assert_eq!(
            e,
            TrustError::TooFewRootSignatures {
                version: 1,
                valid: 1,
                needed: 2
            }
        );
        // A new root set that did not sign its own document.
        let e = verify_next(&current, &sign(&next, &[&r1, &r2])).unwrap_err();
        assert!(
            matches!(
                e,
                TrustError::TooFewRootSignatures {
                    version: 2,
                    valid: 0,
                    ..
                }
            ),
            "{e}"
        );
        // The same key's signature twice counts once.
        let e = verify_next(&current, &sign(&next, &[&r1, &r1, &r3])).unwrap_err();
        assert!(
            matches!(
                e,
                TrustError::TooFewRootSignatures {
                    version: 1,
                    valid: 1,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn replays_and_gaps_are_refused_and_a_missed_chain_is_walked_in_order() {
        let (r, op) = (key(), key());
        let one = v1(&[&r], 1, &op);
        let v2 = sign(&doc(2, &[&r], 1, &op), &[&r]);
        let v3 = sign(&doc(3, &[&r], 1, &op), &[&r]);
        let v4 = sign(&doc(4, &[&r], 1, &op), &[&r]);
        assert_eq!(
            verify_next(&one, &v3).unwrap_err(),
            TrustError::Gap {
                version: 3,
                current: 1
            }
        );
        let two = verify_next(&one, &v2).unwrap();
        assert_eq!(
            verify_next(&two, &v2).unwrap_err(),
            TrustError::Replay {
                version: 2,
                current: 2
            }
        );
        let three = verify_next(&two, &v3).unwrap();
        assert_eq!(verify_next(&three, &v4).unwrap().version(), 4);
        let old = sign(&doc(1, &[&r], 1, &op), &[&r]);
        assert!(matches!(
            verify_next(&three, &old),
            Err(TrustError::Replay { .. })
        ));
    }

    #[test]
    fn malformed_documents_are_refused_with_their_cause() {
        let (r, op, other) = (key(), key(), key());
        let good = doc(2, &[&r], 1, &op);
        let check = |d: TrustDocument| d.check().map(|_| ()).unwrap_err();
        let mut d = good.clone();
        d.keys.push(entry(&op));
        assert_eq!(check(d), TrustError::DuplicateKey(op.id()));
        let mut d = good.clone();
        d.roles[1].1.keys.push(other.id());
        assert!(matches!(
            check(d),
            TrustError::UnknownKeyInRole {
                role: "bundles",
                ..
            }
        ));
        let mut d = good.clone();
        d.keys[0].kind = "rsa".into();
        assert!(matches!(check(d), TrustError::UnknownKeyType { .. }));
        let mut d = good.clone();
        d.keys[0].public = vec![1, 2, 3];
        assert!(matches!(check(d), TrustError::BadKey(_)));
        let mut d = good.clone();
        d.keys[0].id = "0011223344556677".into();
        assert!(matches!(check(d), TrustError::KeyIdMismatch { .. }));
        let mut d = good.clone();
        d.roles[0].1.threshold = 0;
        assert_eq!(check(d), TrustError::ZeroThreshold { role: "root" });
        let mut d = good.clone();
        d.roles[0].1.threshold = 2;
        assert!(matches!(
            check(d),
            TrustError::ThresholdAboveKeys {
                role: "root",
                threshold: 2,
                keys: 1
            }
        ));
        let mut d = good.clone();
        d.roles[2].1.keys.clear();
        assert_eq!(check(d), TrustError::EmptyRole("commands"));
        let mut d = good.clone();
        d.roles.remove(0);
        assert_eq!(check(d), TrustError::MissingRole("root"));
        let mut d = good.clone();
        d.roles.push(("bundles".into(), role(&[&op], 1)));
        assert_eq!(check(d), TrustError::DuplicateRole("bundles".into()));
        let mut d = good.clone();
        d.roles[1].1.keys.push(op.id());
        assert!(matches!(
            check(d),
            TrustError::DuplicateKeyInRole {
                role: "bundles",
                ..
            }
        ));
        let mut d = good.clone();
        d.keys.push(entry(&other));
        d.roles.push(("cloud".into(), role(&[&op, &other], 2)));
        assert_eq!(check(d), TrustError::CloudThreshold(2));
        // A role this agent does not know grants nothing and refuses nothing.
        let mut d = good.clone();
        d.roles.push(("firmware".into(), role(&[&op], 1)));
        assert!(d.check().is_ok());

        // Bytes: truncated, trailing, oversized.
        let one = v1(&[&r], 1, &op);
        let bytes = sign(&good, &[&r]);
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                matches!(
                    verify_next(&one, &bytes[..cut]),
                    Err(TrustError::Malformed(_))
                ),
                "cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            verify_next(&one, &longer),
            Err(TrustError::Malformed(_))
        ));
        let huge = vec![0u8; MAX_SIGNED + 1];
        assert!(matches!(
            verify_next(&one, &huge),
            Err(TrustError::TooLarge { .. })
        ));
    }

    /// Version 1 from a device's files is the same bytes however the files list their keys, so the operator's tool
    /// derives exactly what the device holds.
    #[test]
    fn version_1_from_files_is_deterministic() {
        use crate::bundle::TrustedKeys;
        let (a, b, c) = (key(), key(), key());
        let lines = |ks: &[&SigningKeyFile]| {
            ks.iter()
                .map(|k| k.trusted_line("x"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let bundles = TrustedKeys::parse(&lines(&[&a, &b])).unwrap();
        let reordered = TrustedKeys::parse(&lines(&[&b, &a, &b])).unwrap();
        let commands = TrustedKeys::parse(&lines(&[&c, &a])).unwrap();
        let one = TrustDocument::from_files(Some(&bundles), 2, Some(&commands), None);
        let two = TrustDocument::from_files(Some(&reordered), 2, Some(&commands), None);
        assert_eq!(one.to_bytes(), two.to_bytes());
        let trust = one.check().unwrap();
        assert_eq!(trust.role(Role::Root).unwrap().1, 2);
        assert!(trust.role(Role::Commands).unwrap().0.knows(&c.id()));
        // Fleet bundles were checked against the command keys: they still verify.
        assert!(trust.role(Role::Bundles).unwrap().0.knows(&c.id()));
        assert!(!trust.role(Role::Root).unwrap().0.knows(&c.id()));
        assert!(trust.role(Role::Cloud).is_none());
    }
}
