//! The fleet link: commands, updates and telemetry through the operator's MQTT broker.
//!
//! The broker is the only server: devices, bundle servers (`outpostctl serve`) and operators are all clients of
//! it. Topic scheme (version 1, see `docs/topics.md`), with `<id>` a device id and `<g>` a group:
//!
//! | topic | who publishes | payload |
//! |---|---|---|
//! | `outpost/v1/device/<id>/cmd`, `outpost/v1/group/<g>/cmd` | operator | postcard [`command::SignedCommand`] |
//! | `outpost/v1/device/<id>/ack` | device | JSON acknowledgement of each command, accepted or refused |
//! | `outpost/v1/device/<id>/status` | device (retained; last will `offline`) | JSON status |
//! | `outpost/v1/bundles/<sha256>/get/<id>` | device | postcard [`transfer::ChunkRequest`] |
//! | `outpost/v1/device/<id>/chunk` | bundle server | postcard [`transfer::Chunk`] |
//! | `outpost/v1/cloud/infer` | device | postcard [`crate::forward::Case`], MQTT 5 request |
//! | `outpost/v1/device/<id>/cloud` | cloud worker | postcard [`crate::forward::Answer`], correlation data = case id |

pub mod cloud;
pub mod device;
pub mod mqtt;
pub mod operator;
pub mod rollout;
pub mod serve;
pub mod transfer;
pub mod trust;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("broker URL {0}: {1}")]
    BrokerUrl(String, String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot reach the broker: {0} (is it running, and are fleet.broker and the TLS files right?)")]
    Connect(String),
    #[error("MQTT client: {0}")]
    Client(String),
    #[error("bundle {0}")]
    Bundle(String),
    #[error("I/O error on {path}: {message}")]
    Io { path: String, message: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Keys(String),
    #[error(transparent)]
    Panicked(#[from] crate::blocking::Panicked),
}

impl From<rumqttc::v5::ClientError> for FleetError {
    fn from(e: rumqttc::v5::ClientError) -> Self {
        FleetError::Client(e.to_string())
    }
}

/// Topic names, in one place.
pub mod topics {
    pub const PREFIX: &str = "outpost/v1";

    pub fn device_cmd(device: &str) -> String {
        format!("{PREFIX}/device/{device}/cmd")
    }
    pub fn group_cmd(group: &str) -> String {
        format!("{PREFIX}/group/{group}/cmd")
    }
    pub fn ack(device: &str) -> String {
        format!("{PREFIX}/device/{device}/ack")
    }
    pub fn status(device: &str) -> String {
        format!("{PREFIX}/device/{device}/status")
    }
    /// Retained: the device's raised alarms ([`crate::wire::status::Alarm`]).
    pub fn alarm(device: &str) -> String {
        format!("{PREFIX}/device/{device}/alarm")
    }
    pub const ALL_ALARMS: &str = "outpost/v1/device/+/alarm";
    pub fn chunk(device: &str) -> String {
        format!("{PREFIX}/device/{device}/chunk")
    }
    /// Chunk requests name the requesting device, so the broker's ACL lets a device ask only for its own chunks.
    pub fn bundle_get(bundle_hex: &str, device: &str) -> String {
        format!("{PREFIX}/bundles/{bundle_hex}/get/{device}")
    }
    /// Bundle servers share the requests for a bundle: each request goes to one of them.
    pub fn bundle_get_shared(bundle_hex: &str) -> String {
        format!("$share/outpost-serve/{PREFIX}/bundles/{bundle_hex}/get/+")
    }
    /// The device a chunk request topic names.
    pub fn bundle_get_device(topic: &str) -> Option<&str> {
        let rest = topic.strip_prefix("outpost/v1/bundles/")?;
        let (_, device) = rest.split_once("/get/")?;
        (!device.is_empty() && !device.contains('/')).then_some(device)
    }
    /// Hard cases for the cloud tier (MQTT 5 requests with a response topic and correlation data), one topic per
    /// device so the broker's ACL lets a device send cases only under its own name.
    pub fn cloud_request(device: &str) -> String {
        format!("{PREFIX}/cloud/infer/{device}")
    }
    /// Cloud workers share the requests: each reaches one of them.
    pub const CLOUD_SHARED: &str = "$share/outpost-cloud/outpost/v1/cloud/infer/+";
    /// The device a cloud request topic names.
    pub fn cloud_request_device(topic: &str) -> Option<&str> {
        topic
            .strip_prefix("outpost/v1/cloud/infer/")
            .filter(|d| !d.is_empty() && !d.contains('/'))
    }
    pub fn cloud_reply(device: &str) -> String {
        format!("{PREFIX}/device/{device}/cloud")
    }
    /// Retained summary of a rollout, for `outpostctl watch`.
    pub fn rollout_status(name: &str) -> String {
        format!("{PREFIX}/rollout/{name}/status")
    }
    pub const ALL_ROLLOUTS: &str = "outpost/v1/rollout/+/status";
    pub const ALL_STATUS: &str = "outpost/v1/device/+/status";
    /// Retained: version `version` of the signed trust document ([`crate::trust`]), one topic per version, so a
    /// device that is behind fetches exactly the versions it lacks.
    pub fn trust(version: u64) -> String {
        format!("{PREFIX}/trust/{version}")
    }
    pub const ALL_TRUST: &str = "outpost/v1/trust/+";
    /// The version a trust topic names.
    pub fn trust_version(topic: &str) -> Option<u64> {
        topic.strip_prefix("outpost/v1/trust/")?.parse().ok()
    }
    /// The MQTT 5 user property on a command naming the trust version it was signed under: a device that does not
    /// have that version yet fetches the chain before judging the command (the signed body is unchanged, so older
    /// agents take the command as before).
    pub const TRUST_PROPERTY: &str = "outpost-trust-version";
    pub const ALL_ACKS: &str = "outpost/v1/device/+/ack";
}
