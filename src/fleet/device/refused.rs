//! Why the device refuses a command or an update: one enum for every path of the link (verification, the replay
//! guard, slot changes, settings, offers, downloads, installs).
//!
//! Each variant is the sentence the operator reads in the acknowledgement (`Ack.error`); [`Refused::kind`] is the
//! closed set of refusals ([`Refusal`]) that fleet tooling acts on without reading sentences. Keeping the cause typed
//! up to the acknowledgement is what lets the kind be derived from the cause instead of being passed beside a string.

use std::path::PathBuf;

use super::floors::FloorError;
use super::RecordError;
use crate::blocking::Panicked;
use crate::bundle::BundleError;
use crate::repo::RepoError;
use crate::serve::settings::SettingError;
use crate::slots::install::InstallError;
use crate::slots::SlotError;
use crate::store::space::RoomError;
use crate::store::StoreError;
use crate::trust::TrustError;
use crate::wire::command::CommandError;
use crate::wire::status::Refusal;

#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    /// The command did not verify (signatures, expiry, addressee, its offer's claims).
    #[error(transparent)]
    Command(#[from] CommandError),
    /// Its sequence number is a replay, or could not be made durable.
    #[error(transparent)]
    Floor(#[from] FloorError),
    /// A record the action depends on cannot be read or written.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The model it names: unknown, one too many, or too large for the engines' memory cap.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The device's trust has no usable keys for the role the action needs.
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    Setting(#[from] SettingError),
    /// The slot record refused the transition (nothing to roll back to, a version not held, a failed write).
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// The bundle itself: signatures, expiry, digests, format.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The install of a verified bundle (no variant passed its gate, a failed write).
    #[error(transparent)]
    Install(InstallError),
    /// The result cache could not be purged.
    #[error(transparent)]
    Cache(#[from] StoreError),
    #[error("the command names model {named:?} but its bundle is a release of {bundle:?}")]
    ModelMismatch { named: String, bundle: String },
    #[error(
        "{model} is the default model: it cannot be removed (set repository.default to another)"
    )]
    DefaultModel { model: String },
    #[error("version {offered} is not newer than version {highest}, the highest ever accepted")]
    NotNewer { offered: u64, highest: u64 },
    #[error("refused before download: the bundle needs {size} bytes twice (download and staged variants): {source}")]
    NoRoom { size: u64, source: RoomError },
    #[error("{waiting} offers already wait for the running download; try again when it ends")]
    QueueFull { waiting: usize },
    #[error("the offer announced {name} version {version} but the bundle holds {held_name} version {held_version}")]
    NotTheOffer {
        name: String,
        version: u64,
        held_name: String,
        held_version: u64,
    },
    #[error("cannot read the downloaded bundle {}: {source}", path.display())]
    Downloaded {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The signed header, read from the first chunks, was refused: the rest is never fetched.
    #[error("refused before download: {0}")]
    Header(Box<Refused>),
    #[error(transparent)]
    Panicked(#[from] Panicked),
}

/// An install's bundle errors are the bundle's (so a key no longer trusted keeps its kind); the rest are the install's.
impl From<InstallError> for Refused {
    fn from(e: InstallError) -> Refused {
        match e {
            InstallError::Bundle(b) => Refused::Bundle(b),
            e => Refused::Install(e),
        }
    }
}

impl Refused {
    /// The kind of refusal that operators act on fleet-wide, when it is one of those.
    pub fn kind(&self) -> Option<Refusal> {
        match self {
            Refused::Command(CommandError::KeyNotTrusted { .. })
            | Refused::Bundle(BundleError::KeyNotTrusted { .. }) => Some(Refusal::KeyNotTrusted),
            Refused::Command(CommandError::NoTrust(_)) | Refused::Trust(_) => {
                Some(Refusal::NoTrust)
            }
            Refused::Header(inner) => inner.kind(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kind follows the cause through the header wrapper, and a refusal that is not one of the kinds has none.
    #[test]
    fn the_kind_is_derived_from_the_cause() {
        let untrusted = Refused::Command(CommandError::KeyNotTrusted {
            keys: vec!["k".into()],
            valid: 0,
            needed: 1,
        });
        assert_eq!(untrusted.kind(), Some(Refusal::KeyNotTrusted));
        let wrapped = Refused::Header(Box::new(Refused::Command(CommandError::NoTrust(
            "no trust".into(),
        ))));
        assert_eq!(wrapped.kind(), Some(Refusal::NoTrust));
        assert!(wrapped.to_string().starts_with("refused before download: "));
        let older = Refused::NotNewer {
            offered: 2,
            highest: 3,
        };
        assert_eq!(older.kind(), None);
        assert!(older.to_string().contains("not newer than version 3"));
    }
}
