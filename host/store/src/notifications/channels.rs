//! Notification channels: webhooks and chats per site or for the whole fleet,
//! validated, their secrets kept in the store.

use posup_proto::notify::{ChannelKind, ChannelView, CreateChannel, UpdateChannel};
use serde_json::json;

use crate::tokens::check_name;
use crate::{Error, Result, Store};

use super::{CHANNEL_SELECT, ChannelRow};

impl Store {
    /// Adds a channel.
    pub async fn create_channel(
        &self,
        body: &CreateChannel,
        now: i64,
        actor: &str,
    ) -> Result<ChannelView> {
        let settings = Settings {
            name: &body.name,
            kind: body.kind,
            site: body.site.as_deref(),
            url: &body.url,
            chat_id: body.chat_id.as_deref(),
            secret: body.secret.as_deref(),
            enabled: body.enabled,
        };
        settings.check()?;
        let detail = settings.audit(if body.secret.is_some() { "set" } else { "none" });
        let id = with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let taken: Option<i64> = sqlx::query_scalar("SELECT id FROM channels WHERE name = $1")
                .bind(&body.name)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(other) = taken {
                return Err(Error::Conflict(format!(
                    "a channel named {} already exists (channel {other}): choose another name",
                    body.name
                )));
            }
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO channels (name, kind, site, url, chat_id, secret, enabled, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            )
            .bind(&body.name)
            .bind(body.kind.as_str())
            .bind(body.site.clone())
            .bind(&body.url)
            .bind(body.chat_id.clone())
            .bind(body.secret.clone())
            .bind(body.enabled)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            audit!(&mut *tx, now, actor, "channel.create", "channel", id, detail);
            tx.commit().await?;
            id
        });
        self.channel(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("channel {id} vanished while being created")))
    }

    pub(super) async fn channel_row(&self, id: i64) -> Result<Option<ChannelRow>> {
        Ok(with_read!(self, pool => {
            sqlx::query_as(&format!("{CHANNEL_SELECT} WHERE id = $1"))
                .bind(id)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// A channel, without its secret.
    pub async fn channel(&self, id: i64) -> Result<Option<ChannelView>> {
        self.channel_row(id)
            .await?
            .map(ChannelRow::view)
            .transpose()
    }

    /// Every channel, by name.
    pub async fn list_channels(&self) -> Result<Vec<ChannelView>> {
        let rows: Vec<ChannelRow> = with_read!(self, pool => {
            sqlx::query_as(&format!("{CHANNEL_SELECT} ORDER BY name, id")).fetch_all(pool).await?
        });
        rows.into_iter().map(ChannelRow::view).collect()
    }

    /// Replaces a channel's settings; the stored secret stays unless a new one is
    /// given or `clear_secret` is set. Queued messages keep their channel.
    pub async fn update_channel(
        &self,
        id: i64,
        body: &UpdateChannel,
        now: i64,
        actor: &str,
    ) -> Result<ChannelView> {
        let row = self
            .channel_row(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("channel {id} does not exist")))?;
        if body.clear_secret && body.secret.is_some() {
            return Err(Error::Invalid(format!(
                "channel {}: give a new secret or clear_secret, not both",
                row.name
            )));
        }
        let (secret, change) = match (&body.secret, body.clear_secret) {
            (Some(s), _) => (Some(s.as_str()), "changed"),
            (None, true) => (
                None,
                if row.secret.is_some() {
                    "removed"
                } else {
                    "none"
                },
            ),
            (None, false) => (
                row.secret.as_deref(),
                if row.secret.is_some() { "kept" } else { "none" },
            ),
        };
        let settings = Settings {
            name: &body.name,
            kind: body.kind,
            site: body.site.as_deref(),
            url: &body.url,
            chat_id: body.chat_id.as_deref(),
            secret,
            enabled: body.enabled,
        };
        settings.check()?;
        let detail = settings.audit(change);
        let secret = secret.map(str::to_owned);
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let taken: Option<i64> = sqlx::query_scalar("SELECT id FROM channels WHERE name = $1 AND id <> $2")
                .bind(&body.name)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(other) = taken {
                return Err(Error::Conflict(format!(
                    "a channel named {} already exists (channel {other}): choose another name",
                    body.name
                )));
            }
            let updated = sqlx::query(
                "UPDATE channels SET name = $2, kind = $3, site = $4, url = $5, chat_id = $6, secret = $7, enabled = $8 WHERE id = $1",
            )
            .bind(id)
            .bind(&body.name)
            .bind(body.kind.as_str())
            .bind(body.site.clone())
            .bind(&body.url)
            .bind(body.chat_id.clone())
            .bind(secret)
            .bind(body.enabled)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated == 0 {
                return Err(Error::NotFound(format!("channel {id} does not exist")));
            }
            audit!(&mut *tx, now, actor, "channel.update", "channel", id, detail);
            tx.commit().await?;
        });
        self.channel(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("channel {id} does not exist")))
    }

    /// Deletes a channel with its queued messages and their delivery log.
    pub async fn delete_channel(&self, id: i64, now: i64, actor: &str) -> Result<()> {
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let name: Option<String> = sqlx::query_scalar("SELECT name FROM channels WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(name) = name else {
                return Err(Error::NotFound(format!("channel {id} does not exist")));
            };
            sqlx::query("DELETE FROM channels WHERE id = $1").bind(id).execute(&mut *tx).await?;
            audit!(&mut *tx, now, actor, "channel.delete", "channel", id, json!({"name": name}));
            tx.commit().await?;
            Ok(())
        })
    }
}

