//! Bearer tokens: operators (with a role) and devices. Only sha256 hashes of tokens
//! are stored; tokens are 32 random bytes, so a plain hash is enough (no salt or
//! slow hash is needed against guessing).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use posup_proto::api::{DeviceAccess, Role};
use posup_store::{DeviceAuth, TokenIdentity};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::state::AppState;

/// A new random secret with a prefix that says what it is (`pop_` operator token,
/// `pdt_` device token, `pes_` enrollment secret).
pub fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// The sha256 of a secret, hex: how it is stored.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(digest_secret(secret))
}

fn digest_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn bearer(parts: &Parts) -> Result<&str> {
    let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
        Error::Unauthorized("missing token: send `Authorization: Bearer <token>`".into())
    })?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Error::Unauthorized(
                "malformed Authorization header: send `Authorization: Bearer <token>`".into(),
            )
        })
}

/// The bearer token of a request that may carry one (an enrollment).
pub fn optional_bearer(headers: &header::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Who may do what.
pub mod roles {
    use posup_proto::api::Role::{self, *};

    /// Reading the fleet, tasks, packages and plugins.
    pub const READ: &[Role] = &[Admin, Operator, Viewer, Vendor];
    /// Changing the fleet: device types, groups, tasks, variables, sites, versions.
    pub const FLEET: &[Role] = &[Admin, Operator];
    pub const PACKAGES: &[Role] = &[Admin, Operator, Vendor];
    pub const PLUGINS: &[Role] = &[Admin, Vendor];
    /// Publishing signed metadata (each role narrowed further by `tuf`).
    pub const PUBLISH: &[Role] = &[Admin, Operator, Vendor];
    /// Tokens, enrollment secrets and the audit log.
    pub const ADMIN: &[Role] = &[Admin];
}

/// An operator, authenticated by an operator token.
#[derive(Debug, Clone)]
pub struct Operator(pub TokenIdentity);

impl Operator {
    /// Starting an update with less than the announced notice (a notice
    /// override) is an administrator's call, for a task or a rollout alike.
    pub fn may_override_notice(&self, notice_override: Option<&str>) -> Result<()> {
        match notice_override {
            Some(_) => self.require(
                roles::ADMIN,
                "start an update with less than 24 hours' notice",
            ),
            None => Ok(()),
        }
    }

    /// Refuses with 403 unless the token's role is one of `roles`.
    pub fn require(&self, roles: &[Role], doing: &str) -> Result<()> {
        if roles.contains(&self.0.role) {
            return Ok(());
        }
        let needed = roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(" or ");
        Err(Error::Forbidden(format!(
            "token {} has role {} and may not {doing}: that needs role {needed}",
            self.0.name,
            self.0.role.as_str()
        )))
    }

    /// Refuses with 403 a vendor token acting on another vendor's plugin. Other
    /// roles pass (their role was checked by [`Operator::require`]).
    pub fn act_for_vendor(&self, vendor: &str, doing: &str) -> Result<()> {
        if self.0.role != Role::Vendor || self.0.vendor.as_deref() == Some(vendor) {
            return Ok(());
        }
        Err(Error::Forbidden(format!(
            "token {} acts for vendor {} and may not {doing} of vendor {vendor}",
            self.0.name,
            self.0.vendor.as_deref().unwrap_or("(none)")
        )))
    }

    /// How the audit log names this operator.
    pub fn actor(&self) -> String {
        format!("token {}", self.0.name)
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        // The operator API's `authorize` layer already authenticated the token.
        if let Some(op) = parts.extensions.get::<Operator>() {
            return Ok(op.clone());
        }
        let token = bearer(parts)?;
        state
            .store()
            .token_by_hash(&hash_secret(token))
            .await?
            .map(Operator)
            .ok_or_else(|| {
                Error::Unauthorized(
                    "unknown operator token: ask an administrator for a valid one".into(),
                )
            })
    }
}

/// A device, authenticated by its own token.
#[derive(Debug, Clone)]
pub struct Device {
    pub auth: Arc<DeviceAuth>,
    /// The token's sha256, the device's key in the caches.
    pub token_hash: [u8; 32],
}

impl FromRequestParts<AppState> for Device {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let token_hash = digest_secret(bearer(parts)?);
        if let Some(auth) = state.caches().device(&token_hash) {
            return active(auth).map(|auth| Device { auth, token_hash });
        }
        let epoch = state.caches().epoch();
        let auth = state
            .store()
            .device_by_token(&hex::encode(token_hash))
            .await?
            .map(Arc::new)
            .ok_or_else(|| {
                Error::Unauthorized("unknown device token: enroll the device again".into())
            })?;
        state.caches().put_device(token_hash, auth.clone(), epoch);
        active(auth).map(|auth| Device { auth, token_hash })
    }
}

/// Only an active device is served; a revoked or reset one hears why, and nothing
/// else.
fn active(auth: Arc<DeviceAuth>) -> Result<Arc<DeviceAuth>> {
    // An unknown value reads as revoked: the stricter answer.
    match DeviceAccess::parse(&auth.access).unwrap_or(DeviceAccess::Revoked) {
        DeviceAccess::Active => Ok(auth),
        DeviceAccess::AwaitingEnrollment => Err(Error::Unauthorized(
            "device token replaced: an administrator reset this device; enroll it again".into(),
        )),
        DeviceAccess::Revoked => Err(Error::Unauthorized(
            "device token revoked: an administrator must reset this device before it enrolls again"
                .into(),
        )),
    }
}

/// The operator API's gate, in front of every handler: the operation's roles
/// come from the OpenAPI document (`openapi::access`), so what is documented is
/// what is enforced. A missing or unknown token is refused with 401 and a role
/// the operation does not name with 403, before the request's body is read. An
/// operator route the document does not list is refused: deny by default.
pub async fn authorize(
    axum::extract::State(state): axum::extract::State<AppState>,
    matched: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    // The matched path of a nested route is the whole path, `/api/v1/…`.
    let path = matched.as_ref().map_or("", |m| m.as_str()).to_owned();
    // A HEAD is answered by the GET route.
    let method = match request.method().as_str() {
        "HEAD" => "GET".to_owned(),
        other => other.to_owned(),
    };
    let Some(access) = crate::openapi::access().get(&(method.clone(), path.clone())) else {
        return Error::Internal(format!(
            "{method} {path} is routed but not in the API's documented operations (openapi.rs)"
        ))
        .into_response();
    };
    let crate::openapi::Who::Operator(roles) = &access.who else {
        return next.run(request).await;
    };
    let (mut parts, body) = request.into_parts();
    let op = match Operator::from_request_parts(&mut parts, &state).await {
        Ok(op) => op,
        Err(e) => return e.into_response(),
    };
    let doing = format!(
        "{} ({method} {path})",
        access.summary.trim_end_matches('.').to_lowercase()
    );
    if let Err(e) = op.require(roles, &doing) {
        return e.into_response();
    }
    parts.extensions.insert(op);
    next.run(axum::extract::Request::from_parts(parts, body))
        .await
}
