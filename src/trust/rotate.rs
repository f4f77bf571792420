//! Building the next version of a trust document from the newest one: the operator's edits (add or remove a key in
//! a role, change a threshold), as a pure function; `outpostctl trust rotate` signs the result.

use ed25519_dalek::VerifyingKey;

use super::document::{Role, RoleKeys, TrustDocument, TrustKey, ED25519};
use super::TrustError;
use crate::bundle::keys::key_id;

/// One change to a role.
#[derive(Debug, Clone)]
pub enum Edit {
    /// Adds `key` to `role` (the role is created at threshold 1 if the document lacks it).
    Add {
        role: Role,
        key: VerifyingKey,
    },
    /// Removes the key with this id from `role`; a key no role names any more leaves the document.
    Remove {
        role: Role,
        id: String,
    },
    Threshold {
        role: Role,
        threshold: u32,
    },
}

impl Edit {
    /// `ROLE=VALUE`, as the command line writes it.
    pub fn split(arg: &str) -> Result<(Role, &str), TrustError> {
        let (role, value) = arg.split_once('=').ok_or_else(|| {
            TrustError::BadEdit(format!(
                "{arg:?}: expected ROLE=VALUE (role: root, bundles, commands, cloud)"
            ))
        })?;
        let role = Role::parse(role).ok_or_else(|| {
            TrustError::BadEdit(format!(
                "{role:?} is not a role (root, bundles, commands or cloud)"
            ))
        })?;
        Ok((role, value))
    }
}

/// Version `current.version + 1` with `edits` applied, issued at `issued_unix`, checked for well-formedness (a
/// threshold above the keys left, an emptied role... are refused here, before anything is signed).
pub fn next_version(
    current: &TrustDocument,
    edits: &[Edit],
    issued_unix: u64,
) -> Result<TrustDocument, TrustError> {
    let mut d = current.clone();
    d.version = current.version + 1;
    d.issued_unix = issued_unix;
    for e in edits {
        match e {
            Edit::Add { role, key } => {
                let id = key_id(key);
                if !d.keys.iter().any(|k| k.id == id) {
                    d.keys.push(TrustKey {
                        id: id.clone(),
                        kind: ED25519.into(),
                        public: key.as_bytes().to_vec(),
                    });
                }
                let r = role_mut(&mut d, *role);
                if !r.keys.contains(&id) {
                    r.keys.push(id);
                }
            }
            Edit::Remove { role, id } => {
                let r = role_mut(&mut d, *role);
                let before = r.keys.len();
                r.keys.retain(|k| k != id);
                if r.keys.len() == before {
                    return Err(TrustError::UnknownKeyInRole {
                        role: role.name(),
                        key: id.clone(),
                    });
                }
            }
            Edit::Threshold { role, threshold } => role_mut(&mut d, *role).threshold = *threshold,
        }
    }
    // Keys no role names any more leave the list: a removed key is gone from the document.
    let used: Vec<String> = d
        .roles
        .iter()
        .flat_map(|(_, r)| r.keys.iter().cloned())
        .collect();
    d.keys.retain(|k| used.contains(&k.id));
    d.clone().check()?;
    Ok(d)
}

fn role_mut(d: &mut TrustDocument, role: Role) -> &mut RoleKeys {
    let i = match d.roles.iter().position(|(n, _)| n == role.name()) {
        Some(i) => i,
        None => {
            d.roles.push((
                role.name().to_string(),
                RoleKeys {
                    keys: Vec::new(),
                    threshold: 1,
                },
            ));
            d.roles.len() - 1
        }
    };
    &mut d.roles[i].1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{SigningKeyFile, TrustedKeys};

    #[test]
    fn edits_make_the_next_version_and_bad_ones_are_refused_before_signing() {
        let (k1, k2, r1, r2) = (
            SigningKeyFile::generate().unwrap(),
            SigningKeyFile::generate().unwrap(),
            SigningKeyFile::generate().unwrap(),
            SigningKeyFile::generate().unwrap(),
        );
        let lines = format!("{}\n{}\n", k1.trusted_line("a"), k2.trusted_line("b"));
        let v1 =
            TrustDocument::from_files(Some(&TrustedKeys::parse(&lines).unwrap()), 1, None, None);
        let pubkey = |k: &SigningKeyFile| {
            VerifyingKey::from_bytes(&hex::decode(k.public_hex()).unwrap().try_into().unwrap())
                .unwrap()
        };
        let v2 = next_version(
            &v1,
            &[
                Edit::Add {
                    role: Role::Root,
                    key: pubkey(&r1),
                },
                Edit::Add {
                    role: Role::Root,
                    key: pubkey(&r2),
                },
                Edit::Remove {
                    role: Role::Root,
                    id: k1.id(),
                },
                Edit::Remove {
                    role: Role::Root,
                    id: k2.id(),
                },
                Edit::Threshold {
                    role: Role::Root,
                    threshold: 2,
                },
                Edit::Remove {
                    role: Role::Bundles,
                    id: k1.id(),
                },
                Edit::Remove {
                    role: Role::Commands,
                    id: k1.id(),
                },
            ],
            7,
        )
        .unwrap();
        assert_eq!((v2.version, v2.issued_unix), (2, 7));
        let t = v2.clone().check().unwrap();
        assert_eq!(t.role(Role::Root).unwrap().1, 2);
        assert!(!t.role(Role::Bundles).unwrap().0.knows(&k1.id()));
        assert!(
            !v2.keys.iter().any(|k| k.id == k1.id()),
            "k1 left the document"
        );
        // A threshold the keys cannot meet, and removing a key the role lacks, are refused.
        let e = next_version(
            &v2,
            &[Edit::Threshold {
                role: Role::Commands,
                threshold: 3,
            }],
            8,
        )
        .unwrap_err();
        assert!(matches!(e, TrustError::ThresholdAboveKeys { .. }), "{e}");
        let e = next_version(
            &v2,
            &[Edit::Remove {
                role: Role::Commands,
                id: k1.id(),
            }],
            8,
        )
        .unwrap_err();
        assert!(matches!(e, TrustError::UnknownKeyInRole { .. }), "{e}");
        assert!(Edit::split("admins=x").is_err());
        assert_eq!(Edit::split("cloud=abc").unwrap(), (Role::Cloud, "abc"));
    }
}
