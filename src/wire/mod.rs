//! Every message between a device and its operator, as typed structs in one place: signed commands (postcard),
//! and the device's status and acknowledgements (JSON on the broker, produced and read only through these types).
//! The device side (`fleet::device`), the operator tools (`fleet::operator`, `fleet::rollout`, `outpostctl`) and
//! the rollout gates (`rollout`) all go through here, so a renamed field is a compile error or a decoding error,
//! never a silent default.

pub mod command;
pub mod status;
