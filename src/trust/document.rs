//! The trust document and its well-formedness: keys by id, and roles that name them with a threshold.

use std::collections::BTreeMap;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::TrustError;
use crate::bundle::keys::{key_id, KeyId};
use crate::bundle::TrustedKeys;

/// The only key type this agent verifies.
pub const ED25519: &str = "ed25519";

/// A role: what a threshold of its keys may sign. A closed set: a document may name other roles (a newer agent's),
/// which this agent ignores, so that they grant nothing here and an older agent still takes the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Signs the next version of the document.
    Root,
    /// Every bundle, installed by hand or over the fleet link.
    Bundles,
    /// Signed commands.
    Commands,
    /// Cloud workers' answers (one signature each, so its threshold is 1).
    Cloud,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Root, Role::Bundles, Role::Commands, Role::Cloud];

    pub fn name(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Bundles => "bundles",
            Role::Commands => "commands",
            Role::Cloud => "cloud",
        }
    }

    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Roles every document must have. `cloud` may be absent: a fleet without a cloud tier has no worker keys.
    fn required(self) -> bool {
        !matches!(self, Role::Cloud)
    }
}

/// A key the document lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustKey {
    /// The id the code derives from the public key (first 8 bytes of its SHA-256, hex).
    pub id: KeyId,
    /// `ed25519`; any other type is refused.
    pub kind: String,
    #[serde(with = "serde_bytes")]
    pub public: Vec<u8>,
}

/// A role's keys and how many distinct ones must sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleKeys {
    pub keys: Vec<KeyId>,
    pub threshold: u32,
}

/// The signed body (postcard): what a device trusts at `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustDocument {
    pub version: u64,
    /// When the operator signed it (0 for a version 1 derived from a device's files). It raises the device's time
    /// floor like any signed time; documents do not expire (README: an expired root stopped fleets elsewhere).
    pub issued_unix: u64,
    pub keys: Vec<TrustKey>,
    /// Roles by name, in the order written.
    pub roles: Vec<(String, RoleKeys)>,
}

/// A document that passed every well-formedness check: its keys parsed, its roles resolved.
#[derive(Debug, Clone)]
pub struct Trust {
    document: TrustDocument,
    roles: BTreeMap<Role, (TrustedKeys, usize)>,
}

impl TrustDocument {
    /// Checks the document on its own (not its place in the chain): every key well-formed and listed once, every
    /// known role present when required, naming listed keys once each, with a threshold from 1 to its key count.
    pub fn check(self) -> Result<Trust, TrustError> {
        self.check_roles(true)
    }

    /// [`TrustDocument::check`] for a version 1 derived on a device whose files lack some keys (no
    /// `slots.trusted_keys`: no root and no bundles role). Such a trust is never stored: nothing could rotate it,
    /// so it is derived again at each start until the files name a root.
    pub fn check_derived(self) -> Result<Trust, TrustError> {
        self.check_roles(false)
    }

    fn check_roles(self, all_required: bool) -> Result<Trust, TrustError> {
        let mut keys: BTreeMap<&str, VerifyingKey> = BTreeMap::new();
        for k in &self.keys {
            if k.kind != ED25519 {
                return Err(TrustError::UnknownKeyType {
                    id: k.id.clone(),
                    kind: k.kind.clone(),
                });
            }
            let public = <[u8; 32]>::try_from(k.public.as_slice())
                .ok()
                .and_then(|b| VerifyingKey::from_bytes(&b).ok())
                .ok_or_else(|| TrustError::BadKey(k.id.clone()))?;
            let expected = key_id(&public);
            if expected != k.id {
                return Err(TrustError::KeyIdMismatch {
                    id: k.id.clone(),
                    expected,
                });
            }
            if keys.insert(&k.id, public).is_some() {
                return Err(TrustError::DuplicateKey(k.id.clone()));
            }
        }
        let mut roles = BTreeMap::new();
        let mut seen: Vec<&str> = Vec::new();
        for (name, role_keys) in &self.roles {
            if seen.contains(&name.as_str()) {
                return Err(TrustError::DuplicateRole(name.clone()));
            }
            seen.push(name);
            // A role this agent does not know grants nothing here.
            let Some(role) = Role::parse(name) else {
                continue;
            };
            let r = role.name();
            if role_keys.keys.is_empty() {
                return Err(TrustError::EmptyRole(r));
            }
            let mut members = Vec::new();
            for id in &role_keys.keys {
                let key = keys
                    .get(id.as_str())
                    .ok_or_else(|| TrustError::UnknownKeyInRole {
                        role: r,
                        key: id.clone(),
                    })?;
                if members.contains(key) {
                    return Err(TrustError::DuplicateKeyInRole {
                        role: r,
                        key: id.clone(),
                    });
                }
                members.push(*key);
            }
            let threshold = role_keys.threshold;
            if threshold == 0 {
                return Err(TrustError::ZeroThreshold { role: r });
            }
            if threshold as usize > members.len() {
                return Err(TrustError::ThresholdAboveKeys {
                    role: r,
                    threshold,
                    keys: members.len(),
                });
            }
            if role == Role::Cloud && threshold != 1 {
                return Err(TrustError::CloudThreshold(threshold));
            }
            roles.insert(role, (TrustedKeys::from_keys(members), threshold as usize));
        }
        if let Some(missing) = Role::ALL
            .into_iter()
            .find(|r| all_required && r.required() && !roles.contains_key(r))
        {
            return Err(TrustError::MissingRole(missing.name()));
        }
        Ok(Trust {
            document: self,
            roles,
        })
    }

