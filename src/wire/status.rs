//! What a device tells its operator: the retained status and the acknowledgement of each command (JSON).
//!
//! The field names are the wire format that `docs/topics.md` documents and that deployed agents and operator tools
//! already speak: renaming one breaks a mixed fleet, so every rename here must keep the old name readable
//! (`#[serde(alias)]`). Fields that feed a decision (the rollout gates' shadow counts, the live version, the trial)
//! are required: a status without them does not decode, so a gate can never read a silent zero.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::config::HardnessScore;
use crate::slots::{SlotId, SlotInfo};

/// A model release as the device reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub version: u64,
    /// Hex SHA-256 of the model file.
    pub digest: String,
}

/// Where the serving model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Serving {
    /// The model built into the binary.
    Builtin,
    /// The model file the configuration names.
    File,
    /// The configured or built-in model, because the slot the record names could not be loaded.
    Fallback,
    /// Slot A or B of the record.
    A,
    B,
}

impl Serving {
    pub fn slot(id: SlotId) -> Serving {
        match id {
            SlotId::A => Serving::A,
            SlotId::B => Serving::B,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Serving::Builtin => "builtin",
            Serving::File => "file",
            Serving::Fallback => "fallback",
            Serving::A => "a",
            Serving::B => "b",
        }
    }
}

/// Who answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The local model ran.
    Edge,
    /// The cloud tier answered a hard case.
    Cloud,
    /// The edge model's answer, from the result cache.
    Cache,
    /// The cloud's answer, from the result cache.
    CloudCache,
}

impl Source {
    pub fn from_cache(self) -> bool {
        matches!(self, Source::Cache | Source::CloudCache)
    }
}

/// What became of a hard case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarded {
    /// The cloud answered in time.
    Answered,
    /// It will, from the outbox.
    Queued,
    /// The case could not be queued; the edge answered.
    Failed,
    /// The disk is full: the case was not queued (the outbox keeps what it holds); the edge answered.
    #[serde(rename = "disk-full")]
    DiskFull,
}

/// The arm of an A/B split that answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArmName {
    Active,
    Candidate,
}

impl ArmName {
    pub fn name(self) -> &'static str {
        match self {
            ArmName::Active => "active",
            ArmName::Candidate => "candidate",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransitionKind {
    /// The model on trial was kept.
    Commit,
    /// Back to the model that served before.
    Rollback,
    /// A new model went live on trial.
    Trial,
}

impl TransitionKind {
    pub fn name(self) -> &'static str {
        match self {
            TransitionKind::Commit => "commit",
            TransitionKind::Rollback => "rollback",
            TransitionKind::Trial => "trial",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// Probation judged the trial.
    Probation,
    /// An operator (on the device or through the fleet) changed the record.
    Operator,
    /// An install put a model on trial.
    Install,
    /// The model on trial crashed the agent too often.
    BootCount,
}

impl Cause {
    pub fn name(self) -> &'static str {
        match self {
            Cause::Probation => "probation",
            Cause::Operator => "operator",
            Cause::Install => "install",
            Cause::BootCount => "boot_count",
        }
    }
}

/// A change of the serving model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub transition: TransitionKind,
    pub cause: Cause,
    pub detail: String,
    /// The version the transition is about: the one committed, put on trial or rolled back from.
    pub version: u64,
    pub unix: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub requests: u64,
    pub ok: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub bad_input: u64,
    pub busy: u64,
    pub errors: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: Option<u64>,
    pub p99: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: Option<u64>,
    pub p99: Option<u64>,
    pub n: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheStatus {
    pub entries: u64,
    pub bytes: u64,
    pub evictions: u64,
}

/// The agent's stores in the state dir, each apart so that one failing leaves the others (README, State dir).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreName {
    /// The result cache (`<state>/cache`): disposable, skipped while it cannot be written.
    Cache,
    /// The hard cases waiting for the cloud (`<state>/outbox`).
    Outbox,
    /// The small records promises rest on (`<state>/records`): sequence floors, a download's progress, settings.
    Records,
    /// Bundles being fetched (`<state>/incoming`).
    Downloads,
}

impl StoreName {
    pub fn name(self) -> &'static str {
        match self {
            StoreName::Cache => "cache",
            StoreName::Outbox => "outbox",
            StoreName::Records => "records",
            StoreName::Downloads => "downloads",
        }
    }

