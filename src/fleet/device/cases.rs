//! Hard cases to the cloud tier: new cases from the request path, paced resends from the outbox, and the
//! answers, which the forwarder verifies before anything believes them.

use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use std::time::{Duration, Instant};

use super::Link;
use crate::fleet::topics;

impl Link {
    pub(super) async fn send_case(&mut self, client: &AsyncClient, case: Vec<u8>) {
        let Some(id) = crate::store::outbox::case_id(&case) else {
            return;
        };
        let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
            response_topic: Some(topics::cloud_reply(&self.device)),
            correlation_data: Some(id.clone().into_bytes().into()),
            ..Default::default()
        };
        match client
            .publish_with_properties(
                topics::cloud_request(&self.device),
                QoS::AtLeastOnce,
                false,
                case,
                props,
            )
            .await
        {
            Ok(()) => {
                self.in_flight.insert(id, Instant::now());
            }
            Err(e) => tracing::warn!(error = %e, "cannot send a hard case; it stays queued"),
        }
    }

    /// Resends queued cases that are not in flight (or whose answer is overdue), at most `resend_per_s`.
    pub(super) async fn resend(&mut self, client: &AsyncClient) {
        let Some((f, _)) = &self.forward else {
            return;
        };
        if f.outbox_len() == 0 {
            self.in_flight.clear();
            return;
        }
        let per_tick = (self.config.forward.resend_per_s as usize / 10).max(1);
        let retry = Duration::from_millis(self.config.forward.retry_ms);
        let f = f.clone();
        let scan = per_tick + self.in_flight.len();
        let queued = crate::blocking::value(move || f.queued(scan))
            .await
            .unwrap_or_default();
        let now = Instant::now();
        let mut sent = 0;
        for case in queued {
            if sent >= per_tick {
                break;
            }
            let Some(id) = crate::store::outbox::case_id(&case) else {
                continue;
            };
            if self
                .in_flight
                .get(&id)
                .is_some_and(|t| now.saturating_duration_since(*t) < retry)
            {
                continue;
            }
            self.send_case(client, case).await;
            sent += 1;
        }
    }

    /// An answer is believed only after the forwarder has verified it; a refused one changes nothing but a counter.
    pub(super) async fn on_answer(&mut self, p: &Publish) {
        let Some((f, _)) = &self.forward else {
            return;
        };
        let props = p.properties.clone().unwrap_or_default();
        let (f, payload) = (f.clone(), p.payload.clone());
        let received = crate::blocking::run(move || {
            f.receive(
                &payload,
                props.content_type.as_deref(),
                props.correlation_data.as_deref(),
            )
        })
        .await;
        match received {
            Ok(answer) => {
                self.in_flight.remove(&answer.id);
                self.service.note_cloud_label(&answer.id, &answer.label);
            }
            Err(e @ crate::forward::ForwardError::Duplicate(_)) => {
                tracing::debug!(error = %e, "dropped a repeated cloud answer")
            }
            Err(e) => {
                tracing::warn!(error = %e, reason = e.reason(), "refused a cloud answer; the edge answers for it")
            }
        }
    }
}
