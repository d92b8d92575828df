//! The agent API client: enroll, poll, feedback and blob downloads, over HTTP.

use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::Duration;

use posup_proto::AGENT_PREFIX;
use posup_proto::agent::{
    EnrollRequest, EnrollResponse, Feedback, FeedbackAck, FeedbackBatch, FeedbackBatchAck,
    PollRequest, PollResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// How long one API call may take. Downloads have no overall limit: they stop when
/// no answer, or no bytes, arrive for [`STALL_TIMEOUT`].
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A download that receives no answer, or no bytes, for this long is broken off
/// and resumed later.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A call to the server that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer: the server is down or the network is cut. Try again later.
    #[error("server {url} cannot be reached: {message}")]
    Unreachable { url: String, message: String },
    /// The device token was refused: enroll again.
    #[error("server {url} refused the device token (401); the agent enrolls again")]
    Unauthorized { url: String },
    /// The server answered with an error.
    #[error("server {url} answered {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    /// The answer was not what the protocol says.
    #[error("server {url} sent an answer the agent cannot read: {message}")]
    Decode { url: String, message: String },
}

impl ClientError {
    /// Whether trying the same call again later may succeed: the server was
    /// unreachable, overloaded or failing, as opposed to refusing the request.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Status { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            ClientError::Unauthorized { .. } | ClientError::Decode { .. } => false,
        }
    }
}

/// A client of one server's agent API. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: RwLock<Option<String>>,
    /// How long a download may wait for its answer, or for its next bytes.
    stall: Duration,
}

/// How the agent reaches its server.
#[derive(Debug, Clone, Default)]
pub struct Transport {
    /// Accept `http://`: tests and demos only. Otherwise every request, and every
    /// redirect, must be HTTPS.
    pub insecure_http: bool,
    /// PEM certificates of the only authorities whose server certificates are
    /// accepted (the fleet's own CA). Without it, the public web roots.
    pub ca_file: Option<PathBuf>,
}

impl Transport {
    /// Plain HTTP allowed: for tests and local tools.
    pub fn insecure() -> Self {
        Transport {
            insecure_http: true,
            ca_file: None,
        }
    }
}

/// Largest CA file read: a bundle of a few certificates is a few KiB.
const MAX_CA_FILE: u64 = 1 << 20;

fn pinned_authorities(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    use std::io::Read;
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CA_FILE + 1).read_to_end(&mut pem))
        .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
    if pem.len() as u64 > MAX_CA_FILE {
        return Err(format!(
            "ca_file {}: over 1 MiB, which is no certificate bundle",
            path.display()
        ));
    }
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("ca_file {}: not PEM certificates ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "ca_file {}: holds no certificate: give the PEM of the fleet's certificate authority",
            path.display()
        ));
    }
    Ok(certs)
}

impl Client {
    /// A client of the server at `base` (e.g. `https://posup.example.net`).
    pub fn new(base: &str, transport: &Transport) -> Result<Self, ClientError> {
        Self::build(base, transport, reqwest::Client::builder())
    }

    /// A client for many simulated devices, keeping at most `connections` idle
    /// connections to the server for them to share.
    pub fn pooled(
        base: &str,
        transport: &Transport,
        connections: usize,
    ) -> Result<Self, ClientError> {
        let builder = reqwest::Client::builder().pool_max_idle_per_host(connections);
        Self::build(base, transport, builder)
    }

