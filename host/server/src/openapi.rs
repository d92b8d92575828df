//! The OpenAPI 3.1 document of both APIs, served at `/api/v1/openapi.json`.
//!
//! Request and response schemas are generated from the `posup-proto` types the
//! handlers use, so they cannot drift from the code. The list of operations is
//! written here, once, with who may call each: [`access`] reads it back, and the
//! operator API enforces it before any handler runs (`auth::authorize`), so the
//! document and the server cannot disagree. An operator route this document
//! does not list answers no one.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};

use posup_proto::agent::*;
use posup_proto::api::*;
use posup_proto::rollout::*;
use posup_proto::{ErrorBody, Page};

/// Who may call an operation.
#[derive(Clone, Copy)]
enum Auth {
    None,
    Device,
    /// An operator token of one of these roles.
    Operator(&'static [Role]),
}

struct Doc {
    generator: SchemaGenerator,
    paths: Map<String, Value>,
}

struct Op<'a> {
    doc: &'a mut Doc,
    method: &'static str,
    path: &'static str,
    value: Map<String, Value>,
    parameters: Vec<Value>,
    responses: Map<String, Value>,
}

impl Doc {
    fn schema<T: JsonSchema>(&mut self) -> Value {
        self.generator.subschema_for::<T>().to_value()
    }

    fn op(
        &mut self,
        method: &'static str,
        path: &'static str,
        summary: &str,
        auth: Auth,
    ) -> Op<'_> {
        let mut value = Map::new();
        value.insert("summary".into(), json!(summary));
        let tag = path
            .trim_start_matches("/api/v1/")
            .split('/')
            .next()
            .unwrap_or("")
            .to_owned();
        value.insert("tags".into(), json!([tag]));
        let mut responses = Map::new();
        let error = self.schema::<ErrorBody>();
        let error_response = |text: &str| json!({"description": text, "content": {"application/json": {"schema": error.clone()}}});
        match auth {
            Auth::None => {
                value.insert("security".into(), json!([]));
            }
            Auth::Device => {
                value.insert("security".into(), json!([{"deviceToken": []}]));
                responses.insert(
                    "401".into(),
                    error_response("missing or unknown device token"),
                );
            }
            Auth::Operator(roles) => {
                value.insert("security".into(), json!([{"operatorToken": []}]));
                let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
                value.insert("x-roles".into(), json!(names));
                responses.insert(
                    "401".into(),
                    error_response("missing or unknown operator token"),
                );
                responses.insert(
                    "403".into(),
                    error_response("the token's role may not do this"),
                );
            }
        }
        responses.insert(
            "default".into(),
            error_response("an error, with a message naming the object"),
        );
        let mut parameters = Vec::new();
        for segment in path.split('/') {
            if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                let ty = if name == "id" || name.ends_with("_id") {
                    "integer"
                } else {
                    "string"
                };
                parameters.push(
                    json!({"name": name, "in": "path", "required": true, "schema": {"type": ty}}),
                );
            }
        }
        Op {
            doc: self,
            method,
            path,
            value,
            parameters,
            responses,
        }
    }
}

