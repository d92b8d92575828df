//! What the site writes about its OSCAR system: the terminal clients
//! (`work.srv/clients.lst`) and the system units (`work.srv/sysunits.lst`). OSCAR
//! keeps these facts in its own database, which a plugin cannot read; without the
//! lists only a Forced update goes ahead.

use posup_plugin_sdk::config::product_path;
use posup_plugin_sdk::files::exists;
use posup_plugin_sdk::{IoContext, Stop, TaskKind, log};

use crate::{CLIENTS, RETRY_SECS, UNITS};

/// One terminal client from `work.srv/clients.lst`.
pub(crate) struct Client {
    pub(crate) name: String,
    pub(crate) role: String,
    pub(crate) operator: Option<String>,
    pub(crate) transaction: Option<String>,
}

/// One system unit from `work.srv/sysunits.lst`.
pub(crate) struct Unit {
    pub(crate) name: String,
    pub(crate) online: bool,
    pub(crate) free: u64,
}

pub(crate) fn state_lines(path: &str) -> Result<Vec<(usize, Vec<String>)>, Stop> {
    let text = std::fs::read_to_string(path).at(path)?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(n, l)| (n + 1, l.split_whitespace().map(str::to_owned).collect()))
        .collect())
}

pub(crate) fn dash(s: &str) -> Option<String> {
    (s != "-").then(|| s.to_owned())
}

/// The terminal clients, when the site keeps their list; `None` when it does not.
pub(crate) fn read_clients() -> Result<Option<Vec<Client>>, Stop> {
    let path = product_path("oscar-clients", CLIENTS)?;
    if !exists(&path) {
        return Ok(None);
    }
    state_lines(&path)?
        .into_iter()
        .map(|(n, cols)| match cols.as_slice() {
            [name, _unit, role, operator, transaction] => Ok(Client {
                name: name.clone(),
                role: role.clone(),
                operator: dash(operator),
                transaction: dash(transaction),
            }),
            _ => Err(Stop::failed(format!(
                "{path} line {n}: expected `client unit role operator transaction`; the server's client list cannot be read"
            ))),
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

/// The system units, when the site keeps their list; `None` when it does not.
pub(crate) fn read_units() -> Result<Option<Vec<Unit>>, Stop> {
    let path = product_path("oscar-units", UNITS)?;
    if !exists(&path) {
        return Ok(None);
    }
    state_lines(&path)?
        .into_iter()
        .map(|(n, cols)| match cols.as_slice() {
            [name, _role, state, free] if state == "online" || state == "offline" => Ok(Unit {
                name: name.clone(),
                online: state == "online",
                free: free.parse().map_err(|_| {
                    Stop::failed(format!(
                        "{path} line {n}: free space {free:?} is not a number of bytes"
                    ))
                })?,
            }),
            _ => Err(Stop::failed(format!(
                "{path} line {n}: expected `unit role online|offline free-bytes`"
            ))),
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

/// Nobody may be working at a terminal client, and every system unit must be
/// online. The admin client, which runs the update, may be signed on. Where the
/// site keeps no list to tell, only a Forced update goes ahead: the operator
/// ordered it for a closed store, as the document's forced updates are meant.
pub(crate) fn check_clients(task: TaskKind) -> Result<(), Stop> {
    let (clients, units) = (read_clients()?, read_units()?);
    let forced = task == TaskKind::ForcedUpdate;
    if (clients.is_none() || units.is_none()) && !forced {
        let missing: Vec<String> = [
            clients
                .is_none()
                .then(|| product_path("oscar-clients", CLIENTS)),
            units.is_none().then(|| product_path("oscar-units", UNITS)),
        ]
        .into_iter()
        .flatten()
        .collect::<Result<_, _>>()?;
        return Err(Stop::failed(format!(
            "posup cannot tell whether a transaction is open, an operator is signed on or a system unit is offline: \
             there is no {}. Have the site write them (server variables `oscar-clients`, `oscar-units`; format in the \
             plugin's README), or run this update as a Forced update when the store is closed; nothing was changed",
            missing.join(" and ")
        )));
    }
    if forced && (clients.is_none() || units.is_none()) {
        log::warn(
            "no client or system-unit list to check: a Forced update goes ahead as ordered, without knowing whether anybody works at a client",
        );
    }
    for c in clients.iter().flatten().filter(|c| c.role != "admin") {
        if let Some(t) = &c.transaction {
            return Err(Stop::not_now(
                format!(
                    "transaction {t} is open at terminal client {}: the update waits until it is closed",
                    c.name
                ),
                RETRY_SECS,
            ));
        }
        if let Some(o) = &c.operator {
            return Err(Stop::not_now(
                format!(
                    "operator {o} is signed on at terminal client {}: the update waits until nobody is signed on",
                    c.name
                ),
                RETRY_SECS,
            ));
        }
    }
    if let Some(u) = units.iter().flatten().find(|u| !u.online) {
        return Err(Stop::not_now(
            format!(
                "system unit {} is offline: every terminal client must be online for the update",
                u.name
            ),
            RETRY_SECS,
        ));
    }
    Ok(())
}
