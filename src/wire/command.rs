//! Signed fleet commands: the envelope, its bounded decoding, and the checks every command passes before it runs.
//!
//! A command is a postcard [`CommandBody`] (target, sequence number, expiry, action) signed with the same operator
//! keys as bundles, under its own domain tag, so a bundle signature can never be replayed as a command or back. An
//! update offer is a command too: its chunk digests are covered by the signature, so every chunk can be checked the
//! moment it arrives.

use serde::{Deserialize, Serialize};

use super::status::CommandName;
use crate::bundle::{BundleSignature, SigningKeyFile, TrustedKeys};

/// Largest encoded command accepted (an update offer for a 512 MiB bundle in 64 KiB chunks is ~260 KiB).
pub const MAX_COMMAND: usize = 1024 * 1024;
/// Most signatures looked at.
pub const MAX_SIGNATURES: usize = 16;
/// Most chunks an offer may list.
pub const MAX_CHUNKS: usize = 65_536;

const DOMAIN: &[u8] = b"outpost-command-v1\0";
/// Commands that name a model (or remove one) are signed under their own tag: an agent from before the model
/// repository knows only the first, so it refuses them (bad signature) instead of acting on its only model.
const DOMAIN_V2: &[u8] = b"outpost-command-v2\0";

/// The two encodings of a command body. Version 1 is every agent's; version 2 adds the model it acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    V1,
    V2,
}

impl Format {
    fn domain(self) -> &'static [u8] {
        match self {
            Format::V1 => DOMAIN,
            Format::V2 => DOMAIN_V2,
        }
    }

    /// The format a body is sent in: version 1 whenever it can be (so agents of every version take it).
    pub fn of(body: &CommandBody) -> Format {
        if body.model.is_some() || matches!(body.action, Action::Remove) {
            Format::V2
        } else {
            Format::V1
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    Device(String),
    Group(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Device(d) => write!(f, "device {d}"),
            Target::Group(g) => write!(f, "group {g}"),
        }
    }
}

/// A bundle offered for download, chunk by chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// SHA-256 of the whole bundle file; also its name on the chunk topics.
    pub bundle: [u8; 32],
    pub size: u64,
    pub chunk_size: u32,
    /// Bytes of the bundle's signed header (fetched and checked before the rest).
    pub header_len: u32,
    /// SHA-256 of each chunk, in order.
    pub chunks: Vec<[u8; 32]>,
    /// The manifest's name and version, for logs and early refusal.
    pub name: String,
    pub version: u64,
}

impl Offer {
    pub fn bundle_hex(&self) -> String {
        hex::encode(self.bundle)
    }

    /// Length of chunk `i` (the last one may be short).
    pub fn chunk_len(&self, i: usize) -> u64 {
        let start = (i as u64).saturating_mul(self.chunk_size as u64);
        (self.size.saturating_sub(start)).min(self.chunk_size as u64)
    }

    /// Chunks that hold the signed header. Total even on an offer that [`Offer::check`] would refuse (a zero chunk
    /// size divided by zero here until fuzzing found it).
    pub fn header_chunks(&self) -> usize {
        (self.header_len as usize).div_ceil(self.chunk_size.max(1) as usize)
    }

