//! The operator API of rollouts and the policy they follow: `/rollouts`,
//! `/windows`, `/order-rules` and `/sites/{name}/settings`.

use crate::routes::{Routes, get, post, put};
use axum::extract::State;
use axum::http::StatusCode;
use posup_proto::rollout::*;
use posup_store::RolloutCommand;

use crate::auth::Operator;
use crate::error::{Error, Result};
use crate::extract::{Json, Path};
use crate::state::AppState;

pub fn routes() -> Routes {
    Routes::new()
        .route("/rollouts", get(list_rollouts).post(create_rollout))
        .route("/rollouts/{id}", get(get_rollout).delete(delete_rollout))
        .route("/rollouts/{id}/pause", post(pause))
        .route("/rollouts/{id}/resume", post(resume))
        .route("/rollouts/{id}/advance", post(advance))
        .route("/rollouts/{id}/sites", get(rollout_sites))
        .route("/rollouts/{id}/announcements", get(announcements))
        .route("/windows", get(list_windows).post(create_window))
        .route("/windows/{id}", crate::routes::delete(delete_window))
        .route("/order-rules", get(list_rules).post(create_rule))
        .route("/order-rules/{id}", crate::routes::delete(delete_rule))
        .route("/sites/{name}/settings", put(site_settings))
}

async fn list_rollouts(State(state): State<AppState>) -> Result<Json<Vec<RolloutView>>> {
    let at = state.at();
    Ok(Json(state.store().list_rollouts(&at).await?))
}

async fn get_rollout(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<RolloutView>> {
    let at = state.at();
    state
        .store()
        .rollout(id, &at)
        .await?
        .map(Json)
        .ok_or_else(|| Error::NotFound(format!("rollout {id} does not exist")))
}

async fn create_rollout(
    State(state): State<AppState>,
    op: Operator,
    Json(body): Json<CreateRollout>,
) -> Result<(StatusCode, Json<RolloutView>)> {
    op.may_override_notice(body.notice_override.as_deref())?;
    let view = state
        .store()
        .create_rollout(&body, &state.at(), &op.actor())
        .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn command(
    state: AppState,
    op: Operator,
    id: i64,
    command: RolloutCommand,
) -> Result<Json<RolloutView>> {
    Ok(Json(
        state
            .store()
            .command_rollout(id, command, &state.at(), &op.actor())
            .await?,
    ))
}

async fn pause(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<Json<RolloutView>> {
    command(state, op, id, RolloutCommand::Pause).await
}

async fn resume(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<Json<RolloutView>> {
    command(state, op, id, RolloutCommand::Resume).await
}

async fn advance(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<Json<RolloutView>> {
    command(state, op, id, RolloutCommand::Advance).await
}

async fn delete_rollout(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<StatusCode> {
    state
        .store()
        .delete_rollout(id, state.now_ms(), &op.actor())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn rollout_sites(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<Vec<RolloutSite>>> {
    let at = state.at();
    let sites = state.store().rollout_sites(id, &at).await?;
    Ok(Json(sites.into_iter().map(|(site, _)| site).collect()))
}

async fn announcements(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<Vec<SiteMessage>>> {
    let sites = state.store().rollout_sites(id, &state.at()).await?;
    Ok(Json(
        sites
            .into_iter()
            .map(|(site, text)| SiteMessage {
                site: site.site,
                text,
            })
            .collect(),
    ))
}

async fn list_windows(State(state): State<AppState>) -> Result<Json<Vec<WindowView>>> {
    Ok(Json(state.store().windows(state.clock().now()).await?))
}

async fn create_window(
    State(state): State<AppState>,
    op: Operator,
    Json(body): Json<CreateWindow>,
) -> Result<(StatusCode, Json<WindowView>)> {
    let view = state
        .store()
        .create_window(&body, state.clock().now(), &op.actor())
        .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn delete_window(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<StatusCode> {
    state
        .store()
        .delete_window(id, state.now_ms(), &op.actor())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_rules(State(state): State<AppState>) -> Result<Json<Vec<OrderRuleView>>> {
    Ok(Json(state.store().order_rules().await?))
}

async fn create_rule(
    State(state): State<AppState>,
    op: Operator,
    Json(body): Json<CreateOrderRule>,
) -> Result<(StatusCode, Json<OrderRuleView>)> {
    let view = state
        .store()
        .create_order_rule(&body, state.now_ms(), &op.actor())
        .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn delete_rule(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<StatusCode> {
    state
        .store()
        .delete_order_rule(id, state.now_ms(), &op.actor())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn site_settings(
    State(state): State<AppState>,
    op: Operator,
    Path(name): Path<String>,
    Json(body): Json<SiteSettings>,
) -> Result<Json<SiteSettings>> {
    state
        .store()
        .set_site_settings(&name, &body, state.now_ms(), &op.actor())
        .await?;
    Ok(Json(state.store().site_settings(&name).await?))
}
