//! Answering a device's poll, the server's hot path.
//!
//! Nearly every poll repeats what the device said last time and is owed nothing,
//! so the policy here is to write and query only what changed: the inventory is
//! hashed and parsed only when its hash differs, the agent's status and contact
//! time are written only when they moved (contact to a sixth of the offline
//! threshold), actions are queried only for devices the cache does not know to be
//! idle, and variable changes only for an agent behind the newest change id. The
//! caches ([`crate::cache`]) are filled under an epoch, so a change made while a
//! query ran is never overwritten by that query's stale answer.

use std::sync::Arc;

use posup_proto::Inventory;
use posup_proto::agent::{Action, AgentStatus, PollResponse, VariableChanges};
use posup_store::{
    At, DeviceAuth, InventoryReport, MAX_CLAIMS_AT_ONCE, MAX_INVENTORIES_AT_ONCE, UngatedClaim,
    VarTarget,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::auth::Device;
use crate::error::{Error, Result};
use crate::group::Batch;
use crate::state::AppState;

/// A poll as the server reads it: the wire type `PollRequest`, with the inventory
/// left as raw JSON. Nearly every poll repeats the last inventory, so it is only
/// hashed; it is parsed when it changed.
#[derive(Debug, Deserialize)]
pub(crate) struct PollBody<'a> {
    #[serde(borrow, default)]
    inventory: Option<&'a RawValue>,
    #[serde(default)]
    inventory_error: Option<String>,
    status: AgentStatus,
    #[serde(default)]
    vars_since: i64,
    #[serde(default)]
    config_revision: Option<i64>,
}

/// A body that is not the JSON asked for: 400 when it is not JSON, 422 when it
/// is JSON of the wrong shape.
pub(crate) fn bad_json(e: serde_json::Error) -> Error {
    let message = format!("the JSON body is not accepted: {e}");
    if e.is_data() {
        Error::Invalid(message)
    } else {
        Error::BadRequest(message)
    }
}

/// Records what the poll reports and works out what the device is owed.
pub(crate) async fn answer(
    state: &AppState,
    device: Device,
    req: PollBody<'_>,
) -> Result<PollResponse> {
    // One instant for the whole poll.
    let at = state.at();
    record(state, &device, &req, &at).await?;
    let Device { auth: device, .. } = device;
    let interval = device
        .poll_interval_secs
        .map(|s| s as u32)
        .unwrap_or(state.settings().poll_interval_secs);
    let actions = actions(state, &device, interval, &at).await?;
    let variables = variables(state, &device, req.vars_since, &at).await?;
    let config = if req.config_revision == Some(device.revision) {
        None
    } else {
        Some(
            state
                .device_config(&device.device_type)
                .await?
                .config
                .clone(),
        )
    };
    Ok(PollResponse {
        actions,
        variables,
        config,
        poll_interval_secs: interval,
    })
}

/// A device's changed inventory, written with the others that arrive with it
/// ([`crate::group`]): a fleet's polls after an update all carry one.
pub(crate) struct ChangedInventory {
    device: Arc<DeviceAuth>,
    inventory: Option<Inventory>,
    error: Option<String>,
    hash: String,
}

impl Batch for ChangedInventory {
    type Answer = ();
    const MAX: usize = MAX_INVENTORIES_AT_ONCE;

    fn weight(&self) -> usize {
        1
    }

    async fn write(
        state: &AppState,
        group: &[ChangedInventory],
        at: &At,
    ) -> std::result::Result<Vec<()>, Arc<String>> {
        let reports: Vec<(&DeviceAuth, InventoryReport<'_>)> = group
            .iter()
            .map(|c| {
                (
                    c.device.as_ref(),
                    InventoryReport {
                        inventory: c.inventory.as_ref(),
                        error: c.error.as_deref(),
                        hash: &c.hash,
                    },
                )
            })
            .collect();
        state
            .store()
            .record_inventories(&reports, at.now)
            .await
            .map_err(|e| Arc::new(e.to_string()))?;
        Ok(vec![(); group.len()])
    }
}

/// A poll's claim of the update part it may start, made with those of the polls
/// arriving with it ([`crate::group`]): a wave starts a fleet's updates at once.
/// Only the claim no gate could hold is grouped; the gates' path is the
/// poll's own ([`posup_store::Store::settle_poll`]).
pub(crate) struct ClaimFirst {
    action_id: i64,
    device: Arc<DeviceAuth>,
}

impl Batch for ClaimFirst {
    /// Whether the part was claimed.
    type Answer = bool;
    const MAX: usize = MAX_CLAIMS_AT_ONCE;

    fn weight(&self) -> usize {
        1
    }