/// A channel's settings after validation.
struct Settings<'a> {
    name: &'a str,
    kind: ChannelKind,
    site: Option<&'a str>,
    url: &'a str,
    chat_id: Option<&'a str>,
    secret: Option<&'a str>,
    enabled: bool,
}

impl Settings<'_> {
    fn check(&self) -> Result<()> {
        check_name("channel", self.name)?;
        if let Some(site) = self.site {
            check_name("site", site)?;
        }
        check_url(self.name, self.url)?;
        let name = self.name;
        if let Some(chat) = self.chat_id
            && (chat.is_empty()
                || chat.len() > 200
                || chat.chars().any(|c| c.is_control() || c.is_whitespace()))
        {
            return Err(Error::Invalid(format!(
                "channel {name}: chat_id `{chat}` is invalid: give 1 to 200 characters without spaces"
            )));
        }
        if let Some(secret) = self.secret
            && (secret.is_empty()
                || secret.len() > 1000
                || secret.chars().any(|c| c.is_control() || c.is_whitespace()))
        {
            // The secret itself is not repeated in the message.
            return Err(Error::Invalid(format!(
                "channel {name}: the secret is invalid: give 1 to 1000 characters without spaces, or leave it out"
            )));
        }
        match self.kind {
            ChannelKind::Webhook => {
                if self.chat_id.is_some() {
                    return Err(Error::Invalid(format!(
                        "channel {name}: webhooks have no chat_id: leave it out (the URL says where messages go)"
                    )));
                }
            }
            ChannelKind::Telegram => {
                if self.chat_id.is_none() {
                    return Err(Error::Invalid(format!(
                        "channel {name}: a Telegram channel needs the chat_id of the chat to send to"
                    )));
                }
                match self.secret {
                    None => {
                        return Err(Error::Invalid(format!(
                            "channel {name}: a Telegram channel needs the bot token as its secret"
                        )));
                    }
                    // The token becomes a path segment of every request.
                    Some(s) if s.contains(['/', '?', '#', '%']) => {
                        return Err(Error::Invalid(format!(
                            "channel {name}: the bot token may not contain `/`, `?`, `#` or `%`: give the token exactly as BotFather issued it"
                        )));
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    /// What the audit log keeps: everything but the secret.
    fn audit(&self, secret: &str) -> serde_json::Value {
        json!({"name": self.name, "kind": self.kind, "site": self.site, "url": crate::redact(self.url),
               "chat_id": self.chat_id, "enabled": self.enabled, "secret": secret})
    }
}

/// Accepts `http://` and `https://` URLs with a host, and nothing a request line
/// could not carry.
fn check_url(channel: &str, url: &str) -> Result<()> {
    let invalid = |why: &str| {
        Error::Invalid(format!(
            "channel {channel}: URL `{}` is invalid: {why}",
            crate::redact(url)
        ))
    };
    if url.len() > 2000 {
        return Err(invalid("give at most 2000 characters"));
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid("it contains spaces or control characters"));
    }
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return Err(invalid("give an http:// or https:// address"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        match v6.split_once(']') {
            Some((addr, after)) => (addr, after.strip_prefix(':')),
            None => return Err(invalid("the IPv6 address lacks its `]`")),
        }
    } else {
        match host_port.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err(invalid("it names no host"));
    }
    if let Some(p) = port
        && p.parse::<u16>().is_err()
    {
        return Err(invalid("the port is not a number from 0 to 65535"));
    }
    Ok(())
}