    /// What the store holds, for a sentence.
    pub fn what(self) -> &'static str {
        match self {
            StoreName::Cache => "result cache",
            StoreName::Outbox => "outbox of hard cases",
            StoreName::Records => "device records",
            StoreName::Downloads => "bundle downloads",
        }
    }

    /// What the agent does while the store cannot be written.
    pub fn meanwhile(self) -> &'static str {
        match self {
            StoreName::Cache => "requests are answered without it until it can be written again",
            StoreName::Outbox => {
                "new hard cases are answered on the device and not queued; the queued ones are kept"
            }
            StoreName::Records => "commands that must be recorded first are refused, not run",
            StoreName::Downloads => "offers are refused before their first chunk",
        }
    }
}

/// How a store fares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreState {
    Ok,
    /// Its writes fail (or are not tried) because the filesystem is full.
    DiskFull,
    /// Its writes fail for another reason (the error says which).
    Failed,
    /// Not in use (`cache.enabled = false`, forwarding off).
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreHealth {
    pub state: StoreState,
    pub dir: String,
    /// Writes failed or skipped since start.
    pub failures: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The device's link to its broker, as the agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    /// Connected to the broker now.
    pub connected: bool,
    /// Connected, and every subscription of this connection acknowledged: a command, a chunk or a cloud answer sent
    /// to this device now reaches it (what a test or a tool waits for after starting an agent).
    pub subscribed: bool,
    /// Connections made since start.
    pub connects: u64,
}

/// The state dir's storage: free space, the reserve and each store (README, "A full disk").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageStatus {
    pub dir: String,
    /// Bytes free to the agent on the state dir's filesystem (absent when statvfs fails).
    pub free_bytes: Option<u64>,
    /// `storage.reserve_bytes`: the file kept so that records can be written on a disk others filled.
    pub reserve_bytes: u64,
    /// The reserve file is in place (false once released for the records, until there is room again).
    pub reserve_held: bool,
    pub stores: BTreeMap<StoreName, StoreHealth>,
}

