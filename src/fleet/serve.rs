//! The bundle server behind `outpostctl serve`: answers chunk requests through the broker.
//!
//! Servers join a shared subscription per bundle (`$share/outpost-serve/...`), so any number of them can run and
//! each request is answered by one. They hold no state beyond the bundle files: a device's progress lives on the
//! device.

use rumqttc::v5::mqttbytes::QoS;
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use super::mqtt::{self, LinkEvent, Settings};
use super::transfer::{decode_request, Chunk};
use super::{topics, FleetError};
use crate::wire::command::Offer;

struct Counting<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        Ok(k)
    }
}

/// Builds the offer for a bundle file: whole-file digest, chunk digests and the length of the signed header.
pub fn make_offer(path: &Path, chunk_size: u32) -> Result<Offer, FleetError> {
    let ioe = |e: std::io::Error| FleetError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let mut f = std::fs::File::open(path).map_err(ioe)?;
    let mut counting = Counting {
        inner: &mut f,
        n: 0,
    };
    let (manifest, _, _, _) = crate::bundle::read_header_unverified(&mut counting)
        .map_err(|e| FleetError::Bundle(format!("{}: {e}", path.display())))?;
    let header_len = counting.n as u32;
    let size = std::fs::metadata(path).map_err(ioe)?.len();
    let mut f = std::fs::File::open(path).map_err(ioe)?;
    let mut whole = sha2::Sha256::default();
    let mut chunks = Vec::new();
    let mut buf = vec![0u8; chunk_size as usize];
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let k = f.read(&mut buf[filled..]).map_err(ioe)?;
            if k == 0 {
                break;
            }
            filled += k;
        }
        if filled == 0 {
            break;
        }
        use sha2::Digest;
        whole.update(&buf[..filled]);
        chunks.push(crate::bundle::sha256(&buf[..filled]));
        if filled < buf.len() {
            break;
        }
    }
    use sha2::Digest;
    Ok(Offer {
        bundle: whole.finalize().into(),
        size,
        chunk_size,
        header_len,
        chunks,
        name: manifest.name,
        version: manifest.version,
    })
}

/// Counters a server reports.
#[derive(Debug, Default)]
pub struct Served {
    pub chunks: AtomicU64,
    pub bytes: AtomicU64,
    pub refused: AtomicU64,
}

/// Serves chunk requests for `bundles` until `shutdown`.
pub async fn serve(
    settings: Settings,
    bundles: Vec<(Offer, PathBuf)>,
    served: Arc<Served>,
    shutdown: CancellationToken,
) -> Result<(), FleetError> {
    let (client, mut events) = mqtt::connect(&settings, shutdown.clone())?;
    let by_id: HashMap<[u8; 32], (Offer, PathBuf)> = bundles
        .into_iter()
        .map(|(o, p)| (o.bundle, (o, p)))
        .collect();
    let mut connected_once = false;
    // Subscriptions sent and not yet acknowledged: "ready" is said when none is left, as from then on a request
    // for a chunk reaches this server.
    let mut pending = 0usize;
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = events.recv() => match ev { Some(ev) => ev, None => break },
        };
        match ev {
            LinkEvent::Connected { session_present } => {
                connected_once = true;
                if !session_present {
                    for o in by_id.values() {
                        client
                            .subscribe(
                                topics::bundle_get_shared(&o.0.bundle_hex()),
                                QoS::AtLeastOnce,
                            )
                            .await?;
                    }
                    pending = by_id.len();
                }
                if pending == 0 {
                    tracing::info!(bundles = by_id.len(), "bundle server ready");
                }
            }
            LinkEvent::Disconnected { error, retry_in } => {
                if !connected_once {
                    return Err(FleetError::Connect(error));
                }
                tracing::warn!(%error, ?retry_in, "lost the broker; reconnecting");
            }
            LinkEvent::Subscribed => {
                pending = pending.saturating_sub(1);
                if pending == 0 {
                    tracing::info!(bundles = by_id.len(), "bundle server ready");
                }
            }
            LinkEvent::Message(p) => {
                let req = match decode_request(&p.payload) {
                    Ok(r) => r,
                    Err(e) => {
                        served.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "refused a chunk request");
                        continue;
                    }
                };
                // A request may only ask for chunks to go to the device whose topic it came on (the broker's ACL
                // decides who may publish there).
                let topic = mqtt::topic_of(&p);
                if topics::bundle_get_device(&topic)
                    .map(topics::chunk)
                    .as_deref()
                    != Some(req.reply_to.as_str())
                {
                    served.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%topic, reply_to = %req.reply_to, "refused a chunk request for another device");
                    continue;
                }
                let Some((offer, path)) = by_id.get(&req.bundle) else {
                    served.refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let i = req.index as usize;
                if i >= offer.chunks.len() {
                    served.refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let len = offer.chunk_len(i) as usize;
                let off = i as u64 * offer.chunk_size as u64;
                let path = path.clone();
                let data = crate::blocking::run(move || {
                    let f = std::fs::File::open(&path)?;
                    let mut buf = vec![0u8; len];
                    f.read_exact_at(&mut buf, off)?;
                    Ok::<_, std::io::Error>(buf)
                })
                .await
                .map_err(|e| FleetError::Io {
                    path: "bundle".into(),
                    message: e.to_string(),
                })?;
                let n = data.len() as u64;
                let msg = postcard::to_stdvec(&Chunk {
                    bundle: req.bundle,
                    index: req.index,
                    data,
                })
                .map_err(|e| FleetError::Client(e.to_string()))?;
                client
                    .publish(req.reply_to, QoS::AtLeastOnce, false, msg)
                    .await?;
                served.chunks.fetch_add(1, Ordering::Relaxed);
                served.bytes.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
    let _ = client.disconnect().await;
    Ok(())
}
