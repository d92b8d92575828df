//! The operator API of notification channels and the delivery log:
//! `/api/v1/channels` and `/api/v1/notifications`.
//!
//! Everyone who reads may see channels (without secrets) and the delivery log;
//! only administrators change channels, since they hold bot tokens and webhook
//! credentials.

use crate::routes::{Routes, get, post};
use axum::extract::State;
use axum::http::StatusCode;
use posup_proto::Page;
use posup_proto::notify::{
    ChannelView, CreateChannel, NotificationDetail, NotificationQuery, NotificationView,
    UpdateChannel,
};

use crate::auth::Operator;
use crate::error::{Error, Result};
use crate::extract::{Json, Path, Query};
use crate::state::AppState;

pub fn routes() -> Routes {
    Routes::new()
        .route("/channels", get(list_channels).post(create_channel))
        .route(
            "/channels/{id}",
            get(get_channel).put(update_channel).delete(delete_channel),
        )
        .route("/channels/{id}/test", post(test_channel))
        .route("/notifications", get(list_notifications))
        .route("/notifications/{id}", get(get_notification))
}

async fn list_channels(State(state): State<AppState>) -> Result<Json<Vec<ChannelView>>> {
    Ok(Json(state.store().list_channels().await?))
}

async fn create_channel(
    State(state): State<AppState>,
    op: Operator,
    Json(body): Json<CreateChannel>,
) -> Result<(StatusCode, Json<ChannelView>)> {
    let view = state
        .store()
        .create_channel(&body, state.now_ms(), &op.actor())
        .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn get_channel(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<ChannelView>> {
    state
        .store()
        .channel(id)
        .await?
        .map(Json)
        .ok_or_else(|| Error::NotFound(format!("channel {id} does not exist")))
}

async fn update_channel(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
    Json(body): Json<UpdateChannel>,
) -> Result<Json<ChannelView>> {
    Ok(Json(
        state
            .store()
            .update_channel(id, &body, state.now_ms(), &op.actor())
            .await?,
    ))
}

async fn delete_channel(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<StatusCode> {
    state
        .store()
        .delete_channel(id, state.now_ms(), &op.actor())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Queues a test message to this channel only; the background loop sends it
/// within a second or so, and the delivery log shows how it went.
async fn test_channel(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<(StatusCode, Json<NotificationView>)> {
    let queued = state
        .store()
        .enqueue_test(id, state.now_ms(), &op.actor())
        .await?;
    Ok((StatusCode::ACCEPTED, Json(queued)))
}

async fn list_notifications(
    State(state): State<AppState>,
    Query(q): Query<NotificationQuery>,
) -> Result<Json<Page<NotificationView>>> {
    Ok(Json(state.store().notifications(&q).await?))
}

async fn get_notification(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<NotificationDetail>> {
    state
        .store()
        .notification(id)
        .await?
        .map(Json)
        .ok_or_else(|| Error::NotFound(format!("notification {id} does not exist")))
}