    async fn write(
        state: &AppState,
        group: &[ClaimFirst],
        at: &At,
    ) -> std::result::Result<Vec<bool>, Arc<String>> {
        let claims: Vec<UngatedClaim<'_>> = group
            .iter()
            .map(|c| UngatedClaim {
                action_id: c.action_id,
                device_type: &c.device.device_type,
                site: &c.device.site,
            })
            .collect();
        state
            .store()
            .claim_ungated(&claims, at)
            .await
            .map_err(|e| Arc::new(e.to_string()))
    }
}

/// Writes the inventory, the agent's status and the contact time, each only
/// when it changed, and keeps the device cache in step.
async fn record(state: &AppState, device: &Device, req: &PollBody<'_>, at: &At) -> Result<()> {
    let Device {
        auth: device,
        token_hash,
    } = device;
    let store = state.store();
    let caches = state.caches();
    if req.inventory.is_some() || req.inventory_error.is_some() {
        let hash = inventory_hash(req.inventory, req.inventory_error.as_deref());
        if device.inventory_hash.as_deref() != Some(hash.as_str()) {
            let inventory: Option<Inventory> = req
                .inventory
                .map(|raw| serde_json::from_str(raw.get()))
                .transpose()
                .map_err(bad_json)?;
            let changed = ChangedInventory {
                device: device.clone(),
                inventory,
                error: req.inventory_error.clone(),
                hash: hash.clone(),
            };
            state.inventories().write(state, changed, *at).await?;
            caches.update_device(token_hash, |d| d.inventory_hash = Some(hash.clone()));
        }
    }
    let status = &req.status;
    // An agent that says nothing of its allowance keeps the one recorded.
    let allows = match &status.allows {
        Some(a) => Some(serde_json::to_string(a).map_err(|e| Error::internal("allowance", e))?),
        None => device.allows.clone(),
    };
    if status.agent_version != device.agent_version
        || status.plugin_sha256 != device.plugin_sha256
        || status.message != device.agent_message
        || allows != device.allows
    {
        store.record_agent_status(device.id, status).await?;
        caches.update_device(token_hash, |d| {
            d.agent_version = status.agent_version.clone();
            d.plugin_sha256 = status.plugin_sha256.clone();
            d.agent_message = status.message.clone();
            d.allows = allows.clone();
        });
    }
    // Contact times are kept to a sixth of the offline threshold: a device polling
    // faster than that (retries, `more` variable changes) costs no extra write, and
    // online/offline stays exact to well within the threshold.
    let resolution = state.settings().offline_after.as_millis() as i64 / 6;
    if at.now - device.last_contact >= resolution {
        state.record_contact(device.id).await?;
        caches.update_device(token_hash, |d| d.last_contact = at.now);
    }
    Ok(())
}

/// The actions starting before the next poll; only devices that may have some
/// cost a query.
async fn actions(
    state: &AppState,
    device: &Arc<DeviceAuth>,
    interval: u32,
    at: &At,
) -> Result<Vec<Action>> {
    let store = state.store();
    let caches = state.caches();
    let active = state.devices_with_actions().await?;
    if !caches.may_have_actions(&active, device.id) {
        return Ok(Vec::new());
    }
    // Actions starting before the next poll are handed out now, with their
    // start time, so a forced update at a set time starts on time. An update
    // is handed out only once its gates let it start (see `posup_store::gates`).
    let horizon = at.now + i64::from(interval) * 1000;
    let asking = posup_store::Asking {
        device_id: device.id,
        site: &device.site,
        device_type: &device.device_type,
    };
    let epoch = caches.epoch();
    let parts = store.poll_parts(device.id, at, horizon).await?;
    let claimed = match parts.ungated_claim(asking) {
        Some(c) => {
            let claim = ClaimFirst {
                action_id: c.action_id,
                device: device.clone(),
            };
            state.claims().write(state, claim, *at).await?
        }
        None => false,
    };
    let polled = store.settle_poll(asking, parts, claimed, at).await?;
    if polled.idle {
        caches.put_idle(device.id, epoch);
    }
    if polled.vars_changed {
        // An ordering rule set a readiness variable: the cached newest change
        // id is stale.
        caches.invalidate_all();
    }
    Ok(polled.actions)
}

/// The variable changes after `since`; an agent that has the newest one costs
/// no query.
async fn variables(
    state: &AppState,
    device: &DeviceAuth,
    since: i64,
    at: &At,
) -> Result<VariableChanges> {
    let store = state.store();
    let caches = state.caches();
    let newest = match caches.vars_max() {
        Some(max) => max,
        None => {
            let epoch = caches.epoch();
            let max = store.generations().await?.variables;
            caches.put_vars_max(max, epoch);
            max
        }
    };
    if since == newest {
        return Ok(VariableChanges {
            changes: Vec::new(),
            last_id: newest,
            more: false,
        });
    }
    let target = VarTarget {
        device_id: device.id,
        site: &device.site,
    };
    Ok(store.variable_changes_for(&target, since, at).await?)
}

/// A digest of what the device reported about its installation, so an unchanged
/// report costs no write.
fn inventory_hash(inventory: Option<&RawValue>, error: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(inventory.map(RawValue::get).unwrap_or("null"));
    h.update([0]);
    h.update(error.unwrap_or_default());
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use posup_proto::ModuleVersion;
    use posup_proto::agent::PollRequest;

    use super::*;

    #[test]
    fn the_server_reads_every_poll_request() {
        let full = PollRequest {
            inventory: Some(Inventory {
                product: "UKM 5".into(),
                version: "1.8.4".into(),
                modules: vec![ModuleVersion {
                    name: "pos".into(),
                    version: "1".into(),
                }],
                ..Default::default()
            }),
            inventory_error: None,
            status: AgentStatus {
                agent_version: "0.1.0".into(),
                ..Default::default()
            },
            vars_since: 7,
            config_revision: Some(3),
        };
        let text = serde_json::to_string(&full).unwrap();
        let body: PollBody = serde_json::from_str(&text).unwrap();
        let inventory: Inventory = serde_json::from_str(body.inventory.unwrap().get()).unwrap();
        assert_eq!(Some(inventory), full.inventory);
        assert_eq!((body.vars_since, body.config_revision), (7, Some(3)));
        let bare: PollBody =
            serde_json::from_str(r#"{"status": {"agent_version": "1"}, "inventory": null}"#)
                .unwrap();
        assert!(bare.inventory.is_none());
        assert_ne!(
            inventory_hash(None, Some("x")),
            inventory_hash(None, None),
            "an error is a change"
        );
    }
}
