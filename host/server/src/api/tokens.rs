//! The operator API: tokens, enrollment secrets, audit.

use axum::extract::State;
use axum::http::StatusCode;
use posup_proto::api::*;

use crate::auth::{Operator, hash_secret, new_secret};
use crate::error::Result;
use crate::extract::{Json, Path, Query};
use crate::state::AppState;

pub(super) async fn list_tokens(State(state): State<AppState>) -> Result<Json<Vec<TokenView>>> {
    Ok(Json(state.store().list_tokens().await?))
}

pub(super) async fn create_token(
    State(state): State<AppState>,
    op: Operator,
    Json(body): Json<CreateToken>,
) -> Result<(StatusCode, Json<CreatedToken>)> {
    let secret = new_secret("pop_");
    let created = state
        .store()
        .create_token(
            &body,
            &secret,
            &hash_secret(&secret),
            state.now_ms(),
            &op.actor(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

pub(super) async fn delete_token(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<StatusCode> {
    state
        .store()
        .delete_token(id, state.now_ms(), &op.actor())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn list_secrets(
    State(state): State<AppState>,
) -> Result<Json<Vec<EnrollmentSecretView>>> {
    Ok(Json(state.store().list_enrollment_secrets().await?))
}

pub(super) async fn create_secret(
    State(state): State<AppState>,
    op: Operator,
    Json(body): Json<CreateEnrollmentSecret>,
) -> Result<(StatusCode, Json<CreatedEnrollmentSecret>)> {
    let secret = new_secret("pes_");
    let created = state
        .store()
        .create_enrollment_secret(
            &body,
            &secret,
            &hash_secret(&secret),
            state.now_ms(),
            &op.actor(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

pub(super) async fn delete_secret(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<StatusCode> {
    state
        .store()
        .delete_enrollment_secret(id, state.now_ms(), &op.actor())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn audit(
    State(state): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>> {
    Ok(Json(state.store().audit_log(&q).await?))
}