/// The trial in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialSummary {
    pub version: u64,
    pub digest: String,
    pub requests: u64,
    pub errors: u64,
    pub elapsed_s: u64,
    pub baseline_runs: u64,
    pub p99_us: Option<u64>,
    pub baseline_p99_us: Option<u64>,
    pub mean_confidence: f64,
    pub baseline_mean_confidence: f64,
    pub requests_to_commit: u64,
    pub seconds_to_commit: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfidenceQuantiles {
    pub p10: Option<f32>,
    pub p50: Option<f32>,
    pub p90: Option<f32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowCloud {
    pub cases: u64,
    pub active_agreed: u64,
    pub candidate_agreed: u64,
}

/// The candidate's figures in shadow, against the live model. The rollout gates read `runs`, `agreements` and the
/// mean confidences: they are required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowSummary {
    /// The candidate these figures are about.
    pub model: ModelInfo,
    pub runs: u64,
    pub agreements: u64,
    pub agreement: Option<f64>,
    pub failures: u64,
    pub dropped: u64,
    pub active_mean_confidence: Option<f64>,
    pub candidate_mean_confidence: Option<f64>,
    pub candidate_confidence: ConfidenceQuantiles,
    pub confidence_ks: f64,
    pub candidate_run_us: Percentiles,
    pub active_run_us: Percentiles,
    pub cloud: ShadowCloud,
    /// The shadow fraction in force.
    pub fraction: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArmSummary {
    pub requests: u64,
    pub mean_confidence: Option<f64>,
    pub run_us: Percentiles,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbSummary {
    pub split: f64,
    pub active: ArmSummary,
    pub candidate: ArmSummary,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutboxStatus {
    pub pending: u64,
    pub bytes: u64,
    pub dropped: u64,
    /// New cases refused since start because the disk was full (the queued ones are kept).
    #[serde(default)]
    pub refused_disk_full: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardStatus {
    pub score: HardnessScore,
    pub threshold: f32,
    pub deadline_ms: u64,
    pub outbox: OutboxStatus,
    /// Cloud answers by outcome (`accepted`, `forged`, ...).
    pub answers: BTreeMap<String, u64>,
    /// The model's forward budget, when one is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetStatus>,
}

/// The forward budget of one model and how it is spent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetStatus {
    pub max_fraction: Option<f32>,
    pub max_per_s: Option<f32>,
    pub window_s: u64,
    /// Model runs and forwarded cases in the window now.
    pub window_runs: u64,
    pub window_forwarded: u64,
    /// Hard cases forwarded and skipped (answered by the edge over the budget), since start.
    pub forwarded: u64,
    pub skipped: u64,
    /// The hardness bar the last hard case was held to (the configured one, or the budget's quantile above it).
    pub bar: Option<f32>,
}

/// The retained message on `outpost/v1/device/<id>/alarm`: the models whose drift alarm is raised now (empty when
/// none is), published when that set changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    pub device: String,
    pub unix: u64,
    pub drift: BTreeMap<String, DriftStatus>,
}

impl Alarm {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Alarm, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// The drift alarm of one model: live hardness against its release's baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftStatus {
    /// Raised: live traffic has parted from the baseline.
    pub drift: bool,
    /// The last comparison: KS distance and its critical value, the forward rate the policy wants.
    pub ks: Option<f64>,
    pub critical: Option<f64>,
    pub forward_rate: Option<f64>,
    pub baseline_forward_rate: f64,
    pub runs: u64,
    pub raised_total: u64,
    pub cleared_total: u64,
}

/// A chunked download, in progress or finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferSummary {
    pub bundle: String,
    pub name: String,
    pub version: u64,
    pub candidate: bool,
    pub size: u64,
    pub chunks_total: u64,
    pub chunks_done: u64,
    pub chunks_synced: u64,
    pub resumed_from: u64,
    pub fetched: u64,
    pub duplicates: u64,
    pub retries: u64,
    pub rejected: u64,
    pub elapsed_ms: u64,
}

/// What the request service reports (`GET /v1/status`); the fleet link adds the device's part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub agent_version: String,
    pub model: ModelInfo,
    pub slot: Serving,
    pub uptime_s: u64,
    pub workers: u64,
    pub queue_depth: u64,
    pub counters: Counts,
    pub cache: Option<CacheStatus>,
    pub trial: Option<TrialSummary>,
    pub last_transition: Option<Transition>,
    pub transitions: Vec<Transition>,
    pub last_transfer: Option<TransferSummary>,
    pub download: Option<TransferSummary>,
    pub settings: BTreeMap<String, String>,
    pub latency_us: Latency,
    pub cache_hit_rate: f64,
    pub forward: Option<ForwardStatus>,
    pub candidate: Option<ModelInfo>,
    pub shadow: Option<ShadowSummary>,
    pub ab: Option<AbSummary>,
    /// The drift alarm, when the release carries a baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftStatus>,
    /// How `engine.int8 = auto` settled the live real-int8 model on this device: the form kept and both timings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8: Option<crate::inference::Int8Choice>,
}

/// How the device's clock compares with its time floor (the latest time it knows has passed; `src/clock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClockHealth {
    Ok,
    /// The clock reads earlier than a signed time the device has already seen: no RTC before time sync, or a clock
    /// that stepped back. Expiries are judged at the floor.
    BehindFloor,
    /// The clock reads more than a year past everything signed the device has seen: expiries that only it sees are
    /// blamed on it.
    FarAhead,
}

impl ClockHealth {
    pub fn name(self) -> &'static str {
        match self {
            ClockHealth::Ok => "ok",
            ClockHealth::BehindFloor => "behind-floor",
            ClockHealth::FarAhead => "far-ahead",
        }
    }
}

/// The device's clock, its time floor and what the one says of the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockStatus {
    /// The system clock (Unix seconds).
    pub system_unix: u64,
    /// The time floor: the agent's build time, raised by the issue times of the verified messages.
    pub floor_unix: u64,
    pub build_unix: u64,
    pub health: ClockHealth,
    /// Why the floor's file could not be read or written (the floor still holds in memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor_error: Option<String>,
    #[serde(default)]
    pub floor_write_failures: u64,
}

/// Why a device's root deserves the operator's attention (README, Keys and rotation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrustWarning {
    /// One key can sign the next trust document: a single leak or loss decides the device's trust.
    SingleRootKey,
    /// A root key also signs bundles, commands or answers, so it lives on a machine that is online day to day.
    OnlineRootKey,
}

