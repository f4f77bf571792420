//! Signed commands from the operator: verified, their sequence number made durable (or refused, see `floors`), then
//! run; each is answered on the device's ack topic.

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use std::time::Duration;

use super::{Link, RecordError, Refused, LAST_SEQ, SETTINGS};
use crate::bundle::now_unix;
use crate::fleet::topics;
use crate::serve::settings::{Setting, SettingKey};
use crate::slots::SlotStore;
use crate::trust::Role;
use crate::wire::command::{self, Action, Checker, CommandBody, CommandError};
use crate::wire::status::{Ack, AckResult, CommandName, Outcome};

/// A slot-record change run off the async threads.
type SlotJob = Box<dyn FnOnce(&SlotStore) -> Result<Outcome, Refused> + Send>;

impl Link {
    /// Answers a command on the ack topic: its result, or the sentence of its refusal and the kind of refusal that
    /// operators act on fleet-wide.
    pub(super) async fn ack(
        &self,
        client: &AsyncClient,
        seq: Option<u64>,
        action: CommandName,
        result: Result<AckResult, Refused>,
    ) {
        let (ok, result, error, refusal) = match result {
            Ok(v) => (true, Some(v), None, None),
            Err(e) => (false, None, Some(e.to_string()), e.kind()),
        };
        let msg = Ack {
            device: self.device.clone(),
            seq,
            command: action,
            ok,
            unix: now_unix(),
            result,
            error,
            refusal,
        };
        metrics::counter!(crate::telemetry::COMMANDS, "command" => action.name(), "ok" => ok.to_string()).increment(1);
        if let Some(error) = &msg.error {
            tracing::warn!(seq, command = action.name(), %error, "command refused or failed");
        }
        let _ = client
            .publish(
                topics::ack(&self.device),
                QoS::AtLeastOnce,
                false,
                msg.to_json(),
            )
            .await;
    }

    /// `retained`: the broker delivered a retained command at subscription (a rollout's fleet-wide abandon). Once
    /// seen, it comes again at every new session; that repeat is expected, so it is not acknowledged as a refusal.
    pub(super) async fn on_command(
        &mut self,
        client: &AsyncClient,
        payload: &[u8],
        retained: bool,
    ) {
        if !self.in_flight.is_empty() && self.in_flight.len() > 100_000 {
            self.in_flight.clear(); // bounded: a lost answer only costs a resend
        }
        // Sequence numbers are checked per model (below, once the body says which model it acts on): two operators
        // rolling out two models at once each keep their own order, and a replay is refused by its model's floor.
        let verified = match self.registry.trust().role(Role::Commands) {
            Ok(role) => command::verify(
                payload,
                &Checker {
                    keys: &role.keys,
                    threshold: role.threshold,
                    device: &self.device,
                    group: self.config.fleet.group.as_deref(),
                    time: self.registry.clock().reading(),
                    last_seq: 0,
                },
            ),
            Err(e) => Err(CommandError::NoTrust(e.to_string())),
        };
        let body = match verified {
            Ok(b) => b,
            Err(e) => {
                self.ack(
                    client,
                    command::peek_seq(payload),
                    CommandName::Refused,
                    Err(e.into()),
                )
                .await;
                return;
            }
        };
        // Its signatures hold: its issue time has passed, and raises the device's time floor (a failed write of the
        // floor is counted by the clock and refuses nothing).
        let clock = self.registry.clock().clone();
        let issued = body.issued_unix;
        if let Err(e) = crate::blocking::value(move || clock.observe(issued)).await {
            tracing::warn!(error = %e, "time floor not raised");
        }
        // The sequence number is durable before anything runs, so a crash cannot make a command run twice; when it
        // cannot be read or made durable, the command is refused and does not run.
        let key = self.seq_key(&body);
        if let Err(e) = self.floors.admit(&key, body.seq).await {
            if retained && e.is_replay() {
                tracing::debug!(seq = body.seq, "a retained command already applied");
                return;
            }
            self.ack(client, Some(body.seq), CommandName::Refused, Err(e.into()))
                .await;
            return;
        }
        let action = body.action.kind();
        let result = self.execute(client, &body).await;
        if let Some(r) = result {
            self.ack(client, Some(body.seq), action, r).await;
        }
    }

    /// The record of the last sequence number accepted for the model `body` acts on (the model it names, or its
    /// update's bundle, else the default model). The default model's is the record every agent before per-model
    /// sequences kept, so an upgrade keeps its floor.
    fn seq_key(&self, body: &CommandBody) -> String {
        let model = body
            .model
            .clone()
            .or_else(|| body.action.offer().map(|o| o.name.clone()))
            .unwrap_or_else(|| self.registry.default_name().to_string());
        if model == self.registry.default_name() {
            LAST_SEQ.to_string()
        } else {
            format!("{LAST_SEQ}/{model}")
        }
    }