    fn build(
        base: &str,
        transport: &Transport,
        builder: reqwest::ClientBuilder,
    ) -> Result<Self, ClientError> {
        let failed = |message: String| ClientError::Unreachable {
            url: base.to_owned(),
            message,
        };
        let mut builder = builder
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("posup-agent/", env!("CARGO_PKG_VERSION")))
            .https_only(!transport.insecure_http);
        if let Some(path) = &transport.ca_file {
            builder = builder.tls_built_in_root_certs(false);
            for cert in pinned_authorities(path).map_err(failed)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| failed(format!("cannot set up HTTP: {e}")))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: RwLock::new(None),
            stall: STALL_TIMEOUT,
        })
    }

    /// This client with downloads broken off after `stall` without an answer
    /// or bytes, in place of [`STALL_TIMEOUT`] (tests).
    pub fn with_stall_timeout(mut self, stall: Duration) -> Self {
        self.stall = stall;
        self
    }

    /// How long a download may go without an answer or bytes.
    pub fn stall_timeout(&self) -> Duration {
        self.stall
    }

    /// The HTTP client, with this agent's TLS settings.
    pub fn http(&self) -> reqwest::Client {
        self.http.clone()
    }

    /// A client of the same server sharing this one's connections, with a token of
    /// its own: for many simulated devices in one process.
    pub fn sharing(&self) -> Self {
        Self {
            http: self.http.clone(),
            base: self.base.clone(),
            token: RwLock::new(None),
            stall: self.stall,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn set_token(&self, token: Option<String>) {
        *self.token.write().expect("token lock") = token;
    }

    pub fn has_token(&self) -> bool {
        self.token.read().expect("token lock").is_some()
    }

    /// The absolute URL of a path relative to the server's base.
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}/{}", self.base, path.trim_start_matches('/'))
        }
    }

    pub async fn enroll(&self, req: &EnrollRequest) -> Result<EnrollResponse, ClientError> {
        self.post(&format!("{AGENT_PREFIX}/enroll"), req, false)
            .await
    }

    pub async fn poll(&self, req: &PollRequest) -> Result<PollResponse, ClientError> {
        self.post(&format!("{AGENT_PREFIX}/poll"), req, true).await
    }

    pub async fn feedback(&self, f: &Feedback) -> Result<FeedbackAck, ClientError> {
        self.post(&format!("{AGENT_PREFIX}/feedback"), f, true)
            .await
    }

    /// Sends reports in one request; the answer has one result per report, in order.
    pub async fn feedback_batch(
        &self,
        batch: &FeedbackBatch,
    ) -> Result<FeedbackBatchAck, ClientError> {
        let ack: FeedbackBatchAck = self
            .post(&format!("{AGENT_PREFIX}/feedback/batch"), batch, true)
            .await?;
        if ack.results.len() != batch.reports.len() {
            return Err(ClientError::Decode {
                url: self.url(&format!("{AGENT_PREFIX}/feedback/batch")),
                message: format!(
                    "{} results for {} reports",
                    ack.results.len(),
                    batch.reports.len()
                ),
            });
        }
        Ok(ack)
    }

    /// Starts a download of `path` from byte `offset`. With `if_range` (the blob's
    /// ETag) the server sends the rest only while the blob is unchanged, and the
    /// whole blob otherwise; the caller tells which by the status (206 or 200).
    pub async fn get_blob(
        &self,
        path: &str,
        offset: u64,
        if_range: Option<&str>,
    ) -> Result<reqwest::Response, ClientError> {
        let url = self.url(path);
        let mut req = self.http.get(&url);
        if let Some(token) = self.token.read().expect("token lock").as_deref() {
            req = req.bearer_auth(token);
        }
        if offset > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
            if let Some(tag) = if_range {
                req = req.header(reqwest::header::IF_RANGE, format!("\"{tag}\""));
            }
        }
        // No overall limit (a package may take hours on a slow line), but an
        // answer that never comes is broken off like bytes that stop coming.
        let resp = match tokio::time::timeout(self.stall, req.send()).await {
            Ok(sent) => sent.map_err(|e| unreachable(&url, &e))?,
            Err(_) => {
                return Err(ClientError::Unreachable {
                    url,
                    message: format!("no answer for {} s", self.stall.as_secs_f64()),
                });
            }
        };
        let status = resp.status().as_u16();
        if status == 200 || status == 206 || status == 416 {
            return Ok(resp);
        }
        Err(status_error(&url, resp).await)
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        auth: bool,
    ) -> Result<R, ClientError> {
        let url = self.url(path);
        let mut req = self.http.post(&url).timeout(CALL_TIMEOUT).json(body);
        if auth && let Some(token) = self.token.read().expect("token lock").as_deref() {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.map_err(|e| unreachable(&url, &e))?;
        if !resp.status().is_success() {
            return Err(status_error(&url, resp).await);
        }
        let bytes = resp.bytes().await.map_err(|e| unreachable(&url, &e))?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url: url.clone(),
            message: e.to_string(),
        })
    }
}

fn unreachable(url: &str, e: &reqwest::Error) -> ClientError {
    // The innermost cause says what really happened (connection refused, reset).
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message = s.to_string();
        source = s.source();
    }
    ClientError::Unreachable {
        url: url.to_owned(),
        message,
    }
}

async fn status_error(url: &str, resp: reqwest::Response) -> ClientError {
    let status = resp.status().as_u16();
    if status == 401 {
        return ClientError::Unauthorized {
            url: url.to_owned(),
        };
    }
    let text = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<posup_proto::ErrorBody>(&text)
        .map(|b| b.error)
        .unwrap_or_else(|_| text.chars().take(500).collect());
    ClientError::Status {
        url: url.to_owned(),
        status,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that takes the connection and never answers must not hold a
    /// terminal's download for ever: the agent runs unattended.
    #[tokio::test]
    async fn a_download_without_an_answer_is_broken_off() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (conn, _) = listener.accept().await.unwrap();
                held.push(conn);
            }
        });
        let transport = Transport {
            insecure_http: true,
            ca_file: None,
        };
        let client = Client::new(&format!("http://{addr}"), &transport)
            .unwrap()
            .with_stall_timeout(Duration::from_millis(300));
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            client.get_blob("/api/agent/v1/blobs/x", 0, None),
        )
        .await
        .expect("the download was not broken off");
        match answer {
            Err(e @ ClientError::Unreachable { .. }) => {
                assert!(e.is_transient());
                assert!(e.to_string().contains("no answer for 0.3 s"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        silent.abort();
    }
}