/// A trust reset from the device's console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustReset {
    pub unix: u64,
    pub from_version: Option<u64>,
    pub to_version: u64,
}

/// The keys a device trusts (`src/trust`): its trust document's version and root. Absent from agents before trust
/// documents, which the fleet view shows as "no trust support".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustStatus {
    /// None when the device has no usable trust (`error` says why); it refuses every signed thing meanwhile.
    pub version: Option<u64>,
    pub root_keys: Vec<String>,
    pub root_threshold: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<TrustWarning>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<TrustReset>,
    /// Models whose live release is no longer signed by a threshold of the bundles role (its signers were removed):
    /// it keeps serving, but cannot be rolled back or activated to once replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsigned_live: Vec<String>,
}

/// What `GET /v1/status` shows: the default model's status at the top, as a single-model agent showed it, and every
/// other model's by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalStatus {
    /// The model `/v1/infer` serves.
    pub default_model: String,
    /// The device as a whole: its clock, trust, storage and link.
    #[serde(flatten)]
    pub host: HostStatus,
    #[serde(flatten)]
    pub service: ServiceStatus,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, ServiceStatus>,
}

/// What a status says about the device as a whole, whichever model: its clock, trust, storage and broker link. One
/// struct, flattened into both the local status (`GET /v1/status`) and the retained one, so that the two say it with
/// the same names and a change to one is a change to both.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HostStatus {
    /// The device's clock and time floor (absent from agents before the floor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<ClockStatus>,
    /// What the device trusts (absent from agents before trust documents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<TrustStatus>,
    /// The state dir's storage (absent from agents before the stores were split).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageStatus>,
    /// The link to the broker (absent without one, and from agents before it was reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkStatus>,
}

/// An online device's retained status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnlineStatus {
    pub device: String,
    pub group: Option<String>,
    pub link_uptime_s: u64,
    /// Requests per second since the last status.
    pub request_rate: f64,
    /// The model the top-level fields are about (absent from agents before the model repository, which had one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_model: Option<String>,
    /// The device as a whole: its clock, trust, storage and link.
    #[serde(flatten)]
    pub host: HostStatus,
    /// The default model's status, where a single-model agent put its own.
    #[serde(flatten)]
    pub service: ServiceStatus,
    /// Every other model the device serves, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, ServiceStatus>,
}

/// The retained message on `outpost/v1/device/<id>/status`; the broker publishes `Offline` as the device's last
/// will.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum DeviceStatus {
    Online(Box<OnlineStatus>),
    Offline { device: String },
}

impl DeviceStatus {
    pub fn device(&self) -> &str {
        match self {
            DeviceStatus::Online(s) => &s.device,
            DeviceStatus::Offline { device } => device,
        }
    }

    pub fn online(&self) -> Option<&OnlineStatus> {
        match self {
            DeviceStatus::Online(s) => Some(s),
            DeviceStatus::Offline { .. } => None,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<DeviceStatus, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// The command an acknowledgement answers (`refused` when it never ran).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommandName {
    Status,
    Rollback,
    Promote,
    Set,
    PurgeCache,
    Update,
    Candidate,
    Activate,
    Abandon,
    Remove,
    Refused,
}

impl CommandName {
    pub fn name(self) -> &'static str {
        match self {
            CommandName::Status => "status",
            CommandName::Rollback => "rollback",
            CommandName::Promote => "promote",
            CommandName::Set => "set",
            CommandName::PurgeCache => "purge-cache",
            CommandName::Update => "update",
            CommandName::Candidate => "candidate",
            CommandName::Activate => "activate",
            CommandName::Abandon => "abandon",
            CommandName::Remove => "remove",
            CommandName::Refused => "refused",
        }
    }
}

/// Where an offered version already is, when the device had it before the offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Already {
    Live,
    Staged,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setting {
    pub key: String,
    pub value: String,
}

/// Where the operator tool learnt an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeenIn {
    Status,
}

/// What a command did. Each command fills the fields that concern it; the rest are absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The offered version was already live or staged: nothing was fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub already: Option<Already>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// `"already in progress"`: the same offer's download runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub now_active: Option<Option<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed: Option<Option<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purged: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed: Option<SlotInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<Serving>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abandoned: Option<u64>,
    /// The model a `remove` took off the device (its version floor is `version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<bool>,
    /// Set by the operator tool when it learnt the outcome from the device's status, not from an acknowledgement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_in: Option<SeenIn>,
    /// What a `set` command set. (Agents before the typed messages put the key and value at the top of the
    /// result, which decodes to an outcome without this field.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<Setting>,
}