    /// Runs a verified command; `None` when the acknowledgement comes later (an update acks when installed).
    pub(super) async fn execute(
        &mut self,
        client: &AsyncClient,
        body: &CommandBody,
    ) -> Option<Result<AckResult, Refused>> {
        // The model the command acts on: the one it names (version-2 commands), else the default model.
        let (model, slots) = match &body.model {
            None => (self.registry.default_name().to_string(), self.slots.clone()),
            Some(m) => match self.repo.existing(m) {
                Ok(slots) => (m.clone(), slots),
                Err(e) => return Some(Err(e.into())),
            },
        };
        if let (Some(m), Some(o)) = (&body.model, body.action.offer()) {
            if *m != o.name {
                return Some(Err(Refused::ModelMismatch {
                    named: m.clone(),
                    bundle: o.name.clone(),
                }));
            }
        }
        let blocking = |f: SlotJob| async move {
            crate::blocking::run(move || f(&slots))
                .await
                .map(AckResult::done)
        };
        // What a rollback or activation checks the target release's recorded signers against.
        let role = self.registry.trust().role(Role::Bundles);
        match &body.action {
            Action::Status => {
                self.publish_status(client, true).await;
                Some(Ok(AckResult::Status(Box::new(self.status()))))
            }
            Action::Rollback => Some(
                blocking(Box::new(move |s| {
                    let role = role?;
                    let (st, ()) =
                        s.update(|s| Ok((s.rollback_trusted(&role.keys, role.threshold)?, ())))?;
                    Ok(Outcome {
                        now_active: Some(st.active_info().map(|i| i.version)),
                        ..Outcome::default()
                    })
                }))
                .await,
            ),
            Action::Promote => Some(
                blocking(Box::new(|s| {
                    let (st, ()) = s.update(|s| Ok((s.commit()?, ())))?;
                    Ok(Outcome {
                        committed: Some(st.active_info().map(|i| i.version)),
                        ..Outcome::default()
                    })
                }))
                .await,
            ),
            Action::Set { key, value } => {
                // The settable keys and their ranges: `crate::serve::settings`.
                if let Err(e) = Setting::parse(key, value) {
                    return Some(Err(e.into()));
                }
                Some(
                    self.store_settings(&model, &[(key.clone(), value.clone())])
                        .await
                        .map_err(Refused::from)
                        .map(|()| {
                            AckResult::done(Outcome {
                                set: Some(crate::wire::status::Setting {
                                    key: key.clone(),
                                    value: value.clone(),
                                }),
                                ..Outcome::default()
                            })
                        }),
                )
            }
            Action::PurgeCache => {
                // One cache serves every model (its keys name the release): purged whole.
                let svc = self.service.clone();
                Some(
                    crate::blocking::run(move || svc.purge_cache().map_err(Refused::from))
                        .await
                        .map(|n| {
                            AckResult::done(Outcome {
                                purged: Some(n),
                                ..Outcome::default()
                            })
                        }),
                )
            }
            Action::Update(offer) => {
                self.start_download(client, offer.clone(), body.seq, false)
                    .await
            }
            Action::Candidate {
                offer,
                shadow,
                split,
            } => {
                let mut settings = Vec::new();
                for (key, v) in [("shadow.fraction", shadow), ("shadow.split", split)] {
                    if let Some(v) = v {
                        if let Err(e) = Setting::parse(key, &v.to_string()) {
                            return Some(Err(e.into()));
                        }
                        settings.push((key.to_string(), v.to_string()));
                    }
                }
                if let Err(e) = self.store_settings(&offer.name, &settings).await {
                    return Some(Err(e.into()));
                }
                self.start_download(client, offer.clone(), body.seq, true)
                    .await
            }
            Action::Activate { version } => {
                let v = *version;
                Some(
                    blocking(Box::new(move |s| {
                        let role = role?;
                        let (st, ()) = s.update(|s| {
                            Ok((s.activate_trusted(v, &role.keys, role.threshold)?, ()))
                        })?;
                        Ok(Outcome {
                            now_active: Some(st.active_info().map(|i| i.version)),
                            trial: Some(st.trial.is_some()),
                            ..Outcome::default()
                        })
                    }))
                    .await,
                )
            }
            Action::Remove => {
                if model == self.registry.default_name() {
                    return Some(Err(Refused::DefaultModel { model }));
                }
                // A download of the removed model stops here: it must never complete into a slot.
                if let Err(e) = self.drop_download(|d| d.offer.name == model).await {
                    return Some(Err(e.into()));
                }
                let name = model.clone();
                Some(
                    blocking(Box::new(move |s| {
                        let (st, ()) = s.update(|s| Ok((s.remove(), ())))?;
                        Ok(Outcome {
                            removed: Some(name),
                            version: Some(st.highest_version),
                            ..Outcome::default()
                        })
                    }))
                    .await,
                )
            }
            Action::Abandon { version } => {
                let v = *version;
                // A download of the abandoned version stops here, and an offer of it waiting in the queue is
                // dropped: it must never complete into a slot. The next queued offer (another model's) starts.
                if let Err(e) = self.drop_queued(&model, v).await {
                    return Some(Err(e.into()));
                }
                match self
                    .drop_download(|d| d.offer.version == v && d.offer.name == model)
                    .await
                {
                    Ok(true) => self.start_queued(client).await,
                    Ok(false) => {}
                    Err(e) => return Some(Err(e.into())),
                }
                Some(
                    blocking(Box::new(move |s| {
                        let (st, changed) = s.update(|now| {
                            Ok(match now.abandon(v)? {
                                Some(next) => (next, true),
                                None => (now.clone(), false),
                            })
                        })?;
                        Ok(Outcome {
                            abandoned: Some(v),
                            changed: Some(changed),
                            now_active: Some(st.active_info().map(|i| i.version)),
                            ..Outcome::default()
                        })
                    }))
                    .await,
                )
            }
        }
    }