    /// Internal consistency, before anything is allocated from it.
    pub fn check(&self, max_bundle: u64) -> Result<(), CommandError> {
        let bad = |m: String| Err(CommandError::BadOffer(m));
        if self.size == 0 || self.size > max_bundle {
            return bad(format!(
                "bundle of {} bytes (this device takes 1..={max_bundle})",
                self.size
            ));
        }
        if !(1024..=4 * 1024 * 1024).contains(&self.chunk_size) {
            return bad(format!(
                "chunk size {} outside 1 KiB..4 MiB",
                self.chunk_size
            ));
        }
        let n = self.size.div_ceil(self.chunk_size as u64);
        if n != self.chunks.len() as u64 {
            return bad(format!(
                "{} chunk digests for {n} chunks",
                self.chunks.len()
            ));
        }
        if self.header_len == 0 || self.header_len as u64 > self.size {
            return bad(format!("header length {}", self.header_len));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// Publish status now and put it in the acknowledgement.
    Status,
    /// Back to the model that served before.
    Rollback,
    /// End the trial now and keep the new model.
    Promote,
    /// Set a whitelisted runtime setting.
    Set { key: String, value: String },
    /// Empty the result cache.
    PurgeCache,
    /// Fetch and install a bundle.
    Update(Offer),
    /// Fetch a bundle and stage it as the candidate beside the live model: it runs in shadow on a fraction of
    /// requests (`shadow`) and, optionally, answers a sticky fraction of inputs (`split`, A/B). `None` keeps the
    /// device's setting.
    Candidate {
        offer: Offer,
        shadow: Option<f32>,
        split: Option<f32>,
    },
    /// The staged candidate of this version goes live, on trial.
    Activate { version: u64 },
    /// Get rid of this version wherever it is (candidate, trial or live) and refuse it from now on.
    Abandon { version: u64 },
    /// Stop serving the model and empty its slots; its version floor stays (a tombstone), so an old bundle of it
    /// can never bring it back. The default model cannot be removed.
    Remove,
}

impl Action {
    /// The name acknowledgements carry.
    pub fn kind(&self) -> CommandName {
        match self {
            Action::Status => CommandName::Status,
            Action::Rollback => CommandName::Rollback,
            Action::Promote => CommandName::Promote,
            Action::Set { .. } => CommandName::Set,
            Action::PurgeCache => CommandName::PurgeCache,
            Action::Update(_) => CommandName::Update,
            Action::Candidate { .. } => CommandName::Candidate,
            Action::Activate { .. } => CommandName::Activate,
            Action::Abandon { .. } => CommandName::Abandon,
            Action::Remove => CommandName::Remove,
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The bundle offer this action carries, if it is an update.
    pub fn offer(&self) -> Option<&Offer> {
        match self {
            Action::Update(o) | Action::Candidate { offer: o, .. } => Some(o),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandBody {
    pub target: Target,
    /// Strictly increasing per fleet (`outpostctl cmd` uses Unix milliseconds): a device refuses any sequence number
    /// not above the last one it accepted, so a captured command cannot be replayed.
    pub seq: u64,
    pub issued_unix: u64,
    pub expires_unix: u64,
    pub action: Action,
    /// The model it acts on; None: the device's default model (and every version-1 command). An update names its
    /// model in its offer.
    pub model: Option<String>,
}

/// A version-1 body: the same fields without the model, laid out as every agent reads them.
#[derive(Serialize, Deserialize)]
struct BodyV1 {
    target: Target,
    seq: u64,
    issued_unix: u64,
    expires_unix: u64,
    action: Action,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedCommand {
    /// The postcard bytes of a [`CommandBody`], exactly as signed.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    pub signatures: Vec<BundleSignature>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CommandError {
    #[error("command of {0} bytes is larger than {MAX_COMMAND}")]
    TooLarge(usize),
    #[error("malformed command: {0}")]
    Malformed(String),
    #[error("only {valid} valid signature(s) from trusted keys, {needed} needed (unsigned, tampered or unknown key)")]
    TooFewSignatures { valid: usize, needed: usize },
    /// Signed by keys the device's trust does not list for commands: revoked by a rotation, or never trusted.
    #[error("key no longer trusted: signed by {keys:?}, which this device's trust does not list for commands \
             ({valid} valid signature(s) from trusted keys, {needed} needed); sign it with a current key")]
    KeyNotTrusted {
        keys: Vec<String>,
        valid: usize,
        needed: usize,
    },
    /// The device has no usable trust (its stored trust is missing or corrupt): nothing signed is taken.
    #[error("{0}")]
    NoTrust(String),
    #[error("addressed to {0}, not to this device")]
    NotForMe(String),
    #[error("{}", .0.sentence("command", "send it again"))]
    Expired(crate::clock::Expired),
    #[error(
        "sequence number {seq} is not above {last}, the last accepted (replayed or out of order)"
    )]
    Replayed { seq: u64, last: u64 },
    #[error("bad update offer: {0}")]
    BadOffer(String),
}

fn message(format: Format, body: &[u8]) -> Vec<u8> {
    let domain = format.domain();
    let mut m = Vec::with_capacity(domain.len() + body.len());
    m.extend_from_slice(domain);
    m.extend_from_slice(body);
    m
}

/// Encodes and signs a command (operator side).
pub fn sign(body: &CommandBody, keys: &[&SigningKeyFile]) -> Vec<u8> {
    let format = Format::of(body);
    let bytes = match format {
        Format::V2 => postcard::to_stdvec(body),
        Format::V1 => postcard::to_stdvec(&BodyV1 {
            target: body.target.clone(),
            seq: body.seq,
            issued_unix: body.issued_unix,
            expires_unix: body.expires_unix,
            action: body.action.clone(),
        }),
    }
    .expect("a command body always encodes");
    let msg = message(format, &bytes);
    let signed = SignedCommand {
        body: bytes,
        signatures: keys.iter().map(|k| k.sign(&msg)).collect(),
    };
    postcard::to_stdvec(&signed).expect("a signed command always encodes")
}

/// Decodes untrusted bytes into the envelope and its body, without judging the signatures.
pub fn decode(bytes: &[u8]) -> Result<(SignedCommand, CommandBody), CommandError> {
    decode_with_format(bytes).map(|(s, b, _)| (s, b))
}

/// The body in whichever format it is: exactly one fits, since a version-2 body is a version-1 body followed by
/// the model (a version-1 body ends before it; a version-2 body has bytes left over as version 1).
fn decode_body(bytes: &[u8]) -> Result<(CommandBody, Format), CommandError> {
    if let Ok((body, [])) = postcard::take_from_bytes::<CommandBody>(bytes) {
        return Ok((body, Format::V2));
    }
    let (v1, rest): (BodyV1, _) =
        postcard::take_from_bytes(bytes).map_err(|e| CommandError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CommandError::Malformed("trailing bytes in the body".into()));
    }
    Ok((
        CommandBody {
            target: v1.target,
            seq: v1.seq,
            issued_unix: v1.issued_unix,
            expires_unix: v1.expires_unix,
            action: v1.action,
            model: None,
        },
        Format::V1,
    ))
}

fn decode_with_format(bytes: &[u8]) -> Result<(SignedCommand, CommandBody, Format), CommandError> {
    if bytes.len() > MAX_COMMAND {
        return Err(CommandError::TooLarge(bytes.len()));
    }
    // postcard allocates at most what the input holds, and the input is capped above.
    let (signed, rest): (SignedCommand, _) =
        postcard::take_from_bytes(bytes).map_err(|e| CommandError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CommandError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    if signed.signatures.len() > MAX_SIGNATURES {
        return Err(CommandError::Malformed(format!(
            "{} signatures (at most {MAX_SIGNATURES})",
            signed.signatures.len()
        )));
    }
    let (body, format) = decode_body(&signed.body)?;
    if let Some(o) = body.action.offer() {
        if o.chunks.len() > MAX_CHUNKS {
            return Err(CommandError::BadOffer(format!(
                "{} chunks (at most {MAX_CHUNKS})",
                o.chunks.len()
            )));
        }
    }
    Ok((signed, body, format))
}

/// Who is checking: this device, its keys, and the last sequence number it accepted.
pub struct Checker<'a> {
    pub keys: &'a TrustedKeys,
    pub threshold: usize,
    pub device: &'a str,
    pub group: Option<&'a str>,
    /// The device's clock and time floor: expiry is judged at the later of the two.
    pub time: crate::clock::Reading,
    pub last_seq: u64,
}

/// Decodes and checks a command: signatures first (nothing unsigned is looked at further), then target, expiry and
/// sequence.
pub fn verify(bytes: &[u8], c: &Checker) -> Result<CommandBody, CommandError> {
    let (signed, body, format) = decode_with_format(bytes)?;
    let msg = message(format, &signed.body);
    let mut signers: Vec<&str> = Vec::new();
    for s in &signed.signatures {
        if signers.contains(&s.key_id.as_str()) {
            continue;
        }
        if c.keys.verify(&s.key_id, &msg, &s.signature) {
            signers.push(&s.key_id);
        }
    }
    let needed = c.threshold.max(1);
    if signers.len() < needed {
        let strangers = crate::bundle::keys::strangers(c.keys, &signed.signatures);
        if !strangers.is_empty() {
            return Err(CommandError::KeyNotTrusted {
                keys: strangers,
                valid: signers.len(),
                needed,
            });
        }
        return Err(CommandError::TooFewSignatures {
            valid: signers.len(),
            needed,
        });
    }
    let mine = match &body.target {
        Target::Device(d) => d == c.device,
        Target::Group(g) => Some(g.as_str()) == c.group,
    };
    if !mine {
        return Err(CommandError::NotForMe(body.target.to_string()));
    }
    c.time
        .check_expiry(body.expires_unix, body.issued_unix)
        .map_err(CommandError::Expired)?;
    if body.seq <= c.last_seq {
        return Err(CommandError::Replayed {
            seq: body.seq,
            last: c.last_seq,
        });
    }
    Ok(body)
}

/// Whether a threshold of distinct keys in `keys` signed the command (its signatures only: not its target, expiry
/// or sequence). What a trust rotation checks of the commands left retained on the broker.
pub fn signed_enough(
    bytes: &[u8],
    keys: &TrustedKeys,
    threshold: usize,
) -> Result<bool, CommandError> {
    let (signed, _, format) = decode_with_format(bytes)?;
    let msg = message(format, &signed.body);
    let mut signers: Vec<&str> = Vec::new();
    for s in &signed.signatures {
        if !signers.contains(&s.key_id.as_str()) && keys.verify(&s.key_id, &msg, &s.signature) {
            signers.push(&s.key_id);
        }
    }
    Ok(signers.len() >= threshold.max(1))
}

/// The same command, body byte for byte, signed by `keys` instead (a rotation removed the keys that signed it).
pub fn resign(bytes: &[u8], keys: &[&SigningKeyFile]) -> Result<Vec<u8>, CommandError> {
    let (signed, _, format) = decode_with_format(bytes)?;
    let msg = message(format, &signed.body);
    let again = SignedCommand {
        signatures: keys.iter().map(|k| k.sign(&msg)).collect(),
        body: signed.body,
    };
    Ok(postcard::to_stdvec(&again).expect("a signed command always encodes"))
}

/// The best-effort sequence number of bytes that failed verification, so the refusal can name it.
pub fn peek_seq(bytes: &[u8]) -> Option<u64> {
    decode(bytes).ok().map(|(_, b)| b.seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commands follow the clock's rules (`crate::clock::rules`): a device at 2040 refuses a fresh command naming its
    /// clock, a device at 1970 that has seen a later signed time refuses one that expired before it, and one that
    /// has not takes it.
    #[test]
    fn commands_are_judged_at_the_clock_and_the_floor() {
        use crate::clock::Reading;
        const TODAY: u64 = 1_796_601_600;
        let key = SigningKeyFile::generate().unwrap();
        let keys = TrustedKeys::parse(&key.trusted_line("op")).unwrap();
        let body = CommandBody {
            target: Target::Device("d".into()),
            seq: 5,
            issued_unix: TODAY,
            expires_unix: TODAY + 300,
            action: Action::Rollback,
            model: None,
        };
        let signed = sign(&body, &[&key]);
        let at = |clock_unix, floor_unix| Checker {
            keys: &keys,
            threshold: 1,
            device: "d",
            group: None,
            time: Reading {
                clock_unix,
                floor_unix,
            },
            last_seq: 0,
        };
        assert_eq!(
            verify(&signed, &at(TODAY + 1, TODAY - 86_400)).unwrap(),
            body
        );
        let e = verify(&signed, &at(2_208_988_800, TODAY - 86_400)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("command refused: this device's clock reads 2040-01-01T00:00:00Z"),
            "{e}"
        );
        let e = verify(&signed, &at(3_600, TODAY + 3_600)).unwrap_err();
        assert!(
            e.to_string()
                .contains("before the newest signed time this device has seen"),
            "{e}"
        );
        assert_eq!(verify(&signed, &at(3_600, TODAY - 86_400)).unwrap(), body);
    }

    #[test]
    fn a_command_naming_a_model_is_version_2_and_an_agent_before_the_repository_refuses_it() {
        let key = SigningKeyFile::generate().unwrap();
        let keys = TrustedKeys::parse(&key.trusted_line("op")).unwrap();
        let checker = Checker {
            keys: &keys,
            threshold: 1,
            device: "d",
            group: None,
            time: crate::clock::Reading::clock_only(10),
            last_seq: 0,
        };
        let mut body = CommandBody {
            target: Target::Device("d".into()),
            seq: 5,
            issued_unix: 1,
            expires_unix: 100,
            action: Action::Rollback,
            model: None,
        };
        // Unaddressed: version 1, exactly what every agent reads.
        let v1 = sign(&body, &[&key]);
        assert_eq!(decode_with_format(&v1).unwrap().2, Format::V1);
        assert_eq!(verify(&v1, &checker).unwrap(), body);
        body.model = Some("digits".into());
        let v2 = sign(&body, &[&key]);
        let (signed, back, format) = decode_with_format(&v2).unwrap();
        assert_eq!((format, &back), (Format::V2, &body));
        assert_eq!(verify(&v2, &checker).unwrap(), body);
        // An old agent checks the version-1 tag: the signature does not hold there, so it refuses the command
        // instead of rolling back its only model.
        let old = message(Format::V1, &signed.body);
        assert!(!keys.verify(
            &signed.signatures[0].key_id,
            &old,
            &signed.signatures[0].signature
        ));
        // Remove is version 2 even without a model (and the device refuses it for the default model).
        body.model = None;
        body.action = Action::Remove;
        assert_eq!(
            decode_with_format(&sign(&body, &[&key])).unwrap().2,
            Format::V2
        );
    }

    #[test]
    fn offer_helpers_are_total_on_offers_that_check_refuses() {
        // Found by `cargo fuzz run command_decode`: a zero chunk size divided by zero in header_chunks.
        let o = Offer {
            bundle: [0; 32],
            size: u64::MAX,
            chunk_size: 0,
            header_len: u32::MAX,
            chunks: vec![],
            name: String::new(),
            version: 0,
        };
        assert!(o.check(1 << 30).is_err());
        assert_eq!(o.chunk_len(usize::MAX), 0);
        assert_eq!(o.header_chunks(), u32::MAX as usize);
    }

    #[test]
    fn the_fuzzer_crash_input_is_refused_cleanly() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/regressions/command_decode");
        for e in std::fs::read_dir(&dir).expect("fuzz/regressions/command_decode") {
            let bytes = std::fs::read(e.unwrap().path()).unwrap();
            if let Ok((_, body)) = decode(&bytes) {
                if let Some(o) = body.action.offer() {
                    let _ = (o.check(1 << 30), o.header_chunks(), o.chunk_len(3));
                }
            }
        }
    }
}