impl Op<'_> {
    /// The properties of `T` as query parameters.
    fn query<T: JsonSchema>(mut self) -> Self {
        let schema = schemars::SchemaGenerator::new(
            SchemaSettings::draft2020_12()
                .with(|s| s.definitions_path = "/components/schemas".into()),
        )
        .into_root_schema_for::<T>();
        // Enum parameters reference shared schemas; make sure they exist.
        self.doc.schema::<T>();
        let schema = schema.to_value();
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            for (name, prop) in props {
                let mut p = json!({"name": name, "in": "query", "required": required.contains(&name.as_str()), "schema": prop});
                if let Some(d) = prop.get("description") {
                    p["description"] = d.clone();
                }
                self.parameters.push(p);
            }
        }
        self
    }

    fn body<T: JsonSchema>(mut self) -> Self {
        let schema = self.doc.schema::<T>();
        self.value.insert(
            "requestBody".into(),
            json!({"required": true, "content": {"application/json": {"schema": schema}}}),
        );
        self
    }

    fn raw_body(mut self, media: &str, description: &str) -> Self {
        self.value.insert(
            "requestBody".into(),
            json!({"required": true, "description": description,
                   "content": {media: {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}}}),
        );
        self
    }

    fn ok<T: JsonSchema>(mut self, status: u16, description: &str) -> Self {
        let schema = self.doc.schema::<T>();
        self.responses.insert(
            status.to_string(),
            json!({"description": description, "content": {"application/json": {"schema": schema}}}),
        );
        self
    }

    fn no_content(mut self) -> Self {
        self.responses
            .insert("204".into(), json!({"description": "done"}));
        self
    }

    /// A blob download with `Range` and `ETag`.
    fn download(mut self) -> Self {
        self.parameters.push(json!({"name": "Range", "in": "header", "required": false,
            "description": "one range, `bytes=<start>-[<end>]` or `bytes=-<suffix>`", "schema": {"type": "string"}}));
        self.parameters.push(json!({"name": "If-None-Match", "in": "header", "required": false, "schema": {"type": "string"}}));
        self.parameters.push(json!({"name": "If-Range", "in": "header", "required": false, "schema": {"type": "string"}}));
        let file = json!({"application/octet-stream": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}});
        let etag =
            json!({"ETag": {"description": "the sha256 in quotes", "schema": {"type": "string"}}});
        self.responses.insert(
            "200".into(),
            json!({"description": "the whole file", "headers": etag, "content": file}),
        );
        self.responses.insert(
            "206".into(),
            json!({"description": "the requested range", "headers": etag, "content": file}),
        );
        self.responses.insert(
            "304".into(),
            json!({"description": "the client's copy (If-None-Match) is current"}),
        );
        self.responses.insert(
            "416".into(),
            json!({"description": "the range lies outside the file"}),
        );
        self
    }

    fn add(mut self) {
        if !self.parameters.is_empty() {
            self.value
                .insert("parameters".into(), Value::Array(self.parameters));
        }
        self.value
            .insert("responses".into(), Value::Object(self.responses));
        let entry = self
            .doc
            .paths
            .entry(self.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        entry
            .as_object_mut()
            .expect("path items are objects")
            .insert(self.method.to_owned(), Value::Object(self.value));
    }
}

