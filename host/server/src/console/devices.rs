//! The device list (the UKM 5 console's columns, each sortable and searchable,
//! paged) and a device's own page.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use posup_proto::Inventory;
use posup_proto::api::{DeviceQuery, DeviceSort, Order};

use super::session::Session;
use super::{Fail, Frame, Params, When, render};
use crate::state::AppState;

const PER_PAGE: u32 = 50;

/// A column of the list: its query name, what it sorts on, its heading.
struct Column {
    key: &'static str,
    sort: DeviceSort,
    heading: &'static str,
}

const COLUMNS: [Column; 9] = [
    Column {
        key: "guid",
        sort: DeviceSort::Guid,
        heading: "col-guid",
    },
    Column {
        key: "site",
        sort: DeviceSort::Site,
        heading: "col-site",
    },
    Column {
        key: "address",
        sort: DeviceSort::Address,
        heading: "col-address",
    },
    Column {
        key: "name",
        sort: DeviceSort::Name,
        heading: "col-name",
    },
    Column {
        key: "number",
        sort: DeviceSort::Number,
        heading: "col-number",
    },
    Column {
        key: "device_type",
        sort: DeviceSort::DeviceType,
        heading: "col-device-type",
    },
    Column {
        key: "loaded_package",
        sort: DeviceSort::LoadedPackage,
        heading: "col-loaded-package",
    },
    Column {
        key: "version",
        sort: DeviceSort::Version,
        heading: "col-version",
    },
    Column {
        key: "last_contact",
        sort: DeviceSort::LastContact,
        heading: "col-connection",
    },
];

/// A column heading as the page shows it.
pub struct Heading {
    pub text: String,
    /// The list sorted on this column (the other way round when it already is).
    pub href: String,
    /// `▲`, `▼` or nothing.
    pub mark: &'static str,
    /// The filter field's name; empty for the connection column, which filters
    /// by online/offline instead.
    pub filter: &'static str,
    pub value: String,
}

pub struct Line {
    pub id: i64,
    pub guid: String,
    pub site: String,
    pub address: String,
    pub name: String,
    pub number: u32,
    pub device_type: String,
    pub loaded_package: String,
    pub version: String,
    pub online: bool,
    pub last_contact: Option<When>,
}

#[derive(Template)]
#[template(path = "devices.html")]
struct ListPage {
    frame: Frame,
    headings: Vec<Heading>,
    lines: Vec<Line>,
    /// What was wrong with the address's parameters, in words.
    problems: Vec<String>,
    online: String,
    total: u64,
    page: u32,
    pages: u32,
    prev: Option<String>,
    next: Option<String>,
}

/// The list's address with `changes` applied to the current parameters.
fn href(params: &HashMap<String, String>, changes: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(&str, &str)> = params
        .iter()
        .filter(|(k, v)| !v.is_empty() && !changes.iter().any(|(c, _)| c == k))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    pairs.extend(changes.iter().filter(|(_, v)| !v.is_empty()).copied());
    pairs.sort();
    let query = serde_urlencoded::to_string(&pairs).unwrap_or_default();
    if query.is_empty() {
        "/devices".to_owned()
    } else {
        format!("/devices?{query}")
    }
}

pub async fn list(
    State(state): State<AppState>,
    session: Session,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, Fail> {
    let here = href(&params, &[]);
    let frame = Frame::new(&session, "devices", here);
    let tr = frame.tr;
    let mut problems = Vec::new();
    let get = |k: &str| params.get(k).map(|v| v.trim()).unwrap_or_default();
    let text = |k: &str| Some(get(k).to_owned()).filter(|v| !v.is_empty());

    let page = match get("page") {
        "" => 1,
        v => match v.parse::<u32>() {
            Ok(n) if n >= 1 => n,
            _ => {
                problems.push(tr.t1("devices-page-not-number", "value", v));
                1
            }
        },
    };
    let number = match get("number") {
        "" => None,
        v => match v.parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => {
                problems.push(tr.t1("devices-number-not-number", "value", v));
                None
            }
        },
    };
    let group = match get("group") {
        "" => None,
        v => v.parse::<i64>().ok(),
    };
    let online = match get("online") {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    };
    let sort = COLUMNS.iter().find(|c| c.key == get("sort"));
    let order = if get("order") == "desc" {
        Order::Desc
    } else {
        Order::Asc
    };
    let query = DeviceQuery {
        sort: sort.map(|c| c.sort).unwrap_or_default(),
        order,
        page: Some(page),
        per_page: Some(PER_PAGE),
        guid: text("guid"),
        site: text("site"),
        address: text("address"),
        name: text("name"),
        number,
        device_type: text("device_type"),
        agent_version: None,
        version: text("version"),
        loaded_package: text("loaded_package"),
        state: None,
        online,
        group,
        tag: None,
    };
    let found = state.store().list_devices(&query, &state.at()).await?;
    let headings = COLUMNS
        .iter()
        .map(|c| {
            let sorted = sort.is_some_and(|s| s.key == c.key);
            let flip = if sorted && order == Order::Asc {
                "desc"
            } else {
                "asc"
            };
            Heading {
                text: tr.t(c.heading),
                href: href(&params, &[("sort", c.key), ("order", flip), ("page", "")]),
                mark: match (sorted, order) {
                    (false, _) => "",
                    (true, Order::Asc) => "▲",
                    (true, Order::Desc) => "▼",
                },
                filter: if c.key == "last_contact" { "" } else { c.key },
                value: get(c.key).to_owned(),
            }
        })
        .collect();
    let pages = (found.total.div_ceil(u64::from(PER_PAGE)) as u32).max(1);
    let page_href = |n: u32| href(&params, &[("page", &n.to_string())]);
    let lines = found
        .items
        .into_iter()
        .map(|d| Line {
            id: d.id,
            guid: d.guid,
            site: d.site,
            address: d.address,
            name: d.name,
            number: d.number,
            device_type: d.device_type,
            loaded_package: d.loaded_package.unwrap_or_default(),
            version: d.version,
            online: d.online,
            last_contact: d.last_contact.map(|t| frame.when(t)),
        })
        .collect();
    render(&ListPage {
        headings,
        lines,
        problems,
        online: get("online").to_owned(),
        total: found.total,
        page,
        pages,
        prev: (page > 1).then(|| page_href(page - 1)),
        next: (page < pages).then(|| page_href(page + 1)),
        frame,
    })
}