    /// Version 1, derived from a device's key files as they are today, deterministically (keys sorted by id, roles in
    /// a fixed order), so that `outpostctl trust init` builds the same bytes from the same files. Its root is the
    /// bundle keys (`trusted_keys`) at the bundle threshold: nothing could replace a model by hand before without
    /// them, so a root no safer than the files; README tells the operator to move the root to offline keys at the
    /// first rotation.
    pub fn from_files(
        bundles: Option<&TrustedKeys>,
        threshold: usize,
        commands: Option<&TrustedKeys>,
        cloud: Option<&TrustedKeys>,
    ) -> TrustDocument {
        let mut all: BTreeMap<KeyId, VerifyingKey> = BTreeMap::new();
        let mut role = |set: &TrustedKeys, threshold: usize| {
            let mut ids: Vec<KeyId> = Vec::new();
            for (id, key) in set.entries() {
                all.insert(id.clone(), *key);
                if !ids.contains(id) {
                    ids.push(id.clone());
                }
            }
            ids.sort();
            // As the files say, even when it exceeds the keys: such a device could take nothing before either, and
            // its version 1 is refused as such rather than quietly weakened.
            let threshold = threshold.max(1) as u32;
            RoleKeys {
                keys: ids,
                threshold,
            }
        };
        let root_role = bundles.map(|b| role(b, threshold));
        let commands_role = commands.or(bundles).map(|c| role(c, threshold));
        // Bundles arrived two ways: by hand under `trusted_keys` and over the fleet link under `command_keys`, so
        // the bundles role is both (a bundle that verified before still verifies).
        let mut bundles_role = root_role.clone().or(commands_role.clone());
        if let (Some(b), Some(c)) = (bundles_role.as_mut(), &commands_role) {
            for id in &c.keys {
                if !b.keys.contains(id) {
                    b.keys.push(id.clone());
                }
            }
            b.keys.sort();
        }
        let cloud_role = cloud.filter(|c| !c.is_empty()).map(|c| role(c, 1));
        let roles = [
            ("root", root_role),
            ("bundles", bundles_role),
            ("commands", commands_role),
            ("cloud", cloud_role),
        ]
        .into_iter()
        .filter_map(|(n, r)| r.map(|r| (n.to_string(), r)))
        .collect();
        TrustDocument {
            version: 1,
            issued_unix: 0,
            keys: all
                .into_iter()
                .map(|(id, k)| TrustKey {
                    id,
                    kind: ED25519.into(),
                    public: k.as_bytes().to_vec(),
                })
                .collect(),
            roles,
        }
    }

    /// The postcard body that is signed and stored.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a trust document always encodes")
    }
}

impl Trust {
    pub fn document(&self) -> &TrustDocument {
        &self.document
    }

    pub fn version(&self) -> u64 {
        self.document.version
    }

    /// A role's keys and threshold; `None` for a role the document does not have (only `cloud` may be absent).
    pub fn role(&self, role: Role) -> Option<(&TrustedKeys, usize)> {
        self.roles.get(&role).map(|(k, t)| (k, *t))
    }

    /// The distinct keys of `role` whose signature over `msg` verifies (each key counted once, however many
    /// signatures carry its id).
    pub fn signers(
        &self,
        role: Role,
        msg: &[u8],
        sigs: &[crate::bundle::BundleSignature],
    ) -> Vec<KeyId> {
        let Some((keys, _)) = self.role(role) else {
            return Vec::new();
        };
        let mut signers: Vec<KeyId> = Vec::new();
        for s in sigs {
            if !signers.contains(&s.key_id) && keys.verify(&s.key_id, msg, &s.signature) {
                signers.push(s.key_id.clone());
            }
        }
        signers
    }

    /// The root key ids (for the status: a single online root key is flagged).
    pub fn root_ids(&self) -> Vec<KeyId> {
        self.role(Role::Root)
            .map(|(k, _)| k.entries().iter().map(|(id, _)| id.clone()).collect())
            .unwrap_or_default()
    }
}