/// The document.
pub fn document() -> Value {
    use crate::auth::roles::*;
    let mut doc = Doc {
        generator: SchemaSettings::draft2020_12()
            .with(|s| {
                s.definitions_path = "/components/schemas".into();
                s.meta_schema = None;
            })
            .into_generator(),
        paths: Map::new(),
    };
    let d = &mut doc;
    let op = Auth::Operator;

    // Agent API.
    d.op(
        "post",
        "/api/v1/agent/enroll",
        "Enroll a terminal: a new GUID with an enrollment token; an enrolled one with its current device token (Authorization) or once after a reset",
        Auth::None,
    )
    .body::<EnrollRequest>()
    .ok::<EnrollResponse>(200, "the device's id and token")
    .add();
    d.op(
        "post",
        "/api/v1/agent/poll",
        "Report inventory and status; get actions, variable changes and configuration",
        Auth::Device,
    )
    .body::<PollRequest>()
    .ok::<PollResponse>(200, "what to do")
    .add();
    d.op(
        "post",
        "/api/v1/agent/feedback",
        "Report a step's progress or result (idempotent by key)",
        Auth::Device,
    )
    .body::<Feedback>()
    .ok::<FeedbackAck>(200, "acknowledged")
    .add();
    d.op(
        "post",
        "/api/v1/agent/feedback/batch",
        "Report up to 64 steps' progress or results in order, in one transaction",
        Auth::Device,
    )
    .body::<FeedbackBatch>()
    .ok::<FeedbackBatchAck>(200, "one result per report: acknowledged or refused")
    .add();
    d.op(
        "get",
        "/api/v1/agent/packages/{sha256}",
        "Download a package of the device's type",
        Auth::Device,
    )
    .download()
    .add();
    d.op(
        "get",
        "/api/v1/agent/plugins/{sha256}",
        "Download a plugin component",
        Auth::Device,
    )
    .download()
    .add();
    d.op(
        "get",
        "/tuf/metadata/{name}",
        "A TUF metadata file (`N.<role>.json`, `timestamp.json`)",
        Auth::None,
    )
    .ok::<serde_json::Value>(200, "the signed metadata")
    .add();
    d.op(
        "get",
        "/tuf/targets/{path}",
        "A TUF target, by its consistent-snapshot name (`<dirs>/<sha256>.<file name>`)",
        Auth::Device,
    )
    .download()
    .add();
    d.op(
        "get",
        "/api/v1/tuf",
        "The TUF repository: roles, expiries, warnings",
        op(READ),
    )
    .ok::<TufStatus>(200, "what is published")
    .add();
    d.op(
        "get",
        "/api/v1/tuf/online-keys",
        "The server's online snapshot and timestamp keys, to name in `posup repo init`",
        op(READ),
    )
    .ok::<OnlineKeysView>(200, "the public keys")
    .add();
    d.op(
        "post",
        "/api/v1/tuf/metadata",
        "Publish signed metadata: root (each of a rotation in turn) and targets by an admin, release by an operator, a vendor's role by its vendor; all or nothing",
        op(PUBLISH),
    )
    .body::<PublishMetadata>()
    .ok::<TufStatus>(200, "what is published now")
    .add();

    // Operator API.
    d.op(
        "get",
        "/api/v1/health",
        "Whether the server and its database answer",
        Auth::None,
    )
    .ok::<Health>(200, "the server and its database answer")
    .add();
    d.op(
        "get",
        "/api/v1/devices",
        "List devices: sort on any column, search per column, pages",
        op(READ),
    )
    .query::<DeviceQuery>()
    .ok::<Page<DeviceRow>>(200, "one page")
    .add();
    d.op(
        "get",
        "/api/v1/devices/{id}",
        "A device with its inventory and tasks",
        op(READ),
    )
    .ok::<DeviceDetail>(200, "the device")
    .add();
    d.op(
        "delete",
        "/api/v1/devices/{id}",
        "Delete a device",
        op(FLEET),
    )
    .no_content()
    .add();
    d.op(
        "patch",
        "/api/v1/devices/{id}",
        "Move a device to another site or device type",
        op(FLEET),
    )
    .body::<MoveDevice>()
    .ok::<DeviceRow>(200, "the device")
    .add();
    d.op(
        "post",
        "/api/v1/devices/{id}/revoke",
        "Revoke a device's token: it is refused until an administrator resets it",
        op(ADMIN),
    )
    .no_content()
    .add();
    d.op(
        "post",
        "/api/v1/devices/{id}/reset",
        "End a device's token and let its GUID enroll once more with an enrollment token",
        op(ADMIN),
    )
    .no_content()
    .add();
    d.op(
        "put",
        "/api/v1/devices/{id}/tags",
        "Replace a device's tags",
        op(FLEET),
    )
    .body::<DeviceTags>()
    .ok::<DeviceRow>(200, "the device")
    .add();
    d.op("get", "/api/v1/device-types", "List device types", op(READ))
        .ok::<Vec<DeviceTypeView>>(200, "all device types")
        .add();
    d.op(
        "get",
        "/api/v1/device-types/{name}",
        "A device type",
        op(READ),
    )
    .ok::<DeviceTypeView>(200, "the device type")
    .add();
    d.op(
        "put",
        "/api/v1/device-types/{name}",
        "Create a device type or replace its settings",
        op(FLEET),
    )
    .body::<DeviceTypeBody>()
    .ok::<DeviceTypeView>(200, "the device type")
    .add();
    d.op(
        "delete",
        "/api/v1/device-types/{name}",
        "Delete a device type without devices or packages",
        op(FLEET),
    )
    .no_content()
    .add();
    d.op(
        "put",
        "/api/v1/device-types/{name}/plugin",
        "Enable a plugin for a device type",
        op(FLEET),
    )
    .body::<EnablePlugin>()
    .ok::<DeviceTypeView>(200, "the device type")
    .add();
    d.op(
        "delete",
        "/api/v1/device-types/{name}/plugin",
        "Disable the device type's plugin",
        op(FLEET),
    )
    .ok::<DeviceTypeView>(200, "the device type")
    .add();
    d.op(
        "get",
        "/api/v1/device-types/{name}/reference",
        "The version reference of a device type",
        op(READ),
    )
    .ok::<ReferenceView>(200, "the reference")
    .add();
    d.op(
        "put",
        "/api/v1/device-types/{name}/reference",
        "Set the version reference (explicit or from a device)",
        op(FLEET),
    )
    .body::<ReferenceBody>()
    .ok::<ReferenceView>(200, "the reference")
    .add();
    d.op(
        "delete",
        "/api/v1/device-types/{name}/reference",
        "Drop the explicit reference (the Current package counts)",
        op(FLEET),
    )
    .no_content()
    .add();
    d.op("get", "/api/v1/plugins", "List plugins", op(READ))
        .ok::<Vec<PluginView>>(200, "all plugins")
        .add();
    d.op(
        "post",
        "/api/v1/plugins",
        "Upload a plugin component; it is loaded and its `info` checked",
        op(PLUGINS),
    )
    .query::<PluginUpload>()
    .raw_body("application/wasm", "the component (.wasm)")
    .ok::<PluginView>(200, "the plugin")
    .add();
    d.op("get", "/api/v1/plugins/{sha256}", "A plugin", op(READ))
        .ok::<PluginView>(200, "the plugin")
        .add();
    d.op(
        "delete",
        "/api/v1/plugins/{sha256}",
        "Delete an unused plugin",
        op(PLUGINS),
    )
    .no_content()
    .add();
    d.op(
        "get",
        "/api/v1/plugins/{sha256}/file",
        "Download a plugin component",
        op(READ),
    )
    .download()
    .add();
    d.op("get", "/api/v1/packages", "List packages", op(READ))
        .query::<PackageQuery>()
        .ok::<Vec<PackageView>>(200, "the packages")
        .add();
    d.op(
        "post",
        "/api/v1/packages",
        "Upload a package; the device type's plugin inspects it",
        op(PACKAGES),
    )
    .query::<PackageUpload>()
    .raw_body("application/octet-stream", "the package file")
    .ok::<PackageView>(200, "the package")
    .add();
    d.op("get", "/api/v1/packages/{id}", "A package", op(READ))
        .ok::<PackageView>(200, "the package")
        .add();
    d.op(
        "patch",
        "/api/v1/packages/{id}",
        "Edit a package's notes or changelog",
        op(PACKAGES),
    )
    .body::<PackagePatch>()
    .ok::<PackageView>(200, "the package")
    .add();
    d.op(
        "delete",
        "/api/v1/packages/{id}",
        "Delete a package; one a task or rollout refers to is archived instead (hidden, kept for the record)",
        op(PACKAGES),
    )
    .no_content()
    .ok::<PackageView>(200, "archived: the package, with `archived` true")
    .add();
    d.op(
        "post",
        "/api/v1/packages/{id}/current",
        "Make the package Current for its device type",
        op(FLEET),
    )
    .ok::<PackageView>(200, "the package")
    .add();
    d.op(
        "get",
        "/api/v1/packages/{id}/file",
        "Download a package",
        op(READ),
    )
    .download()
    .add();
    d.op("get", "/api/v1/groups", "List groups", op(READ))
        .ok::<Vec<GroupView>>(200, "all groups")
        .add();
    d.op(
        "post",
        "/api/v1/groups",
        "Create a static or filter group",
        op(FLEET),
    )
    .body::<CreateGroup>()
    .ok::<GroupView>(201, "the group")
    .add();
    d.op("get", "/api/v1/groups/{id}", "A group", op(READ))
        .ok::<GroupView>(200, "the group")
        .add();
    d.op("patch", "/api/v1/groups/{id}", "Edit a group", op(FLEET))
        .body::<UpdateGroup>()
        .ok::<GroupView>(200, "the group")
        .add();
    d.op(
        "delete",
        "/api/v1/groups/{id}",
        "Delete an operator group",
        op(FLEET),
    )
    .no_content()
    .add();
    d.op(
        "post",
        "/api/v1/groups/{id}/devices",
        "Add devices to a static group",
        op(FLEET),
    )
    .body::<GroupDevices>()
    .ok::<GroupView>(200, "the group")
    .add();
    d.op(
        "delete",
        "/api/v1/groups/{id}/devices",
        "Remove devices from a static group",
        op(FLEET),
    )
    .body::<GroupDevices>()
    .ok::<GroupView>(200, "the group")
    .add();
    d.op("get", "/api/v1/tasks", "List tasks, newest first", op(READ))
        .query::<TaskQuery>()
        .ok::<Vec<TaskView>>(200, "the tasks")
        .add();
    d.op("post", "/api/v1/tasks", "Create a task", op(FLEET))
        .body::<CreateTask>()
        .ok::<TaskView>(201, "the task")
        .add();
    d.op(
        "get",
        "/api/v1/tasks/{id}",
        "A task with its counts",
        op(READ),
    )
    .ok::<TaskView>(200, "the task")
    .add();
    d.op("delete", "/api/v1/tasks/{id}", "Delete a task", op(FLEET))
        .no_content()
        .add();
    d.op(
        "post",
        "/api/v1/tasks/{id}/pause",
        "Pause a Scheduled or Running task",
        op(FLEET),
    )
    .ok::<TaskView>(200, "the task")
    .add();
    d.op(
        "post",
        "/api/v1/tasks/{id}/resume",
        "Resume a Paused task",
        op(FLEET),
    )
    .ok::<TaskView>(200, "the task")
    .add();
    d.op(
        "post",
        "/api/v1/tasks/{id}/restart",
        "Restart a Finished task now (devices that succeeded stay)",
        op(FLEET),
    )
    .ok::<TaskView>(200, "the task")
    .add();
    d.op(
        "get",
        "/api/v1/tasks/{id}/devices",
        "A task's devices with their states",
        op(READ),
    )
    .query::<TaskDeviceQuery>()
    .ok::<Page<TaskDeviceRow>>(200, "one page")
    .add();
    d.op(
        "get",
        "/api/v1/tasks/{id}/devices/{device_id}",
        "One device of a task with its step history",
        op(READ),
    )
    .ok::<TaskDeviceDetail>(200, "the device's part")
    .add();
    d.op(
        "post",
        "/api/v1/tasks/{id}/failed-group",
        "Put a task's failed devices in a new static group",
        op(FLEET),
    )
    .body::<FailedToGroup>()
    .ok::<GroupView>(201, "the new group")
    .add();
    rollout_operations(d);
    d.op(
        "get",
        "/api/v1/variables",
        "List variables as set",
        op(READ),
    )
    .query::<VariableFilter>()
    .ok::<Vec<VariableView>>(200, "the variables")
    .add();
    d.op(
        "put",
        "/api/v1/variables",
        "Set a variable in a scope",
        op(FLEET),
    )
    .body::<SetVariable>()
    .ok::<ChangeId>(200, "the change id")
    .add();
    d.op(
        "delete",
        "/api/v1/variables",
        "Remove a variable from a scope",
        op(FLEET),
    )
    .body::<DeleteVariable>()
    .ok::<ChangeId>(200, "the change id, null when it was not set")
    .add();
    d.op(
        "get",
        "/api/v1/variables/changes",
        "The change log after an id",
        op(READ),
    )
    .query::<ChangesQuery>()
    .ok::<Vec<VariableChangeView>>(200, "the changes")
    .add();
    d.op(
        "get",
        "/api/v1/sites",
        "List sites with preferences",
        op(READ),
    )
    .ok::<Vec<SiteView>>(200, "the sites")
    .add();
    d.op(
        "put",
        "/api/v1/sites/{name}/preferences",
        "Set a site's preferences (ignore-version-check)",
        op(FLEET),
    )
    .body::<SitePreferences>()
    .ok::<SiteView>(200, "the site")
    .add();
    d.op("get", "/api/v1/versions", "The version overview", op(READ))
        .query::<VersionQuery>()
        .ok::<Page<VersionRow>>(200, "one page")
        .add();
    d.op(
        "get",
        "/api/v1/versions/modules",
        "One module's version on every device",
        op(READ),
    )
    .query::<ModuleQuery>()
    .ok::<Page<ModuleDeviceRow>>(200, "one page")
    .add();
    d.op(
        "post",
        "/api/v1/versions/recompute",
        "Recompute the version overview",
        op(FLEET),
    )
    .body::<RecomputeRequest>()
    .ok::<RecomputeResult>(200, "how many devices were computed")
    .add();
    d.op(
        "get",
        "/api/v1/versions/{device_id}",
        "A device's versions, differences and modules",
        op(READ),
    )
    .ok::<VersionDetail>(200, "the device")
    .add();
    d.op("get", "/api/v1/tokens", "List operator tokens", op(ADMIN))
        .ok::<Vec<TokenView>>(200, "the tokens")
        .add();
    d.op(
        "post",
        "/api/v1/tokens",
        "Create an operator token (shown once)",
        op(ADMIN),
    )
    .body::<CreateToken>()
    .ok::<CreatedToken>(201, "the token")
    .add();
    d.op(
        "delete",
        "/api/v1/tokens/{id}",
        "Delete an operator token",
        op(ADMIN),
    )
    .no_content()
    .add();
    d.op(
        "get",
        "/api/v1/enrollment-secrets",
        "List enrollment secrets",
        op(ADMIN),
    )
    .ok::<Vec<EnrollmentSecretView>>(200, "the secrets")
    .add();
    d.op(
        "post",
        "/api/v1/enrollment-secrets",
        "Create an enrollment secret (shown once)",
        op(ADMIN),
    )
    .body::<CreateEnrollmentSecret>()
    .ok::<CreatedEnrollmentSecret>(201, "the secret")
    .add();
    d.op(
        "delete",
        "/api/v1/enrollment-secrets/{id}",
        "Delete an enrollment secret",
        op(ADMIN),
    )
    .no_content()
    .add();
    d.op(
        "get",
        "/api/v1/audit",
        "The audit log, newest first",
        op(ADMIN),
    )
    .query::<AuditQuery>()
    .ok::<Vec<AuditEntry>>(200, "the entries")
    .add();
    // Notification channels and the delivery log.
    {
        use posup_proto::notify::*;
        d.op(
            "get",
            "/api/v1/channels",
            "List notification channels (secrets are never shown)",
            op(READ),
        )
        .ok::<Vec<ChannelView>>(200, "all channels")
        .add();
        d.op(
            "post",
            "/api/v1/channels",
            "Create a webhook or Telegram channel",
            op(ADMIN),
        )
        .body::<CreateChannel>()
        .ok::<ChannelView>(201, "the channel")
        .add();
        d.op("get", "/api/v1/channels/{id}", "A channel", op(READ))
            .ok::<ChannelView>(200, "the channel")
            .add();
        d.op(
            "put",
            "/api/v1/channels/{id}",
            "Replace a channel's settings (the secret stays unless given or cleared)",
            op(ADMIN),
        )
        .body::<UpdateChannel>()
        .ok::<ChannelView>(200, "the channel")
        .add();
        d.op(
            "delete",
            "/api/v1/channels/{id}",
            "Delete a channel with its queued messages and their log",
            op(ADMIN),
        )
        .no_content()
        .add();
        d.op(
            "post",
            "/api/v1/channels/{id}/test",
            "Queue a test message to this channel only",
            op(ADMIN),
        )
        .ok::<NotificationView>(202, "the queued message")
        .add();
        d.op(
            "get",
            "/api/v1/notifications",
            "The delivery log, newest first",
            op(READ),
        )
        .query::<NotificationQuery>()
        .ok::<Page<NotificationView>>(200, "one page")
        .add();
        d.op(
            "get",
            "/api/v1/notifications/{id}",
            "A message with every delivery attempt",
            op(READ),
        )
        .ok::<NotificationDetail>(200, "the message")
        .add();
    }
    d.op("get", "/api/v1/openapi.json", "This document", Auth::None)
        .ok::<Value>(200, "the OpenAPI document")
        .add();

    let schemas = doc.generator.take_definitions(true);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "posup server",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Update server for point-of-sale fleets. The agent API is under /api/v1/agent, the operator API under /api/v1. Operator roles per operation are in `x-roles`."
        },
        "paths": doc.paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "operatorToken": {"type": "http", "scheme": "bearer", "description": "an operator token (admin, operator, viewer or vendor)"},
                "deviceToken": {"type": "http", "scheme": "bearer", "description": "the token a device got at enrollment"}
            }
        }
    })
}