/// A command's result: the status (for `status`) or what the command did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AckResult {
    Status(Box<OnlineStatus>),
    Done(Box<Outcome>),
}

impl AckResult {
    pub fn done(o: Outcome) -> AckResult {
        AckResult::Done(Box::new(o))
    }

    pub fn outcome(&self) -> Option<&Outcome> {
        match self {
            AckResult::Done(o) => Some(o),
            AckResult::Status(_) => None,
        }
    }
}

/// The kind of a refusal that an operator acts on fleet-wide (the sentence in `error` says the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refusal {
    /// Signed by a key the device's trust does not list for that role: removed by a rotation, or never trusted.
    KeyNotTrusted,
    /// The device has no usable trust (its stored trust is missing or corrupt).
    NoTrust,
}

/// The acknowledgement of one command, on `outpost/v1/device/<id>/ack`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub device: String,
    /// None when a refused command's sequence number could not be read.
    pub seq: Option<u64>,
    pub command: CommandName,
    pub ok: bool,
    pub unix: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<AckResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The kind of refusal, where it is one an operator acts on by kind (absent from older agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Refusal>,
}

impl Ack {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Ack, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    pub fn outcome(&self) -> Option<&Outcome> {
        self.result.as_ref().and_then(AckResult::outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_status() -> OnlineStatus {
        let model = ModelInfo {
            name: "m".into(),
            version: 3,
            digest: "ab".into(),
        };
        let p = Percentiles {
            p50: Some(10),
            p99: Some(20),
        };
        let transfer = TransferSummary {
            bundle: "cd".into(),
            name: "m".into(),
            version: 3,
            candidate: true,
            size: 4096,
            chunks_total: 4,
            chunks_done: 2,
            chunks_synced: 2,
            resumed_from: 0,
            fetched: 2,
            duplicates: 0,
            retries: 1,
            rejected: 0,
            elapsed_ms: 5,
        };
        let transition = Transition {
            transition: TransitionKind::Rollback,
            cause: Cause::Probation,
            detail: "confidence drifted".into(),
            version: 3,
            unix: 1_700_000_000,
        };
        OnlineStatus {
            device: "d1".into(),
            group: Some("g".into()),
            link_uptime_s: 7,
            request_rate: 0.0,
            default_model: Some("m".into()),
            host: HostStatus {
                clock: Some(ClockStatus {
                    system_unix: 2_208_988_800,
                    floor_unix: 1_796_601_600,
                    build_unix: 1_796_601_600,
                    health: ClockHealth::FarAhead,
                    floor_error: None,
                    floor_write_failures: 0,
                }),
                trust: Some(TrustStatus {
                    version: Some(2),
                    root_keys: vec!["00112233aabbccdd".into()],
                    root_threshold: 1,
                    warnings: vec![TrustWarning::SingleRootKey],
                    error: None,
                    reset: None,
                    unsigned_live: vec!["m".into()],
                }),
                link: Some(LinkStatus {
                    connected: true,
                    subscribed: true,
                    connects: 2,
                }),
                storage: Some(StorageStatus {
                    dir: "/var/lib/outpost".into(),
                    free_bytes: Some(0),
                    reserve_bytes: 4 << 20,
                    reserve_held: false,
                    stores: [(
                        StoreName::Cache,
                        StoreHealth {
                            state: StoreState::DiskFull,
                            dir: "/var/lib/outpost/cache".into(),
                            failures: 3,
                            error: Some("No space left on device (os error 28)".into()),
                        },
                    )]
                    .into(),
                }),
            },
            models: BTreeMap::new(),
            service: ServiceStatus {
                agent_version: "0.1.0".into(),
                model: model.clone(),
                slot: Serving::B,
                uptime_s: 9,
                workers: 2,
                queue_depth: 0,
                counters: Counts::default(),
                cache: Some(CacheStatus {
                    entries: 1,
                    bytes: 2,
                    evictions: 0,
                }),
                trial: Some(TrialSummary {
                    version: 3,
                    digest: "ab".into(),
                    requests: 5,
                    errors: 0,
                    elapsed_s: 1,
                    baseline_runs: 40,
                    p99_us: None,
                    baseline_p99_us: Some(100),
                    mean_confidence: 0.0,
                    baseline_mean_confidence: 0.95,
                    requests_to_commit: 40,
                    seconds_to_commit: 600,
                }),
                last_transition: Some(transition.clone()),
                transitions: vec![transition],
                last_transfer: Some(transfer.clone()),
                download: Some(transfer),
                settings: [("shadow.fraction".to_string(), "0.5".to_string())].into(),
                latency_us: Latency {
                    p50: Some(1),
                    p99: Some(2),
                    n: 3,
                },
                cache_hit_rate: 0.5,
                forward: Some(ForwardStatus {
                    score: HardnessScore::Margin,
                    threshold: 0.25,
                    deadline_ms: 300,
                    outbox: OutboxStatus::default(),
                    answers: [("accepted".to_string(), 4)].into(),
                    budget: Some(BudgetStatus {
                        max_fraction: Some(0.1),
                        max_per_s: None,
                        window_s: 60,
                        window_runs: 100,
                        window_forwarded: 10,
                        forwarded: 12,
                        skipped: 40,
                        bar: Some(0.4),
                    }),
                }),
                candidate: Some(model.clone()),
                shadow: Some(ShadowSummary {
                    model,
                    runs: 30,
                    agreements: 29,
                    agreement: Some(0.9667),
                    failures: 0,
                    dropped: 1,
                    active_mean_confidence: Some(0.9),
                    candidate_mean_confidence: Some(0.85),
                    candidate_confidence: ConfidenceQuantiles::default(),
                    confidence_ks: 0.0,
                    candidate_run_us: p.clone(),
                    active_run_us: p.clone(),
                    cloud: ShadowCloud::default(),
                    fraction: 1.0,
                }),
                ab: Some(AbSummary {
                    split: 0.5,
                    active: ArmSummary::default(),
                    candidate: ArmSummary {
                        requests: 3,
                        mean_confidence: Some(0.5),
                        run_us: p,
                    },
                }),
                drift: Some(DriftStatus {
                    drift: true,
                    ks: Some(0.4),
                    critical: Some(0.2),
                    forward_rate: Some(0.6),
                    baseline_forward_rate: 0.07,
                    runs: 500,
                    raised_total: 1,
                    cleared_total: 0,
                }),
                int8: Some(crate::inference::Int8Choice {
                    chosen: crate::inference::Int8Form::Float,
                    native_us: Some(368_000.0),
                    float_us: Some(34_000.0),
                    remembered: true,
                }),
            },
        }
    }

    #[test]
    fn a_full_status_and_acks_round_trip_through_json() {
        let mut two = full_status();
        two.models.insert("other".into(), full_status().service);
        let s = DeviceStatus::Online(Box::new(two));
        let back = DeviceStatus::from_json(s.to_json().as_bytes());
        assert_eq!(back.as_ref().ok(), Some(&s), "{:?}\n{}", back, s.to_json());
        let ack = Ack {
            device: "d1".into(),
            seq: Some(5),
            command: CommandName::Status,
            ok: true,
            unix: 1,
            result: Some(AckResult::Status(Box::new(full_status()))),
            error: None,
            refusal: None,
        };
        assert_eq!(Ack::from_json(ack.to_json().as_bytes()).unwrap(), ack);
        let set = Ack {
            command: CommandName::Set,
            result: Some(AckResult::done(Outcome {
                set: Some(Setting {
                    key: "k".into(),
                    value: "v".into(),
                }),
                ..Outcome::default()
            })),
            ..ack
        };
        assert_eq!(Ack::from_json(set.to_json().as_bytes()).unwrap(), set);
    }

    #[test]
    fn offline_status_round_trips_and_a_status_without_gate_fields_is_refused() {
        let off = DeviceStatus::Offline {
            device: "d1".into(),
        };
        let text = off.to_json();
        assert_eq!(text, r#"{"state":"offline","device":"d1"}"#);
        assert_eq!(DeviceStatus::from_json(text.as_bytes()).unwrap(), off);
        let shadow = r#"{"model":{"name":"m","version":2,"digest":"ab"},"runs":30}"#;
        let err = serde_json::from_str::<ShadowSummary>(shadow).unwrap_err();
        assert!(err.to_string().contains("agreements"), "{err}");
    }
}