/// The value of each variable a device sees: its own, else its groups' (the latest
/// set), else its site's, else the fleet's; the rule the agent API applies.
fn seen_variables(
    tr: &super::Tr,
    all: &[posup_proto::api::VariableView],
    device_id: i64,
    site: &str,
    groups: &[posup_proto::api::GroupView],
) -> Vec<(String, String, String)> {
    use posup_proto::api::VariableScope;
    let mut best: std::collections::BTreeMap<&str, (u8, i64, &posup_proto::api::VariableView)> =
        Default::default();
    for v in all {
        let rank = match &v.scope {
            VariableScope::Device { device_id: d } if *d == device_id => 4,
            VariableScope::Group { group_id } if groups.iter().any(|g| g.id == *group_id) => 3,
            VariableScope::Site { site: s } if s == site => 2,
            VariableScope::All => 1,
            _ => continue,
        };
        let candidate = (rank, v.change_id, v);
        match best.get(v.name.as_str()) {
            Some((r, c, _)) if (*r, *c) >= (rank, v.change_id) => {}
            _ => {
                best.insert(v.name.as_str(), candidate);
            }
        }
    }
    best.into_values()
        .map(|(rank, _, v)| {
            let from = match rank {
                4 => tr.t("variable-device"),
                3 => tr.t("task-group"),
                2 => tr.t("col-site"),
                _ => tr.t("variable-all"),
            };
            let value = match (&v.value, v.secret) {
                (Some(value), false) => value.clone(),
                _ => "••••••".into(),
            };
            (v.name.clone(), value, from)
        })
        .collect()
}

/// One update of the device, as its page lists it.
pub struct Update {
    pub task_id: i64,
    pub task_name: String,
    pub kind: String,
    pub task_state: String,
    pub state: String,
    pub step: String,
    pub message: String,
    pub wait: String,
    pub updated: When,
}

#[derive(Template)]
#[template(path = "device.html")]
struct DevicePage {
    frame: Frame,
    id: i64,
    name: String,
    guid: String,
    site: String,
    address: String,
    number: u32,
    device_type: String,
    agent_version: String,
    online: bool,
    last_contact: Option<When>,
    enrolled: When,
    tags: String,
    inventory: Option<Inventory>,
    modules: String,
    inventory_error: String,
    agent_message: String,
    updates: Vec<Update>,
    groups: Vec<(i64, String)>,
    /// The variables this device sees: name, value (secrets masked), from where.
    variables: Vec<(String, String, String)>,
}

pub async fn page(
    State(state): State<AppState>,
    session: Session,
    Params(id): Params<i64>,
) -> Result<Response, Fail> {
    let frame = Frame::new(&session, "devices", format!("/devices/{id}"));
    let detail = state
        .store()
        .device_detail(id, &state.at())
        .await?
        .ok_or_else(|| posup_store::Error::NotFound(frame.tr.t1("device-no-such", "id", id)))?;
    let tr = frame.tr;
    let d = detail.device;
    let updates = detail
        .tasks
        .into_iter()
        .map(|t| Update {
            task_id: t.task_id,
            task_name: t.task_name,
            kind: tr.t(super::tasks::kind_id(t.kind)),
            task_state: tr.t(super::tasks::state_id(t.task_state)),
            state: tr.t(super::tasks::device_state_id(t.state)),
            step: t.step.unwrap_or_default(),
            message: t.message.unwrap_or_default(),
            wait: t
                .wait
                .map(|w| super::tasks::wait_text(&tr, &w, &frame))
                .unwrap_or_default(),
            updated: frame.when(t.updated_at),
        })
        .collect();
    let modules = detail
        .inventory
        .as_ref()
        .map(|i| {
            i.modules
                .iter()
                .map(|m| format!("{} {}", m.name, m.version))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let at = state.at();
    let groups = state.store().groups_of_device(id, &at).await?;
    let variables = seen_variables(
        &tr,
        &state.store().list_variables(None).await?,
        id,
        &d.site,
        &groups,
    );
    render(&DevicePage {
        id,
        groups: groups.into_iter().map(|g| (g.id, g.name)).collect(),
        variables,
        name: d.name,
        guid: d.guid,
        site: d.site,
        address: d.address,
        number: d.number,
        device_type: d.device_type,
        agent_version: d.agent_version,
        online: d.online,
        last_contact: d.last_contact.map(|t| frame.when(t)),
        enrolled: frame.when(d.enrolled_at),
        tags: d.tags.join(", "),
        inventory: detail.inventory,
        modules,
        inventory_error: detail.inventory_error.unwrap_or_default(),
        agent_message: detail.agent_message.unwrap_or_default(),
        updates,
        frame,
    })
}
