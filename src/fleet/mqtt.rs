//! The MQTT connection shared by the agent's link and the operator tools: options (TLS, packet size, nodelay,
//! persistent MQTT 5 session, last will) and the one task that drives rumqttc's event loop.
//!
//! rumqttc reconnects when `poll()` is called again after an error, so back-off is ours: capped exponential with
//! jitter, reset by a successful CONNACK. `poll()` runs in its own task and hands events over a channel, so no
//! `select!` elsewhere can cancel a connect half-way.

use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::FleetError;

/// Where the broker is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl Broker {
    /// `mqtt://host[:port]` (default 1883) or `mqtts://host[:port]` (default 8883).
    pub fn parse(url: &str) -> Result<Broker, FleetError> {
        let bad = |why: &str| FleetError::BrokerUrl(url.to_string(), why.to_string());
        let u = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let tls = match u.scheme() {
            "mqtt" => false,
            "mqtts" => true,
            _ => return Err(bad("the scheme must be mqtt:// or mqtts://")),
        };
        let host = u
            .host_str()
            .ok_or_else(|| bad("no host"))?
            .trim_matches(|c| c == '[' || c == ']')
            .to_string();
        let port = u.port().unwrap_or(if tls { 8883 } else { 1883 });
        Ok(Broker { host, port, tls })
    }
}

impl std::fmt::Display for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// TLS material, all PEM files.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// What a connection needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub broker: Broker,
    pub client_id: String,
    pub tls: TlsFiles,
    pub keep_alive: Duration,
    pub max_packet: u32,
    /// Keep the session (subscriptions, queued QoS 1 messages) this long across disconnects; 0 = clean session.
    pub session_expiry_s: u32,
    pub last_will: Option<(String, Vec<u8>)>,
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>, FleetError> {
    std::fs::read(path)
        .map_err(|e| FleetError::Tls(format!("cannot read the {what} {}: {e}", path.display())))
}

/// Outgoing QoS 1 publishes in flight at most, per client.
pub const MAX_INFLIGHT: u16 = 256;

pub fn options(s: &Settings) -> Result<MqttOptions, FleetError> {
    let mut o = MqttOptions::new(&s.client_id, &s.broker.host, s.broker.port);
    o.set_keep_alive(s.keep_alive);
    o.set_max_packet_size(Some(s.max_packet));
    // rumqttc sizes a table for its in-flight publishes by this limit, u16::MAX by default: about 10 MB per client
    // (measured while simulating 50 agents: 14 MB each, 0.2 MB with this). Brokers grant far fewer anyway
    // (mosquitto: 20).
    o.set_outgoing_inflight_upper_limit(MAX_INFLIGHT);
    o.set_clean_start(s.session_expiry_s == 0);
    if s.session_expiry_s > 0 {
        o.set_session_expiry_interval(Some(s.session_expiry_s));
    }
    o.set_connection_timeout(10);
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    o.set_network_options(net);
    if let Some((topic, payload)) = &s.last_will {
        o.set_last_will(LastWill::new(
            topic,
            payload.clone(),
            QoS::AtLeastOnce,
            true,
            None,
        ));
    }
    if s.broker.tls {
        // ring, not aws-lc: no C toolchain needed for the ARM builds. Installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = s.tls.ca.as_ref().ok_or_else(|| {
            FleetError::Tls(
                "mqtts:// needs the broker's CA certificate: set fleet.ca_file or --ca-file".into(),
            )
        })?;
        let client_auth = match (&s.tls.cert, &s.tls.key) {
            (Some(c), Some(k)) => Some((read(c, "client certificate")?, read(k, "client key")?)),
            (None, None) => None,
            _ => {
                return Err(FleetError::Tls(
                    "a client certificate and its key go together: give both or neither".into(),
                ))
            }
        };
        o.set_transport(Transport::Tls(TlsConfiguration::Simple {
            ca: read(ca, "CA certificate")?,
            alpn: None,
            client_auth,
        }));
    } else if s.tls.cert.is_some() || s.tls.ca.is_some() {
        return Err(FleetError::Tls(format!(
            "TLS files were given but the broker URL {} is plain mqtt://; use mqtts://",
            s.broker
        )));
    }
    Ok(o)
}

/// What the event-loop task reports.
#[derive(Debug)]
pub enum LinkEvent {
    Connected {
        session_present: bool,
    },
    Message(Publish),
    /// The broker acknowledged a subscription (one per SUBSCRIBE sent).
    Subscribed,
    /// The connection failed or dropped; a retry follows after `retry_in`.
    Disconnected {
        error: String,
        retry_in: Duration,
    },
}

/// Back-off after the n-th consecutive failure: 250 ms doubling to `max`, with up to 50 % jitter so a fleet that
/// lost its broker does not reconnect in lockstep.
pub fn backoff(failures: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(250).saturating_mul(1u32 << failures.min(16));
    let capped = base.min(max);
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    let jitter = u16::from_le_bytes(b) as f64 / u16::MAX as f64 * 0.5;
    capped.mul_f64(1.0 + jitter).min(max)
}

/// Connects and spawns the task that drives the event loop; events arrive on the receiver until `shutdown`.
pub fn connect(
    s: &Settings,
    shutdown: CancellationToken,
) -> Result<(AsyncClient, mpsc::Receiver<LinkEvent>), FleetError> {
    let (client, mut eventloop) = AsyncClient::new(options(s)?, 256);
    let (tx, rx) = mpsc::channel(1024);
    let broker = s.broker.to_string();
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                e = eventloop.poll() => e,
            };
            let out = match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    failures = 0;
                    LinkEvent::Connected {
                        session_present: ack.session_present,
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => LinkEvent::Message(p),
                Ok(Event::Incoming(Packet::SubAck(_))) => LinkEvent::Subscribed,
                Ok(_) => continue,
                Err(e) => {
                    let retry_in = backoff(failures, Duration::from_secs(30));
                    failures = failures.saturating_add(1);
                    let error = format!("broker {broker}: {e}");
                    if tx
                        .send(LinkEvent::Disconnected { error, retry_in })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(retry_in) => {}
                    }
                    continue;
                }
            };
            if tx.send(out).await.is_err() {
                return;
            }
        }
    });
    Ok((client, rx))
}

/// The payload as text, for logs.
pub fn topic_of(p: &Publish) -> String {
    String::from_utf8_lossy(&p.topic).into_owned()
}
