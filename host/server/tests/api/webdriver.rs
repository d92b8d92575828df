//! A small WebDriver client for the console's browser tests: Debian's `chromium`
//! driven by `chromedriver` (W3C WebDriver over HTTP, JSON in and out). Only what
//! the tests use: open a page, find, click, type, read text, run a script, take a
//! screenshot and read a cookie.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The key under which WebDriver returns an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    /// The browser's own profile, removed with it.
    profile: tempfile::TempDir,
    http: reqwest::Client,
    session: String,
}

pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

/// The first of `candidates` that exists. A machine without Chromium gets it
/// from Debian's packages once per test run (the suite runs as root), so the
/// README's test command needs no other step.
fn program(name: &str, candidates: &[&str]) -> String {
    let find = || {
        candidates
            .iter()
            .find(|p| std::path::Path::new(p).exists())
            .map(|p| p.to_string())
    };
    if let Some(found) = find() {
        return found;
    }
    static INSTALLED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        let run = |args: &[&str]| {
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status()
                .map_err(|e| format!("running apt-get: {e}"))
                .and_then(|s| {
                    s.success()
                        .then_some(())
                        .ok_or_else(|| format!("apt-get {}: {s}", args.join(" ")))
                })
        };
        run(&["update", "-qq"])?;
        run(&["install", "-y", "-qq", "chromium", "chromium-driver"])
    });
    if let Err(e) = installed {
        panic!(
            "the console's browser tests need {name}, and installing it failed ({e}): `apt-get install chromium chromium-driver` as root"
        );
    }
    find().unwrap_or_else(|| panic!("{name} is still missing after installing chromium"))
}

impl Browser {
    /// Starts chromedriver and a headless Chromium window of 1280×800.
    pub async fn start() -> Browser {
        let chromium = program(
            "chromium",
            &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
        );
        let chromedriver = program("chromedriver", &["/usr/bin/chromedriver"]);
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--window-size=1280,800",
                        "--lang=en-US",
                        format!("--user-data-dir={}", profile.path().display()),
                    ]
                }
            }}}))
            .send()
            .await
            .expect("asking chromedriver for a session")
            .json()
            .await
            .unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {created}"))
            .to_owned();
        Browser {
            driver,
            profile,
            http,
            session: format!("{base}/session/{session}"),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
            .json()
            .await
            .unwrap();
        if let Some(error) = answer["value"].get("error") {
            panic!("{method} {path}: {error}: {}", answer["value"]["message"]);
        }
        answer["value"].clone()
    }

    pub async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    pub async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The whole page's text as a person sees it.
    pub async fn text(&self) -> String {
        self.find("body").await.text().await
    }

    /// The first element `css` selects, waiting up to 10 s for it to appear.
    pub async fn find(&self, css: &str) -> Element<'_> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .http
                .post(format!("{}/elements", self.session))
                .json(&json!({"using": "css selector", "value": css}))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap();
            if let Some(first) = found["value"].as_array().and_then(|a| a.first()) {
                return Element {
                    browser: self,
                    id: first[ELEMENT].as_str().unwrap().to_owned(),
                };
            }
            if Instant::now() >= deadline {
                let page = self
                    .script(
                        "return document.body ? document.body.innerText : ''",
                        json!([]),
                    )
                    .await;
                panic!("no element `{css}` on the page, which reads: {page}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How many elements `css` selects now.
    pub async fn count(&self, css: &str) -> usize {
        self.call(
            reqwest::Method::POST,
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .await
        .as_array()
        .map_or(0, Vec::len)
    }

    /// The text of the first element `css` selects, read in one step, so a part
    /// of the page that htmx replaces meanwhile cannot leave a stale reference.
    pub async fn text_of(&self, css: &str) -> String {
        self.find(css).await;
        self.script(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
            json!([css]),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Waits up to `secs` for the text of `css` to satisfy `ok`; its last text.
    pub async fn wait_text(&self, css: &str, secs: u64, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let text = self.text_of(css).await;
            if ok(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "`{css}` still reads {text:?} after {secs} s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn script(&self, script: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// The text of the dialog the page opened (`confirm`), answered yes or no.
    pub async fn answer_dialog(&self, yes: bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self
                .http
                .get(format!("{}/alert/text", self.session))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap();
            if let Some(text) = text["value"].as_str() {
                let verb = if yes { "accept" } else { "dismiss" };
                self.call(
                    reqwest::Method::POST,
                    &format!("/alert/{verb}"),
                    Some(json!({})),
                )
                .await;
                return text.to_owned();
            }
            assert!(Instant::now() < deadline, "no dialog opened");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Resizes the window (a tablet held upright: 800×1280).
    pub async fn resize(&self, width: u32, height: u32) {
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    /// The value of a cookie the page holds.
    pub async fn cookie(&self, name: &str) -> String {
        self.call(reqwest::Method::GET, &format!("/cookie/{name}"), None)
            .await["value"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Saves a PNG of the window as `target/console-screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) {
        use base64::Engine;
        let data = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap())
            .unwrap();
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .unwrap()
            .join("console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    pub async fn close(mut self) {
        let _ = self.http.delete(&self.session).send().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(self.profile.path());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A failed test does not reach `close`: the driver (and with it the
        // browser) goes anyway.
        let _ = self.driver.kill();
    }
}

impl Element<'_> {
    fn path(&self, tail: &str) -> String {
        format!("/element/{}{tail}", self.id)
    }

    pub async fn click(&self) {
        self.browser
            .call(reqwest::Method::POST, &self.path("/click"), Some(json!({})))
            .await;
    }

    pub async fn type_text(&self, text: &str) {
        self.browser
            .call(
                reqwest::Method::POST,
                &self.path("/value"),
                Some(json!({ "text": text })),
            )
            .await;
    }

    pub async fn text(&self) -> String {
        self.browser
            .call(reqwest::Method::GET, &self.path("/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}