    /// Records runtime settings of `model` durably (they survive restarts, and a model that starts later gets its
    /// own), then applies them to it if it serves; when the record cannot be read or written, nothing is applied.
    pub(super) async fn store_settings(
        &mut self,
        model: &str,
        settings: &[(String, String)],
    ) -> Result<(), RecordError> {
        if settings.is_empty() {
            return Ok(());
        }
        let records = self.records.clone();
        let new = settings.to_vec();
        let key = settings_key(self.registry.default_name(), model);
        crate::blocking::run(move || {
            let mut all: Vec<(String, String)> = records.get(&key)?.unwrap_or_default();
            all.retain(|(x, _)| !new.iter().any(|(k, _)| k == x));
            all.extend(new);
            records.put(&key, &all)
        })
        .await
        .map_err(RecordError::Settings)?;
        for (key, value) in settings {
            let Ok(setting) = Setting::parse(key, value) else {
                continue;
            };
            if setting.key == SettingKey::HeartbeatS {
                self.heartbeat = Duration::from_secs(setting.value as u64);
            }
            if let Some(service) = self.registry.get(model) {
                service.set(setting);
            }
        }
        Ok(())
    }

    /// Applies the recorded settings of models that started since the last look (once each). A record that does
    /// not read is not taken as "no settings": that model's are tried again at the next tick.
    pub(super) async fn apply_new_models_settings(&mut self) {
        for (name, service) in self.registry.all() {
            if self.settings_applied.contains(&name) {
                continue;
            }
            let (records, key) = (
                self.records.clone(),
                settings_key(self.registry.default_name(), &name),
            );
            match crate::blocking::run(move || records.get::<Vec<(String, String)>>(&key)).await {
                Ok(stored) => {
                    for (k, v) in stored.iter().flatten() {
                        super::apply_recorded_setting(&service, k, v);
                    }
                    self.settings_unread.remove(&name);
                    self.settings_applied.insert(name);
                }
                Err(e) => {
                    if self.settings_unread.insert(name.clone()) {
                        tracing::error!(model = %name, error = %e, "cannot read the model's recorded settings; trying again every tick");
                    }
                }
            }
        }
    }
}

/// Where a model's settings are recorded: the default model's where a single-model agent kept them.
fn settings_key(default: &str, model: &str) -> String {
    if model == default {
        SETTINGS.to_string()
    } else {
        format!("{SETTINGS}/{model}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The forward budget can be set remotely, within its ranges, and a bad value is refused with the key named.
    #[test]
    fn the_budget_is_settable_within_its_ranges() {
        assert!(
            SettingKey::parse("forward.max_fraction").is_some()
                && SettingKey::parse("forward.max_per_s").is_some()
        );
        assert!(Setting::parse("forward.max_fraction", "0.05").is_ok());
        assert!(Setting::parse("forward.max_per_s", "2.5").is_ok());
        for (k, v) in [
            ("forward.max_fraction", "1.5"),
            ("forward.max_fraction", "lots"),
            ("forward.max_per_s", "-1"),
            ("forward.max_per_s", "NaN"),
        ] {
            let e = Setting::parse(k, v).unwrap_err();
            assert!(e.to_string().contains(k), "{e}");
        }
    }
}
