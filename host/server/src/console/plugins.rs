//! Plugins and device types: what each device type runs and is granted, the
//! plugins uploaded, and on a fresh server the bundled ones, each enabled in one
//! click.

use askama::Template;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use posup_proto::api::DeviceTypeBody;
use posup_proto::{Capabilities, Dir, DirPaths};

use super::session::{Posted, Session};
use super::{Fail, Frame, Params, render};
use crate::state::AppState;

/// Capabilities in a few words: `product (write), staging · services kiosk ·
/// scripts · prompt · databases icecash`.
pub fn capabilities(c: &Capabilities) -> String {
    let dir = |d: Dir| match d {
        Dir::Product => "product",
        Dir::Staging => "staging",
        Dir::Backup => "backup",
        Dir::Logs => "logs",
    };
    let mut parts = Vec::new();
    if !c.dirs.is_empty() {
        parts.push(
            c.dirs
                .iter()
                .map(|d| {
                    if d.write {
                        format!("{} (write)", dir(d.dir))
                    } else {
                        dir(d.dir).to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    if !c.services.is_empty() {
        parts.push(format!("services {}", c.services.join(", ")));
    }
    if c.scripts {
        parts.push("scripts".into());
    }
    if c.prompt {
        parts.push("prompt".into());
    }
    if !c.databases.is_empty() {
        parts.push(format!("databases {}", c.databases.join(", ")));
    }
    parts.join(" · ")
}

pub struct TypeLine {
    pub name: String,
    pub description: String,
    pub plugin: String,
    /// What the enabled plugin asks for.
    pub asked: String,
    pub allowed: String,
    /// What the terminals' own configurations allow, and what the plugin then
    /// really gets there: (terminals, their ceiling, granted on them, what the
    /// plugin asks and does not get).
    pub terminals: Vec<(u64, String, String, String)>,
    pub devices: u64,
    /// The grants editor's state: each directory with a path (name, allowed,
    /// writable), the services and databases as typed, scripts, prompt.
    pub dirs: Vec<(&'static str, bool, bool)>,
    pub services: String,
    pub databases: String,
    pub scripts: bool,
    pub prompt: bool,
    /// The settings form's state: each directory's path, the poll interval when
    /// it is not the server's default, the store limit, the impact.
    pub paths: Vec<(&'static str, String)>,
    pub poll: String,
    pub site_limit: String,
    pub impact: String,
}

pub struct PluginLine {
    pub name: String,
    pub vendor: String,
    pub version: String,
    pub device_types: String,
    pub requested: String,
    pub interface: String,
    pub enabled_for: String,
    pub signed: bool,
}

#[derive(Template)]
#[template(path = "plugins.html")]
struct PluginsPage {
    frame: Frame,
    types: Vec<TypeLine>,
    plugins: Vec<PluginLine>,
    /// Bundled plugins no device type runs yet.
    bundled: Vec<&'static str>,
}

pub async fn list(State(state): State<AppState>, session: Session) -> Result<Response, Fail> {
    let frame = Frame::new(&session, "plugins", "/plugins".into());
    let types = state
        .store()
        .list_device_types(state.settings().poll_interval_secs)
        .await?;
    let plugins = state.store().list_plugins().await?;
    let bundled = state
        .bundled()
        .names()
        .filter(|name| {
            !plugins
                .iter()
                .any(|p| p.name == *name && !p.enabled_for.is_empty())
        })
        .collect();
    let tr = frame.tr;
    let mut lines = Vec::with_capacity(types.len());
    for t in types {
        let asked = t
            .plugin
            .as_ref()
            .and_then(|p| plugins.iter().find(|x| x.sha256 == p.sha256))
            .map(|p| p.capabilities.clone());
        let terminals = state
            .store()
            .terminal_allowances(&t.name)
            .await?
            .into_iter()
            .map(|(ceiling, n)| (ceiling, n.max(0) as u64))
            .map(|(ceiling, n)| match (ceiling, &asked) {
                (Some(ceiling), Some(asked)) => {
                    let got = asked.intersect(&t.allowed).intersect(&ceiling);
                    (
                        n,
                        capabilities(&ceiling),
                        capabilities(&got),
                        missing(asked, &got),
                    )
                }
                (Some(ceiling), None) => (n, capabilities(&ceiling), String::new(), String::new()),
                (None, _) => (
                    n,
                    tr.t("plugins-not-reported"),
                    String::new(),
                    String::new(),
                ),
            })
            .collect();
        let dirs = Dir::ALL
            .into_iter()
            .filter(|d| t.paths.get(*d).is_some())
            .map(|d| {
                let allowed = t.allowed.dirs.iter().find(|a| a.dir == d);
                (
                    d.as_str(),
                    allowed.is_some(),
                    allowed.is_some_and(|a| a.write),
                )
            })
            .collect();
        let default_poll = state.settings().poll_interval_secs;
        lines.push(TypeLine {
            paths: Dir::ALL
                .into_iter()
                .map(|d| (d.as_str(), t.paths.get(d).unwrap_or_default().to_owned()))
                .collect(),
            poll: if t.poll_interval_secs == default_poll {
                String::new()
            } else {
                t.poll_interval_secs.to_string()
            },
            site_limit: t.site_limit.map(|l| l.to_string()).unwrap_or_default(),
            impact: t.impact.clone(),
            dirs,
            services: t.allowed.services.join(", "),
            databases: t.allowed.databases.join(", "),
            scripts: t.allowed.scripts,
            prompt: t.allowed.prompt,
            plugin: t
                .plugin
                .map(|p| format!("{} {}", p.name, p.version))
                .unwrap_or_default(),
            asked: asked.as_ref().map(capabilities).unwrap_or_default(),
            allowed: capabilities(&t.allowed),
            terminals,
            name: t.name,
            description: t.description,
            devices: t.devices,
        });
    }
    render(&PluginsPage {
        types: lines,
        plugins: plugins
            .into_iter()
            .map(|p| PluginLine {
                requested: capabilities(&p.capabilities),
                device_types: p.device_types.join(", "),
                enabled_for: p.enabled_for.join(", "),
                signed: !p.signatures.is_empty(),
                name: p.name,
                vendor: p.vendor,
                version: p.version,
                interface: p.interface,
            })
            .collect(),
        bundled,
        frame,
    })
}

/// Enables a bundled plugin: stores it (unless it is stored already) and, for
/// each device type it names, creates the device type when it does not exist,
/// allowing exactly what the plugin asks for, and enables the plugin there. The
/// terminal's own configuration still limits what it gets.
pub async fn enable_bundled(
    State(state): State<AppState>,
    Params(name): Params<String>,
    posted: Posted,
) -> Result<Response, Fail> {
    let session = &posted.session;
    session.require_act()?;
    let Some(bytes) = state.bundled().get(&name) else {
        return Err(Fail::Store(posup_store::Error::NotFound(format!(
            "{name} is not a plugin built into this server"
        ))));
    };
    let actor = session.actor();
    let stored = crate::uploads::store_plugin(
        &state,
        &format!("{name} (bundled)"),
        Bytes::from_static(bytes),
        &actor,
        |_| Ok(()),
    )
    .await;
    let plugin = match stored {
        Ok(view) => view,
        // Stored before: enable the stored one.
        Err(crate::error::Error::Conflict(_)) => state
            .store()
            .list_plugins()
            .await?
            .into_iter()
            .rfind(|p| p.name == name)
            .ok_or_else(|| {
                Fail::Internal(anyhow::anyhow!("plugin {name} conflicts but is not stored"))
            })?,
        Err(e) => return Err(e.into()),
    };
    let now = state.now_ms();
    for device_type in &plugin.device_types {
        let exists = state
            .store()
            .device_type(device_type, state.settings().poll_interval_secs)
            .await?
            .is_some();
        if !exists {
            state
                .store()
                .put_device_type(
                    device_type,
                    &DeviceTypeBody {
                        description: plugin.description.clone(),
                        allowed: plugin.capabilities.clone(),
                        paths: default_paths(device_type, &plugin.capabilities),
                        ..Default::default()
                    },
                    now,
                    &actor,
                )
                .await?;
        }
        state
            .store()
            .enable_plugin(
                device_type,
                &plugin.name,
                Some(&plugin.version),
                now,
                &actor,
            )
            .await?;
    }
    Ok(Redirect::to("/plugins").into_response())
}

/// `POST /plugins/upload?file_name=…` from the page's script: the body is the
/// component, the CSRF token in `X-CSRF-Token`. An administrator uploads any
/// plugin; a vendor's own uploads go through the API with its vendor token.
/// Answers 201 or the refusal's words as plain text.
pub async fn upload(
    State(state): State<AppState>,
    session: Session,
    headers: axum::http::HeaderMap,
    axum::extract::Query(q): axum::extract::Query<posup_proto::api::PluginUpload>,
    body: Bytes,
) -> Result<Response, Fail> {
    super::packages::check_csrf_header(&session, &headers)?;
    session.require_admin()?;
    let label = q.file_name.unwrap_or_else(|| "upload".to_owned());
    match crate::uploads::store_plugin(&state, &label, body, &session.actor(), |_| Ok(())).await {
        Ok(plugin) => Ok((
            axum::http::StatusCode::CREATED,
            format!("{} {}", plugin.name, plugin.version),
        )
            .into_response()),
        Err(e) => Ok(super::packages::refusal(&session, e)),
    }
}

/// The grants editor: what the operator allows plugins on a device type.
pub async fn allow(
    State(state): State<AppState>,
    Params(name): Params<String>,
    posted: Posted,
) -> Result<Response, Fail> {
    let session = &posted.session;
    session.require_act()?;
    let allowed = Capabilities {
        dirs: Dir::ALL
            .into_iter()
            .filter(|d| posted.field(&format!("dir_{}", d.as_str())) == "on")
            .map(|dir| posup_proto::DirAccess {
                dir,
                write: posted.field(&format!("write_{}", dir.as_str())) == "on",
            })
            .collect(),
        services: names(posted.field("services")),
        scripts: posted.field("scripts") == "on",
        prompt: posted.field("prompt") == "on",
        databases: names(posted.field("databases")),
    };
    state
        .store()
        .set_allowed(&name, &allowed, state.now_ms(), &session.actor())
        .await?;
    Ok(Redirect::to("/plugins").into_response())
}

/// Names typed into a field, separated by commas, spaces or lines.
fn names(field: &str) -> Vec<String> {
    field
        .split([',', ' ', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A device type's settings: description, where its directories are (when the
/// terminal's configuration leaves it to the server), poll interval, how many of
/// a store's may be down at once, and what updating it touches.
pub async fn settings(
    State(state): State<AppState>,
    Params(name): Params<String>,
    posted: Posted,
) -> Result<Response, Fail> {
    let session = &posted.session;
    session.require_act()?;
    let tr = super::Tr::new(session.account.language);
    let current = state
        .store()
        .device_type(&name, state.settings().poll_interval_secs)
        .await?
        .ok_or_else(|| {
            posup_store::Error::NotFound(format!("device type {name} does not exist"))
        })?;
    let number = |field: &str, words: &str| -> Result<Option<u32>, Fail> {
        match posted.field(field) {
            "" => Ok(None),
            v => v
                .parse::<u32>()
                .map(Some)
                .map_err(|_| Fail::Store(posup_store::Error::Invalid(tr.t1(words, "value", v)))),
        }
    };
    let path = |d: Dir| {
        Some(posted.field(&format!("path_{}", d.as_str())).to_owned()).filter(|p| !p.is_empty())
    };
    let body = DeviceTypeBody {
        description: posted.field("description").to_owned(),
        allowed: current.allowed,
        paths: DirPaths {
            product: path(Dir::Product),
            staging: path(Dir::Staging),
            backup: path(Dir::Backup),
            logs: path(Dir::Logs),
        },
        poll_interval_secs: number("poll", "type-poll-not-number")?,
        site_limit: number("site_limit", "type-limit-not-number")?,
        impact: Some(posted.field("impact").to_owned()).filter(|i| !i.is_empty()),
    };
    crate::api::check_poll_interval(&state, &name, body.poll_interval_secs)?;
    state
        .store()
        .put_device_type(&name, &body, state.now_ms(), &session.actor())
        .await?;
    Ok(Redirect::to("/plugins").into_response())
}

/// What a plugin asks for and is not granted, in a few words.
pub fn missing(asked: &Capabilities, got: &Capabilities) -> String {
    let lacking = Capabilities {
        dirs: asked
            .dirs
            .iter()
            .filter(|d| {
                !got.dirs
                    .iter()
                    .any(|g| g.dir == d.dir && (g.write || !d.write))
            })
            .cloned()
            .collect(),
        services: asked
            .services
            .iter()
            .filter(|s| !got.services.contains(s))
            .cloned()
            .collect(),
        scripts: asked.scripts && !got.scripts,
        prompt: asked.prompt && !got.prompt,
        databases: asked
            .databases
            .iter()
            .filter(|d| !got.databases.contains(d))
            .cloned()
            .collect(),
    };
    capabilities(&lacking)
}

/// Where a new device type's directories are when a terminal's own
/// configuration does not say: posup's usual places. The terminal's `[dirs]`
/// always wins; these only fill what it leaves out and lets the server give.
pub fn default_paths(device_type: &str, asked: &Capabilities) -> DirPaths {
    let mut paths = DirPaths::default();
    for access in &asked.dirs {
        let path = match access.dir {
            Dir::Product => format!("/opt/{device_type}"),
            Dir::Staging => format!("/var/lib/posup/{device_type}/staging"),
            Dir::Backup => format!("/var/lib/posup/{device_type}/backup"),
            Dir::Logs => format!("/var/log/{device_type}"),
        };
        let slot = match access.dir {
            Dir::Product => &mut paths.product,
            Dir::Staging => &mut paths.staging,
            Dir::Backup => &mut paths.backup,
            Dir::Logs => &mut paths.logs,
        };
        *slot = Some(path);
    }
    paths
}

#[cfg(test)]
mod tests {
    use posup_proto::DirAccess;

    use super::*;

    #[test]
    fn capabilities_read_in_a_few_words() {
        let c = Capabilities {
            dirs: vec![
                DirAccess {
                    dir: Dir::Product,
                    write: true,
                },
                DirAccess {
                    dir: Dir::Staging,
                    write: false,
                },
            ],
            services: vec!["kiosk".into()],
            scripts: false,
            prompt: true,
            databases: vec!["icecash".into()],
        };
        assert_eq!(
            capabilities(&c),
            "product (write), staging · services kiosk · prompt · databases icecash"
        );
        assert_eq!(capabilities(&Capabilities::default()), "");
        let paths = default_paths("kiosk", &c);
        assert_eq!(paths.product.as_deref(), Some("/opt/kiosk"));
        assert_eq!(
            paths.staging.as_deref(),
            Some("/var/lib/posup/kiosk/staging")
        );
        assert_eq!(
            (paths.backup, paths.logs),
            (None, None),
            "only what it asks for"
        );
    }
}