/// Rollouts and the policy they follow.
fn rollout_operations(d: &mut Doc) {
    use crate::auth::roles::{FLEET, READ};
    let op = Auth::Operator;
    d.op(
        "get",
        "/api/v1/rollouts",
        "List rollouts, newest first",
        op(READ),
    )
    .ok::<Vec<RolloutView>>(200, "the rollouts")
    .add();
    d.op(
        "post",
        "/api/v1/rollouts",
        "Create and announce a rollout (an Update needs 24 hours' notice unless an admin overrides)",
        op(FLEET),
    )
    .body::<CreateRollout>()
    .ok::<RolloutView>(201, "the rollout")
    .add();
    d.op(
        "get",
        "/api/v1/rollouts/{id}",
        "A rollout with its waves",
        op(READ),
    )
    .ok::<RolloutView>(200, "the rollout")
    .add();
    d.op(
        "delete",
        "/api/v1/rollouts/{id}",
        "Delete a rollout and its tasks",
        op(FLEET),
    )
    .no_content()
    .add();
    for (path, summary) in [
        (
            "/api/v1/rollouts/{id}/pause",
            "Pause a rollout and its tasks",
        ),
        (
            "/api/v1/rollouts/{id}/resume",
            "Resume a Paused rollout (failures before count no more)",
        ),
        (
            "/api/v1/rollouts/{id}/advance",
            "Start the next wave of a Waiting rollout",
        ),
    ] {
        d.op("post", path, summary, op(FLEET))
            .ok::<RolloutView>(200, "the rollout")
            .add();
    }
    d.op(
        "get",
        "/api/v1/rollouts/{id}/sites",
        "Each site's part of a rollout, with its report once it ended",
        op(READ),
    )
    .ok::<Vec<RolloutSite>>(200, "the sites")
    .add();
    d.op(
        "get",
        "/api/v1/rollouts/{id}/announcements",
        "The announcement each site received",
        op(READ),
    )
    .ok::<Vec<SiteMessage>>(200, "the announcements")
    .add();
    d.op(
        "get",
        "/api/v1/windows",
        "List maintenance windows",
        op(READ),
    )
    .ok::<Vec<WindowView>>(200, "the windows")
    .add();
    d.op(
        "post",
        "/api/v1/windows",
        "Create a maintenance window",
        op(FLEET),
    )
    .body::<CreateWindow>()
    .ok::<WindowView>(201, "the window")
    .add();
    d.op(
        "delete",
        "/api/v1/windows/{id}",
        "Delete a maintenance window",
        op(FLEET),
    )
    .no_content()
    .add();
    d.op(
        "get",
        "/api/v1/order-rules",
        "List ordering rules across device types",
        op(READ),
    )
    .ok::<Vec<OrderRuleView>>(200, "the rules")
    .add();
    d.op(
        "post",
        "/api/v1/order-rules",
        "Make a device type wait for another on each site",
        op(FLEET),
    )
    .body::<CreateOrderRule>()
    .ok::<OrderRuleView>(201, "the rule")
    .add();
    d.op(
        "delete",
        "/api/v1/order-rules/{id}",
        "Delete an ordering rule",
        op(FLEET),
    )
    .no_content()
    .add();
    d.op(
        "put",
        "/api/v1/sites/{name}/settings",
        "Set a site's time zone, 24/7 and agreed reboot time",
        op(FLEET),
    )
    .body::<SiteSettings>()
    .ok::<SiteSettings>(200, "the settings")
    .add();
}

/// Who may call a documented operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Who {
    Anyone,
    Device,
    /// An operator token of one of these roles.
    Operator(Vec<Role>),
}

/// A documented operation's access rule, and its summary for messages.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    pub summary: String,
    pub who: Who,
}

/// Every documented operation by (method in capitals, path template as the
/// router writes it), read back from [`document`].
pub(crate) fn access() -> &'static std::collections::HashMap<(String, String), Access> {
    static TABLE: std::sync::LazyLock<std::collections::HashMap<(String, String), Access>> =
        std::sync::LazyLock::new(|| {
            let doc = document();
            let mut table = std::collections::HashMap::new();
            for (path, item) in doc["paths"].as_object().into_iter().flatten() {
                for (method, op) in item.as_object().into_iter().flatten() {
                    let security = &op["security"];
                    let who = if security
                        .get(0)
                        .is_some_and(|s| s.get("deviceToken").is_some())
                    {
                        Who::Device
                    } else if security
                        .get(0)
                        .is_some_and(|s| s.get("operatorToken").is_some())
                    {
                        Who::Operator(
                            op["x-roles"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|r| r.as_str().and_then(Role::parse))
                                .collect(),
                        )
                    } else {
                        Who::Anyone
                    };
                    let summary = op["summary"].as_str().unwrap_or_default().to_owned();
                    table.insert(
                        (method.to_uppercase(), path.clone()),
                        Access { summary, who },
                    );
                }
            }
            table
        });
    &TABLE
}
