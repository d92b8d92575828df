//! The operator console: its rules over HTTP on both backends (logins, lock-out,
//! CSRF, roles), and its jobs in a real Chromium against a real server.

use super::webdriver::Browser;
use super::*;
use posup_server::console::session::hash_password;
use posup_store::NewAccount;

const PASSWORD: &str = "night shift 42";

async fn account(state: &AppState, name: &str, role: Role, language: Language) {
    state
        .store()
        .create_account(
            &NewAccount {
                name,
                role,
                password: &hash_password(PASSWORD).unwrap(),
                language,
                time_zone: "Europe/Moscow",
            },
            0,
            "test",
        )
        .await
        .unwrap();
}

/// The login form's token on a login page.
fn login_token(page: &str) -> String {
    page.split("name=\"token\" value=\"")
        .nth(1)
        .and_then(|v| v.split('"').next())
        .expect("a login form with its token")
        .to_owned()
}

fn form(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap()
}

impl Env {
    async fn post_form(&self, uri: &str, cookie: Option<&str>, body: String) -> Answer {
        let mut b = Request::builder()
            .method("POST")
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(c) = cookie {
            b = b.header(header::COOKIE, format!("posup_session={c}"));
        }
        self.send(b.body(Body::from(body)).unwrap()).await
    }

    async fn get_page(&self, uri: &str, cookie: &str) -> Answer {
        self.send(
            Request::builder()
                .uri(uri)
                .header(header::COOKIE, format!("posup_session={cookie}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    /// Posts the login form as a browser does: the form's token from the page,
    /// and the cookie the page set.
    async fn login_attempt(&self, name: &str, password: &str) -> Answer {
        self.login_attempt_via(None, name, password).await
    }

    /// The login form posted from the client address `from`, as the server
    /// sees it when serving real connections.
    async fn login_attempt_from(&self, from: &str, name: &str, password: &str) -> Answer {
        self.login_attempt_via(Some(from), name, password).await
    }

    async fn login_attempt_via(&self, from: Option<&str>, name: &str, password: &str) -> Answer {
        let page = self.call("GET", "/login", None, None).await;
        let cookie = page.headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let token = login_token(&page.text());
        let mut request = Request::builder()
            .method("POST")
            .uri("/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::COOKIE, cookie)
            .body(Body::from(form(&[
                ("name", name),
                ("password", password),
                ("token", &token),
            ])))
            .unwrap();
        if let Some(from) = from {
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(posup_server::PeerAddr(
                    from.parse().unwrap(),
                )));
        }
        self.send(request).await
    }

    /// Logs in: the session cookie and the page's CSRF token.
    async fn log_in(&self, name: &str) -> (String, String) {
        let a = self.login_attempt(name, PASSWORD).await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());
        let set = a.headers[header::SET_COOKIE].to_str().unwrap();
        let cookie = set
            .strip_prefix("posup_session=")
            .and_then(|v| v.split(';').next())
            .unwrap()
            .to_owned();
        let page = self.get_page("/tasks", &cookie).await.text();
        let csrf = page
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|v| v.split('"').next())
            .expect("a form with the CSRF token")
            .to_owned();
        (cookie, csrf)
    }
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Guessing across many account names from one address is slowed down too:
/// after [`posup_server::console::throttle::MAX_FAILURES`] failed logins in a
/// quarter of an hour, that address is refused before any password is checked,
/// while other addresses log in as before.
#[tokio::test]
async fn console_logins_from_an_address_that_keeps_failing_are_refused() {
    each_backend(|store| async move {
        let (e, state) = env_with_state(store).await;
        account(&state, "anna", Role::Admin, Language::En).await;
        let guesser = "203.0.113.7:40000";
        for i in 0..posup_server::console::throttle::MAX_FAILURES {
            let a = e
                .login_attempt_from(guesser, &format!("guess{i}"), "wrong")
                .await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "attempt {i}");
        }
        let a = e.login_attempt_from(guesser, "anna", PASSWORD).await;
        assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.text());
        assert!(
            a.text()
                .contains("Too many failed logins from this address"),
            "{}",
            a.text()
        );
        let a = e
            .login_attempt_from("198.51.100.20:40000", "anna", PASSWORD)
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());
        // A quarter of an hour later the address may try again.
        e.clock.advance(std::time::Duration::from_secs(16 * 60));
        let a = e.login_attempt_from(guesser, "anna", PASSWORD).await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());
    })
    .await;
}

#[tokio::test]
async fn console_logins_lock_out_and_every_form_needs_its_token_and_role() {
    each_backend(|store| async move {
        let (e, state) = env_with_state(store).await;
        account(&state, "anna", Role::Admin, Language::En).await;
        account(&state, "vika", Role::Viewer, Language::Ru).await;
        let f = fleet(&e, 2).await;

        // Without a session every page leads to the login.
        let a = e.call("GET", "/devices", None, None).await;
        assert_eq!(a.status, StatusCode::SEE_OTHER);
        assert_eq!(a.headers[header::LOCATION], "/login");
        let login = e.call("GET", "/login", None, None).await;
        assert!(login.text().contains("name=\"password\""));

        // A wrong password says so without telling whether the name exists.
        let wrong = e.login_attempt("anna", "x").await;
        let nobody = e.login_attempt("nobody", "x").await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        assert!(
            wrong.text().contains("Wrong name or password."),
            "{}",
            wrong.text()
        );
        let without_token = |a: &Answer| a.text().replace(&login_token(&a.text()), "");
        assert_eq!(
            without_token(&nobody).replace("nobody", "anna"),
            without_token(&wrong),
            "an unknown name answers as a wrong password does"
        );

        // A login posted from another page (no token, or no cookie) is refused
        // and opens no session.
        let forged = e
            .post_form(
                "/login",
                None,
                form(&[("name", "anna"), ("password", PASSWORD)]),
            )
            .await;
        assert_eq!(forged.status, StatusCode::FORBIDDEN);
        assert!(
            forged.text().contains("The login form was out of date"),
            "{}",
            forged.text()
        );
        assert!(
            !forged.headers[header::SET_COOKIE]
                .to_str()
                .unwrap()
                .starts_with("posup_session="),
            "no session for a forged login"
        );

        // The cookie is HttpOnly and SameSite=Strict.
        let ok = e.login_attempt("anna", PASSWORD).await;
        let set = ok.headers[header::SET_COOKIE].to_str().unwrap();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );

        let (admin, admin_csrf) = e.log_in("anna").await;
        let (viewer, viewer_csrf) = e.log_in("vika").await;
        let group = e.ok("GET", "/api/v1/groups", ADMIN, None).await[0]["id"]
            .as_i64()
            .unwrap();
        let task_form = |csrf: &str| {
            form(&[
                ("csrf", csrf),
                ("kind", "download"),
                ("group", &group.to_string()),
                ("package", &f.package.id.to_string()),
                ("start", "now"),
            ])
        };

        // A form without this session's token is refused and changes nothing.
        for csrf in ["", "forged", viewer_csrf.as_str()] {
            let a = e.post_form("/tasks", Some(&admin), task_form(csrf)).await;
            assert_eq!(a.status, StatusCode::FORBIDDEN, "token {csrf:?}");
            assert!(
                a.text().contains("This form is out of date"),
                "{}",
                a.text()
            );
        }
        // An address naming nothing that exists is a page that says so in words,
        // not a parser's message.
        for path in [
            "/groups/abc",
            "/tasks/x/devices/1",
            "/versions/1.5",
            "/notifications/-",
        ] {
            let a = e.get_page(path, &admin).await;
            assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
            assert!(
                a.text().contains("There is no such page"),
                "{path}: {}",
                a.text()
            );
            assert!(!a.text().contains("Cannot parse"), "{path}");
        }

        // Pages allow no inline script, no framing, and are never stored.
        let page = e.get_page("/tasks", &admin).await;
        let csp = page.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(
            csp.contains("script-src 'self';") && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
        assert_eq!(page.headers[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(page.headers[header::CACHE_CONTROL], "no-store");
        let text = page.text();
        assert!(
            !text.contains("<script>")
                && !["onsubmit=", "onchange=", "onclick=", "javascript:"]
                    .iter()
                    .any(|h| text.contains(h)),
            "no inline script"
        );
        let asset = e.call("GET", "/assets/console-1.js", None, None).await;
        assert!(
            asset.headers[header::CACHE_CONTROL]
                .to_str()
                .unwrap()
                .contains("immutable")
        );

        // A viewer sees the tasks but no action, and a forged post is refused.
        let page = e.get_page("/tasks", &viewer).await.text();
        assert!(
            page.contains("Задачи") && !page.contains("id=\"new-task\""),
            "{page}"
        );
        let a = e
            .post_form("/tasks", Some(&viewer), task_form(&viewer_csrf))
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        assert!(
            a.text().contains("Your role does not allow this"),
            "{}",
            a.text()
        );
        assert_eq!(e.ok("GET", "/api/v1/tasks", ADMIN, None).await, json!([]));

        // The administrator's form creates the task; the audit log names the account,
        // and a terminal the server saw idle a moment ago is handed it at once.
        let idle = poll(
            &e,
            &f.devices[0].1,
            PollRequest {
                status: status(),
                ..Default::default()
            },
        )
        .await;
        assert!(idle.actions.is_empty());
        let a = e
            .post_form("/tasks", Some(&admin), task_form(&admin_csrf))
            .await;
        let busy = poll(
            &e,
            &f.devices[0].1,
            PollRequest {
                status: status(),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(
            busy.actions.len(),
            1,
            "the console's change reached the poll caches"
        );
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());
        let task = a.headers[header::LOCATION].to_str().unwrap().to_owned();
        let tasks = e.ok("GET", "/api/v1/tasks", ADMIN, None).await;
        assert_eq!(tasks.as_array().unwrap().len(), 1);
        let audit = e.ok("GET", "/api/v1/audit", ADMIN, None).await.to_string();
        assert!(audit.contains("account anna"), "{audit}");
        let viewer_page = e.get_page(&task, &viewer).await.text();
        assert!(!viewer_page.contains("id=\"pause\""), "{viewer_page}");
        let a = e
            .post_form(
                &format!("{task}/pause"),
                Some(&viewer),
                form(&[("csrf", &viewer_csrf)]),
            )
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);

        // A form's mistakes come back in words, not as a parser's text.
        let a = e
            .post_form(
                "/tasks",
                Some(&admin),
                form(&[
                    ("csrf", &admin_csrf),
                    ("kind", "download"),
                    ("group", "x"),
                    ("start", "at"),
                    ("start_at", "soon"),
                ]),
            )
            .await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
        let text = a.text();
        assert!(
            text.contains("Choose the group of devices the task is for."),
            "{text}"
        );
        assert!(
            text.contains("Choose the package the task installs."),
            "{text}"
        );
        assert!(
            text.contains("Give the start as a date and time (Europe/Moscow)"),
            "{text}"
        );
        let a = e.get_page("/devices?page=two&number=x", &admin).await;
        assert!(
            a.text().contains("No. must be a whole number"),
            "{}",
            a.text()
        );
        assert!(a.text().contains("2 devices"), "{}", a.text());

        // Logging out ends the session on the server, not only in the browser.
        let a = e
            .post_form("/logout", Some(&admin), form(&[("csrf", &admin_csrf)]))
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER);
        let a = e.get_page("/devices", &admin).await;
        assert_eq!(a.headers[header::LOCATION], "/login");

        // Five wrong passwords lock the account; the right one is refused then.
        for _ in 0..5 {
            e.login_attempt("vika", "x").await;
        }
        let a = e.login_attempt("vika", PASSWORD).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert!(a.text().contains("locked until"), "{}", a.text());
        e.advance(15 * 60 + 1);
        e.log_in("vika").await;
    })
    .await;
}

/// A server on a real port for the browser, over the environment's state.
async fn serve(state: AppState) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(posup_server::run_with_state(state, listener, async {
        let _ = stopped.await;
    }));
    (base, stop)
}

async fn log_in_browser(browser: &Browser, base: &str, name: &str) {
    browser.open(&format!("{base}/login")).await;
    browser.find("#name").await.type_text(name).await;
    browser.find("#password").await.type_text(PASSWORD).await;
    browser.find("#enter").await.click().await;
    browser.find("#who").await;
}

#[tokio::test]
async fn console_in_chromium_devices_language_a_forced_update_at_a_set_time_and_live_progress() {
    let Some(db) = posup_store::testing::TestDb::of(posup_store::Backend::Sqlite).await else {
        panic!("SQLite is always there");
    };
    let (e, state) = env_with_state(db.store.clone()).await;
    account(&state, "anna", Role::Admin, Language::En).await;
    account(&state, "vika", Role::Viewer, Language::En).await;
    let f = fleet(&e, 3).await;
    // The terminals report what they run.
    for (n, (_, token)) in f.devices.iter().enumerate() {
        report_inventory(
            &e,
            token,
            posup_proto::Inventory {
                product: "Test POS".into(),
                version: format!("1.{n}"),
                state: "sale".into(),
                ready: true,
                ..Default::default()
            },
        )
        .await;
    }
    let (base, stop) = serve(state.clone()).await;
    let browser = Browser::start().await;

    // Log in; the device list shows every terminal with what it reported.
    log_in_browser(&browser, &base, "anna").await;
    assert!(browser.url().await.ends_with("/devices"));
    let list = browser.text_of("#devices").await;
    for version in ["1.0", "1.1", "1.2"] {
        assert!(list.contains(version), "{list}");
    }
    assert!(
        list.contains("Kassa 3") && list.contains("online"),
        "{list}"
    );
    browser.screenshot("devices").await;
    // The list follows what the terminals report, without a reload.
    report_inventory(
        &e,
        &f.devices[0].1,
        posup_proto::Inventory {
            product: "Test POS".into(),
            version: "1.9".into(),
            ..Default::default()
        },
    )
    .await;
    browser
        .wait_text("#devices tbody", 15, |t| t.contains("1.9"))
        .await;

    // Sorting by number, descending, puts register 3 first.
    browser
        .open(&format!("{base}/devices?sort=number&order=desc"))
        .await;
    let first = browser.text_of("#devices tbody tr").await;
    assert!(first.contains("Kassa 3"), "{first}");

    // A device's page: its installation.
    browser
        .open(&format!("{base}/devices/{}", f.devices[1].0))
        .await;
    assert_eq!(browser.text_of("#version").await, "1.1");
    browser.screenshot("device").await;

    // Russian, by the operator's own choice, kept with the account.
    browser.find("#language").await.click().await;
    browser
        .wait_text("header nav", 10, |t| t.contains("Устройства"))
        .await;
    assert!(browser.text().await.contains("Установка"));
    browser.find("#language").await.click().await;
    browser
        .wait_text("header nav", 10, |t| t.contains("Devices"))
        .await;

    // A Forced update for the All group, at 02:30 the night after next in the
    // operator's zone (Moscow, UTC+3).
    browser.open(&format!("{base}/tasks/new")).await;
    browser
        .find("#task-name")
        .await
        .type_text("Night update")
        .await;
    browser
        .script(
            "document.getElementById('task-kind').value = 'forced-update';
             document.getElementById('task-group').selectedIndex = 1;
             document.getElementById('task-package').selectedIndex = 1;
             document.getElementById('start-at').checked = true;
             document.getElementById('start-time').value = arguments[0];",
            json!(["2023-11-16T02:30"]),
        )
        .await;
    browser.screenshot("task-new").await;
    browser.find("#create-task").await.click().await;
    let start = browser.text_of("#start").await;
    assert_eq!(start, "2023-11-16 02:30");
    assert_eq!(browser.text_of("#task-state").await, "Scheduled");
    let tasks = e.ok("GET", "/api/v1/tasks", ADMIN, None).await;
    assert_eq!(tasks[0]["kind"], "forced-update");
    assert_eq!(
        tasks[0]["start_at"], "2023-11-15T23:30:00Z",
        "Moscow time, stored in UTC"
    );
    let task_id = tasks[0]["id"].as_i64().unwrap();

    // A download now; its page follows the terminals live, without a reload.
    let download = e
        .ok(
            "POST",
            "/api/v1/tasks",
            ADMIN,
            Some(json!({"kind": "download", "package_id": f.package.id, "group_id": tasks[0]["group_id"]})),
        )
        .await;
    let download_id = download["id"].as_i64().unwrap();
    browser.open(&format!("{base}/tasks/{download_id}")).await;
    assert_eq!(browser.text_of("#count-success").await, "0");
    let (device, token) = &f.devices[0];
    let action = actions(&e, token)
        .await
        .into_iter()
        .find(|a| a.task_id == download_id)
        .expect("the download reaches the terminal");
    report(
        &e,
        token,
        &action,
        *device,
        "download",
        FeedbackState::Committed,
        "downloaded and verified",
    )
    .await;
    browser.wait_text("#count-success", 10, |t| t == "1").await;
    let row = browser
        .find("#task-devices tr[data-state=success]")
        .await
        .text()
        .await;
    assert!(row.contains("downloaded and verified"), "{row}");
    browser.screenshot("task").await;

    // Register 2 fails; its tick box survives the live refresh, and the ticked
    // device goes into a new group.
    let (second, second_token) = &f.devices[1];
    let action = actions(&e, second_token)
        .await
        .into_iter()
        .find(|a| a.task_id == download_id)
        .expect("the download reaches register 2");
    report(
        &e,
        second_token,
        &action,
        *second,
        "download",
        FeedbackState::Failed,
        "disk full",
    )
    .await;
    browser.open(&format!("{base}/tasks/{download_id}")).await;
    browser.find(&format!("#tick-{second}")).await.click().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ticked = browser
        .script(
            &format!("return document.getElementById('tick-{second}').checked"),
            json!([]),
        )
        .await;
    assert_eq!(ticked, json!(true), "the tick survives the refresh");
    browser
        .find("#failed-group-name")
        .await
        .type_text("Retry tonight")
        .await;
    browser.find("#gather-failed").await.click().await;
    let members = browser
        .wait_text("#members", 10, |t| t.contains("Kassa 2"))
        .await;
    assert!(!members.contains("Kassa 1"), "{members}");

    // Pause the scheduled forced update from its page.
    browser.open(&format!("{base}/tasks/{task_id}")).await;
    browser.find("#pause").await.click().await;
    browser
        .wait_text("#task-state", 10, |t| t == "Paused")
        .await;

    // On a tablet held upright the pages fit the screen; wide tables scroll in
    // place instead of the whole page.
    browser.resize(800, 1280).await;
    for page in ["/devices", "/tasks", &format!("/tasks/{task_id}")] {
        browser.open(&format!("{base}{page}")).await;
        let fits = browser
            .script(
                "return document.documentElement.scrollWidth <= window.innerWidth",
                json!([]),
            )
            .await;
        assert_eq!(fits, json!(true), "{page} is wider than a tablet");
    }
    browser.screenshot("tablet-tasks").await;
    browser.resize(1280, 800).await;

    // A viewer sees the same pages without a single action.
    browser.find("#logout").await.click().await;
    browser.find("#enter").await;
    log_in_browser(&browser, &base, "vika").await;
    browser.open(&format!("{base}/tasks/{task_id}")).await;
    browser.find("#live").await;
    assert_eq!(browser.count("#actions button").await, 0);
    browser.open(&format!("{base}/tasks")).await;
    assert_eq!(browser.count("#new-task").await, 0);
    // A post forged with the viewer's own cookie and token is refused.
    let cookie = browser.cookie("posup_session").await;
    let csrf = browser
        .script(
            "return document.querySelector('input[name=csrf]').value",
            json!([]),
        )
        .await;
    let forged = reqwest::Client::new()
        .post(format!("{base}/tasks/{task_id}/resume"))
        .header("cookie", format!("posup_session={cookie}"))
        .form(&[("csrf", csrf.as_str().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);

    browser.close().await;
    let _ = stop.send(());
    db.cleanup().await;
}

#[tokio::test]
async fn console_in_chromium_bundled_plugins_package_uploads_and_accounts() {
    let Some(db) = posup_store::testing::TestDb::of(posup_store::Backend::Sqlite).await else {
        panic!("SQLite is always there");
    };
    let dir = tempfile::tempdir().unwrap();
    let state = AppState::new(
        db.store.clone(),
        Blobs::open(dir.path()).unwrap(),
        runtime(),
        Arc::new(ManualClock::new(t0())),
        Settings::default(),
    )
    .with_bundled(posup_server::Bundled(posup_bundled::PLUGINS));
    state
        .store()
        .ensure_token("admin", Role::Admin, &hash_secret(ADMIN), 0)
        .await
        .unwrap();
    let e = Env {
        app: app(state.clone()),
        state: state.clone(),
        clock: Arc::new(ManualClock::new(t0())),
        _blobs: dir,
    };
    account(&state, "anna", Role::Admin, Language::En).await;
    let (base, stop) = serve(state.clone()).await;
    let browser = Browser::start().await;
    log_in_browser(&browser, &base, "anna").await;

    // A fresh server offers its bundled plugins; one click enables the kiosk's.
    browser.open(&format!("{base}/plugins")).await;
    let offered = browser.text_of("#bundled").await;
    for name in ["kiosk", "ukm5", "icecash", "oscar", "openbravo"] {
        assert!(offered.contains(&format!("Enable {name}")), "{offered}");
    }
    browser.find("#enable-kiosk").await.click().await;
    // The click's answer is a new page; a loaded machine takes a moment.
    let types = browser
        .wait_text("#device-types", 10, |t| t.contains("kiosk 0.2.0"))
        .await;
    assert!(types.contains("kiosk 0.2.0"), "{types}");
    assert_eq!(browser.count("#enable-kiosk").await, 0, "no longer offered");
    let kiosk = e.ok("GET", "/api/v1/device-types/kiosk", ADMIN, None).await;
    assert_eq!(kiosk["plugin"]["name"], "kiosk");
    assert_eq!(
        kiosk["granted"], kiosk["allowed"],
        "the server allows what the plugin asks for"
    );
    browser.screenshot("plugins").await;

    // An administrator uploads a vendor's component: the runtime loads it and it
    // describes itself; a file that is no component is refused in words.
    browser
        .find("#plugin-file")
        .await
        .type_text(posup_bundled::TEST_HOSTILE)
        .await;
    browser.find("#upload-plugin").await.click().await;
    browser
        .wait_text("#plugin-upload-result", 60, |t| t.contains("Uploaded"))
        .await;
    let plugins = browser
        .wait_text("#plugins", 10, |t| t.contains("test-hostile"))
        .await;
    assert!(plugins.contains("posup tests"), "{plugins}");
    let junk = tempfile::tempdir().unwrap();
    let not_wasm = junk.path().join("vendor.wasm");
    std::fs::write(&not_wasm, b"not a component").unwrap();
    browser
        .find("#plugin-file")
        .await
        .type_text(not_wasm.to_str().unwrap())
        .await;
    browser.find("#upload-plugin").await.click().await;
    let refused = browser
        .wait_text("#plugin-upload-result", 30, |t| t.contains("refused"))
        .await;
    assert!(refused.contains("vendor.wasm"), "{refused}");

    // A kiosk enrolls and reports its version; the device list shows it.
    let secret = enrollment_secret(&e, "kiosks").await;
    let mut kiosk_identity = identity(5);
    kiosk_identity["device_type"] = json!("kiosk");
    let (_, token) = enroll(&e, &secret, kiosk_identity).await;
    let first = poll(
        &e,
        &token,
        PollRequest {
            status: status(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        first
            .config
            .expect("the kiosk's configuration")
            .plugin
            .unwrap()
            .name,
        "kiosk"
    );
    // Its configuration allows no questions to the person at the kiosk: the page
    // shows that ceiling beside what the operator allows, and what is lost.
    let allows = posup_proto::Capabilities {
        prompt: false,
        ..kiosk_allowed(&e).await
    };
    poll(
        &e,
        &token,
        PollRequest {
            status: AgentStatus {
                allows: Some(allows),
                ..status()
            },
            inventory: Some(posup_proto::Inventory {
                product: "Kiosk".into(),
                version: "7.4.2".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    browser.open(&format!("{base}/plugins")).await;
    let types = browser.text_of("#device-types").await;
    assert!(types.contains("1 terminal:"), "{types}");
    assert!(
        types.contains("Asked for and not granted: prompt"),
        "{types}"
    );
    browser
        .open(&format!("{base}/devices?device_type=kiosk"))
        .await;
    let list = browser.text_of("#devices tbody").await;
    assert!(list.contains("7.4.2") && list.contains("Kassa 5"), "{list}");

    // Upload a kiosk package: the bar fills, the plugin reads it, the list shows it.
    let built = tempfile::tempdir().unwrap();
    let file = posup_sim::kiosk::kiosk_package(built.path(), "7.5.0", false).unwrap();
    browser.open(&format!("{base}/packages")).await;
    browser
        .find("#upload-file")
        .await
        .type_text(file.to_str().unwrap())
        .await;
    browser.find("#upload").await.click().await;
    browser
        .wait_text("#upload-result", 30, |t| t.contains("Uploaded"))
        .await;
    let value = browser
        .script(
            "return document.getElementById('upload-progress').value",
            json!([]),
        )
        .await;
    assert_eq!(value, json!(100));
    let rows = browser
        .wait_text("#packages", 10, |t| t.contains("kiosk_7.5.0.tgz"))
        .await;
    assert!(rows.contains("7.5.0"), "{rows}");
    // A package its plugin refuses is refused in words.
    let junk = built.path().join("kiosk_9.tgz");
    std::fs::write(&junk, b"not a tarball").unwrap();
    browser.open(&format!("{base}/packages")).await;
    browser
        .find("#upload-file")
        .await
        .type_text(junk.to_str().unwrap())
        .await;
    browser.find("#upload").await.click().await;
    let refused = browser
        .wait_text("#upload-result", 30, |t| t.contains("refused"))
        .await;
    assert!(refused.contains("kiosk_9.tgz"), "{refused}");
    browser.screenshot("packages").await;

    // An administrator creates an operator account; it logs in and can act.
    browser.open(&format!("{base}/accounts")).await;
    browser.find("#account-name").await.type_text("oleg").await;
    browser
        .script(
            "document.getElementById('account-role').value = 'operator'",
            json!([]),
        )
        .await;
    browser
        .find("#account-password")
        .await
        .type_text("short")
        .await;
    browser
        .find("#account-again")
        .await
        .type_text("short")
        .await;
    browser.find("#create-account").await.click().await;
    let problem = browser.find(".problem").await.text().await;
    assert!(problem.contains("at least 10 characters"), "{problem}");
    browser
        .find("#account-password")
        .await
        .type_text(PASSWORD)
        .await;
    browser
        .find("#account-again")
        .await
        .type_text(PASSWORD)
        .await;
    browser.find("#create-account").await.click().await;
    let accounts = browser
        .wait_text("#accounts", 10, |t| t.contains("oleg"))
        .await;
    assert!(accounts.contains("operator"), "{accounts}");
    // A screenshot of every other view, each one a page and not an error.
    for (name, path) in [
        ("groups", "/groups"),
        ("tasks", "/tasks"),
        ("rollouts", "/rollouts"),
        ("rollout-new", "/rollouts/new"),
        ("stores", "/sites"),
        ("variables", "/variables"),
        ("versions", "/versions"),
        ("notifications", "/notifications"),
        ("accounts", "/accounts"),
        ("access", "/access"),
        ("audit", "/audit"),
    ] {
        browser.open(&format!("{base}{path}")).await;
        let heading = browser.text_of("main h1").await;
        assert!(
            !heading.is_empty() && browser.count(".problem").await == 0,
            "{path}: {heading}"
        );
        browser.screenshot(name).await;
    }

    browser.find("#logout").await.click().await;
    browser.screenshot("login").await;
    log_in_browser(&browser, &base, "oleg").await;
    browser.open(&format!("{base}/tasks")).await;
    assert_eq!(browser.count("#new-task").await, 1, "an operator acts");
    assert_eq!(browser.count("#accounts").await, 0);

    browser.close().await;
    let _ = stop.send(());
    db.cleanup().await;
}

#[tokio::test]
async fn console_groups_are_made_edited_and_gathered_from_a_tasks_failed_devices() {
    each_backend(|store| async move {
        let (e, state) = env_with_state(store).await;
        account(&state, "anna", Role::Operator, Language::En).await;
        let f = fleet(&e, 3).await;
        let (cookie, csrf) = e.log_in("anna").await;

        // A filter group needs a condition; a static one is made and filled by GUID.
        let a = e
            .post_form(
                "/groups",
                Some(&cookie),
                form(&[("csrf", &csrf), ("name", "Moscow"), ("kind", "filter")]),
            )
            .await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            a.text()
                .contains("A filter group needs at least one condition."),
            "{}",
            a.text()
        );
        let a = e
            .post_form(
                "/groups",
                Some(&cookie),
                form(&[
                    ("csrf", &csrf),
                    ("name", "Store A"),
                    ("kind", "filter"),
                    ("site", "Store A"),
                ]),
            )
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER);
        let page = e
            .get_page(a.headers[header::LOCATION].to_str().unwrap(), &cookie)
            .await
            .text();
        assert!(
            page.contains("2 devices") && page.contains("Kassa 3"),
            "{page}"
        );

        let a = e
            .post_form(
                "/groups",
                Some(&cookie),
                form(&[("csrf", &csrf), ("name", "Pilot"), ("kind", "static")]),
            )
            .await;
        let pilot = a.headers[header::LOCATION].to_str().unwrap().to_owned();
        let a = e
            .post_form(
                &format!("{pilot}/add"),
                Some(&cookie),
                form(&[("csrf", &csrf), ("guids", "8f0c-00001\n8f0c-00002\n")]),
            )
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());
        let a = e
            .post_form(
                &format!("{pilot}/add"),
                Some(&cookie),
                form(&[("csrf", &csrf), ("guids", "nope")]),
            )
            .await;
        assert!(
            a.text().contains("No device has the GUID nope"),
            "{}",
            a.text()
        );
        let a = e
            .post_form(
                &format!("{pilot}/remove"),
                Some(&cookie),
                form(&[("csrf", &csrf), ("device", &f.devices[1].0.to_string())]),
            )
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER);
        let page = e.get_page(&pilot, &cookie).await.text();
        assert!(
            page.contains("1 device") && page.contains("Kassa 1") && !page.contains("Kassa 2"),
            "{page}"
        );

        // A download that fails on two terminals; the ticked ones go to a new group.
        let all = e.ok("GET", "/api/v1/groups", ADMIN, None).await[0]["id"]
            .as_i64()
            .unwrap();
        let task = e
            .ok(
                "POST",
                "/api/v1/tasks",
                ADMIN,
                Some(json!({"kind": "download", "package_id": f.package.id, "group_id": all})),
            )
            .await["id"]
            .as_i64()
            .unwrap();
        for (device, token) in &f.devices[1..] {
            let action = actions(&e, token).await.remove(0);
            report(
                &e,
                token,
                &action,
                *device,
                "download",
                FeedbackState::Failed,
                "disk full",
            )
            .await;
        }
        // A device's part of the task, report by report with the plugin's words.
        let page = e
            .get_page(
                &format!("/tasks/{task}/devices/{}", f.devices[1].0),
                &cookie,
            )
            .await
            .text();
        let history = page.split("id=\"history\"").nth(1).unwrap_or_default();
        assert!(
            history.contains("<td>download</td>") && history.contains("disk full"),
            "{page}"
        );
        let page = e.get_page(&format!("/tasks/{task}"), &cookie).await.text();
        assert_eq!(
            page.matches("form=\"failed-form\"").count(),
            2,
            "a tick box per failed device"
        );
        let a = e
            .post_form(
                &format!("/tasks/{task}/failed-group"),
                Some(&cookie),
                form(&[("csrf", &csrf), ("name", "Retry tonight")]),
            )
            .await;
        assert!(
            a.text()
                .contains("Tick the failed devices to gather first."),
            "{}",
            a.text()
        );
        let a = e
            .post_form(
                &format!("/tasks/{task}/failed-group"),
                Some(&cookie),
                form(&[
                    ("csrf", &csrf),
                    ("name", "Retry tonight"),
                    ("device", &f.devices[2].0.to_string()),
                ]),
            )
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());
        let page = e
            .get_page(a.headers[header::LOCATION].to_str().unwrap(), &cookie)
            .await
            .text();
        assert!(
            page.contains("Retry tonight") && page.contains("Kassa 3") && page.contains("1 device"),
            "{page}"
        );
        // …or join an existing static group.
        let pilot_id = pilot.rsplit('/').next().unwrap();
        let a = e
            .post_form(
                &format!("/tasks/{task}/failed-group"),
                Some(&cookie),
                form(&[
                    ("csrf", &csrf),
                    ("group", pilot_id),
                    ("device", &f.devices[1].0.to_string()),
                ]),
            )
            .await;
        assert_eq!(a.headers[header::LOCATION].to_str().unwrap(), pilot);
        let page = e.get_page(&pilot, &cookie).await.text();
        assert!(
            page.contains("Kassa 2") && page.contains("2 devices"),
            "{page}"
        );

        // A package's note and changes are edited on its row.
        let a = e
            .post_form(
                &format!("/packages/{}/edit", f.package.id),
                Some(&cookie),
                form(&[
                    ("csrf", &csrf),
                    ("notes", "night build"),
                    ("changelog", "- faster receipts"),
                ]),
            )
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());
        let edited = e
            .ok(
                "GET",
                &format!("/api/v1/packages/{}", f.package.id),
                ADMIN,
                None,
            )
            .await;
        assert_eq!(
            (edited["notes"].as_str(), edited["changelog"].as_str()),
            (Some("night build"), Some("- faster receipts"))
        );

        // The task's package, deleted, is archived: out of the list, kept for the task.
        let a = e
            .post_form(
                &format!("/packages/{}/delete", f.package.id),
                Some(&cookie),
                form(&[("csrf", &csrf)]),
            )
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());
        assert!(
            !e.get_page("/packages", &cookie)
                .await
                .text()
                .contains("test_pos_1.0.tgz")
        );
        let kept = e
            .ok(
                "GET",
                &format!("/api/v1/packages/{}", f.package.id),
                ADMIN,
                None,
            )
            .await;
        assert_eq!(kept["archived"], true);
        assert!(
            e.get_page(&format!("/tasks/{task}"), &cookie)
                .await
                .text()
                .contains("test_pos_1.0.tgz")
        );

        // Deleting a group keeps its devices.
        let a = e
            .post_form(
                &format!("{pilot}/delete"),
                Some(&cookie),
                form(&[("csrf", &csrf)]),
            )
            .await;
        assert_eq!(a.headers[header::LOCATION], "/groups");
        assert_eq!(
            e.ok("GET", "/api/v1/devices", ADMIN, None).await["total"],
            3
        );
    })
    .await;
}

#[tokio::test]
async fn console_in_chromium_a_rollout_advances_live_pauses_and_says_why_a_device_waits() {
    let Some(db) = posup_store::testing::TestDb::of(posup_store::Backend::Sqlite).await else {
        panic!("SQLite is always there");
    };
    let (e, state) = env_with_state(db.store.clone()).await;
    account(&state, "anna", Role::Operator, Language::En).await;
    let f = fleet(&e, 3).await;
    let pilot = e
        .ok(
            "POST",
            "/api/v1/groups",
            ADMIN,
            Some(json!({"name": "Pilot", "kind": "static", "devices": [f.devices[0].0]})),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let odd = e
        .ok("GET", "/api/v1/groups", ADMIN, None)
        .await
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["kind"] == "odd")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let (base, stop) = serve(state.clone()).await;
    let browser = Browser::start().await;
    log_in_browser(&browser, &base, "anna").await;

    // A Forced update rolled out to the pilot register, then the odd ones.
    browser.open(&format!("{base}/rollouts/new")).await;
    browser
        .find("#rollout-name")
        .await
        .type_text("Night 1.0")
        .await;
    browser
        .script(
            "document.getElementById('rollout-kind').value = 'forced-update';
             document.querySelector('#rollout-packages input').checked = true;
             document.getElementById('wave0-group').value = arguments[0];
             document.getElementById('wave1-group').value = arguments[1];
             document.getElementById('wave2-group').value = '';",
            json!([pilot.to_string(), odd.to_string()]),
        )
        .await;
    browser.find("#create-rollout").await.click().await;
    assert_eq!(browser.text_of("#rollout-state").await, "Running");
    assert_eq!(browser.text_of("#rollout-wave").await, "1 / 2");
    let rollout = e.ok("GET", "/api/v1/rollouts", ADMIN, None).await[0].clone();
    let sites = browser.text_of("#sites").await;
    assert!(sites.contains("Store A"), "the first wave's store: {sites}");

    // The pilot register updates; the page shows the second wave start by itself.
    let (pilot_device, pilot_token) = &f.devices[0];
    let action = actions(&e, pilot_token).await.remove(0);
    report(
        &e,
        pilot_token,
        &action,
        *pilot_device,
        "commit",
        FeedbackState::Committed,
        "committed",
    )
    .await;
    browser
        .wait_text("#rollout-wave", 15, |t| t == "2 / 2")
        .await;
    let waves = browser.text_of("#waves").await;
    assert!(waves.contains("Pilot") && waves.contains("Odd"), "{waves}");
    browser.screenshot("rollout").await;

    // Register 3 is busy: it says not now, and its page says so and until when.
    let (third, third_token) = &f.devices[2];
    let action = actions(&e, third_token).await.remove(0);
    report(
        &e,
        third_token,
        &action,
        *third,
        "precheck",
        FeedbackState::NotNow,
        "a receipt is open",
    )
    .await;
    browser.open(&format!("{base}/devices/{third}")).await;
    let wait = browser.text_of("#updates td.wait").await;
    assert!(
        wait.starts_with("not now: ") && wait.contains("a receipt is open"),
        "{wait}"
    );
    assert!(
        wait.contains("again at 2023-11-15 01:28"),
        "Moscow time, 15 minutes on: {wait}"
    );

    // Pause it from its page.
    browser
        .open(&format!("{base}/rollouts/{}", rollout["id"]))
        .await;
    browser.find("#pause").await.click().await;
    browser
        .wait_text("#rollout-state", 10, |t| t == "Paused")
        .await;
    assert_eq!(browser.count("#resume").await, 1);
    let paused = e
        .ok(
            "GET",
            &format!("/api/v1/rollouts/{}", rollout["id"]),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(paused["state"], "Paused");

    // Deleting asks first: "no" keeps it, "yes" deletes it.
    browser.find("#delete").await.click().await;
    let asked = browser.answer_dialog(false).await;
    assert!(asked.starts_with("Delete this rollout"), "{asked}");
    assert_eq!(browser.text_of("#rollout-state").await, "Paused");
    browser.find("#delete").await.click().await;
    browser.answer_dialog(true).await;
    browser.find("#rollouts").await;
    assert_eq!(
        e.ok("GET", "/api/v1/rollouts", ADMIN, None).await,
        json!([])
    );

    browser.close().await;
    let _ = stop.send(());
    db.cleanup().await;
}

#[tokio::test]
async fn console_an_administrator_makes_tokens_and_secrets_and_reads_the_audit_log() {
    each_backend(|store| async move {
        let (e, state) = env_with_state(store).await;
        account(&state, "anna", Role::Admin, Language::En).await;
        account(&state, "oleg", Role::Operator, Language::En).await;
        let (admin, csrf) = e.log_in("anna").await;
        let (operator, operator_csrf) = e.log_in("oleg").await;

        // An operator neither sees nor makes tokens.
        assert_eq!(
            e.get_page("/access", &operator).await.status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            e.get_page("/audit", &operator).await.status,
            StatusCode::FORBIDDEN
        );
        let a = e
            .post_form(
                "/access/tokens",
                Some(&operator),
                form(&[("csrf", &operator_csrf), ("name", "x"), ("role", "admin")]),
            )
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);

        // The token is shown once and works on the API.
        let a = e
            .post_form(
                "/access/tokens",
                Some(&admin),
                form(&[("csrf", &csrf), ("name", "grafana"), ("role", "viewer")]),
            )
            .await;
        let page = a.text();
        let token = page
            .split("<code id=\"secret\">")
            .nth(1)
            .and_then(|s| s.split('<').next())
            .expect("the new token on the page")
            .to_owned();
        assert!(token.starts_with("pop_"), "{token}");
        assert_eq!(
            e.call("GET", "/api/v1/devices", Some(&token), None)
                .await
                .status,
            StatusCode::OK
        );
        assert!(
            !e.get_page("/access", &admin).await.text().contains(&token),
            "shown only once"
        );

        // A store's enrollment secret, with a limit typed wrong and then right.
        let a = e
            .post_form(
                "/access/enrollment-secrets",
                Some(&admin),
                form(&[
                    ("csrf", &csrf),
                    ("name", "Store 12"),
                    ("site", "Store 12"),
                    ("max_uses", "many"),
                ]),
            )
            .await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            a.text().contains("must be a whole number from 1"),
            "{}",
            a.text()
        );
        let a = e
            .post_form(
                "/access/enrollment-secrets",
                Some(&admin),
                form(&[
                    ("csrf", &csrf),
                    ("name", "Store 12"),
                    ("site", "Store 12"),
                    ("max_uses", "4"),
                ]),
            )
            .await;
        assert!(a.text().contains("pes_"), "{}", a.text());
        let secrets = e.ok("GET", "/api/v1/enrollment-secrets", ADMIN, None).await;
        assert!(secrets.to_string().contains("\"max_uses\":4"), "{secrets}");

        // Every change is in the audit log with the account that made it.
        let audit = e.get_page("/audit?object=token", &admin).await.text();
        assert!(
            audit.contains("token.create") && audit.contains("account anna"),
            "{audit}"
        );
        assert!(
            !audit.contains("enrollment_secret.create"),
            "filtered by object: {audit}"
        );
    })
    .await;
}

#[tokio::test]
async fn console_version_overview_shows_same_different_unknown_and_recomputes() {
    each_backend(|store| async move {
        let (e, state) = env_with_state(store).await;
        account(&state, "anna", Role::Operator, Language::Ru).await;
        let f = fleet(&e, 3).await;
        let inventory = |core: &str| posup_proto::Inventory {
            product: "Openbravo".into(),
            version: "1.8".into(),
            modules: vec![
                posup_proto::ModuleVersion {
                    name: "core".into(),
                    version: core.into(),
                },
                posup_proto::ModuleVersion {
                    name: "pos".into(),
                    version: "1.1".into(),
                },
            ],
            ..Default::default()
        };
        report_inventory(&e, &f.devices[0].1, inventory("3.0.1")).await;
        report_inventory(&e, &f.devices[1].1, inventory("3.0.2")).await;
        poll(
            &e,
            &f.devices[2].1,
            PollRequest {
                inventory_error: Some("cannot read /product/modules".into()),
                status: status(),
                ..Default::default()
            },
        )
        .await;
        e.ok(
            "PUT",
            "/api/v1/device-types/test/reference",
            ADMIN,
            Some(json!({"from_device": f.devices[0].0})),
        )
        .await;
        let (cookie, csrf) = e.log_in("anna").await;
        let page = e.get_page("/versions", &cookie).await.text();
        for words in [
            "Как в центре",
            "Отличается",
            "Неизвестно",
            "cannot read /product/modules",
            "3 устройства",
        ] {
            assert!(page.contains(words), "{words} in {page}");
        }
        let page = e
            .get_page(&format!("/versions/{}", f.devices[1].0), &cookie)
            .await
            .text();
        assert!(page.contains("class=\"differs\"><td>core</td>"), "{page}");
        let a = e
            .post_form(
                "/versions/recompute",
                Some(&cookie),
                form(&[("csrf", &csrf)]),
            )
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER);
        let page = e
            .get_page(a.headers[header::LOCATION].to_str().unwrap(), &cookie)
            .await
            .text();
        assert!(page.contains("Вычислено заново для 3 устройств."), "{page}");
    })
    .await;
}

#[tokio::test]
async fn console_stores_windows_order_and_variables() {
    each_backend(|store| async move {
        let (e, state) = env_with_state(store).await;
        account(&state, "anna", Role::Operator, Language::En).await;
        let f = fleet(&e, 2).await;
        let (cookie, csrf) = e.log_in("anna").await;

        // A store's settings: a wrong reboot time is refused in words, then saved.
        let settings = |reboot: &str| {
            form(&[
                ("csrf", &csrf),
                ("time_zone", "Europe/Moscow"),
                ("always_open", "on"),
                ("reboot_time", reboot),
                ("ignore_version_check", "on"),
                ("language", "ru"),
            ])
        };
        let a = e
            .post_form("/sites/Store%20A/settings", Some(&cookie), settings("4am"))
            .await;
        assert!(
            a.text().contains("is not a time: write it as HH:MM"),
            "{}",
            a.text()
        );
        let a = e
            .post_form(
                "/sites/Store%20A/settings",
                Some(&cookie),
                settings("04:00"),
            )
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());
        let sites = e.ok("GET", "/api/v1/sites", ADMIN, None).await;
        let a_site = sites
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "Store A")
            .unwrap()
            .clone();
        assert_eq!(a_site["settings"]["reboot_time"], "04:00");
        assert_eq!(a_site["settings"]["always_open"], true);
        assert_eq!(a_site["ignore_version_check"], true);
        assert_eq!(a_site["settings"]["language"], "ru");

        // A nightly window for Store B; a window with no scope is refused.
        let a = e
            .post_form(
                "/sites/windows",
                Some(&cookie),
                form(&[("csrf", &csrf), ("schedule", "0 22 * * *")]),
            )
            .await;
        assert!(
            a.text().contains("Give either a store or a group"),
            "{}",
            a.text()
        );
        let a = e
            .post_form(
                "/sites/windows",
                Some(&cookie),
                form(&[
                    ("csrf", &csrf),
                    ("site", "Store B"),
                    ("schedule", "0 22 * * *"),
                    ("duration_minutes", "360"),
                    ("time_zone", "Europe/Moscow"),
                ]),
            )
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());
        let page = e.get_page("/sites", &cookie).await.text();
        assert!(
            page.contains("Store Store B") && page.contains("0 22 * * *"),
            "{page}"
        );

        // The grants editor: the product only for reading, no service.
        let a = e
            .post_form(
                "/plugins/types/test/allow",
                Some(&cookie),
                form(&[("csrf", &csrf), ("dir_product", "on"), ("dir_staging", "on"), ("write_staging", "on"), ("services", "")]),
            )
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());
        let allowed = e.ok("GET", "/api/v1/device-types/test", ADMIN, None).await["allowed"].clone();
        assert_eq!(
            allowed,
            json!({"dirs": [{"dir": "product", "write": false}, {"dir": "staging", "write": true}], "services": [], "scripts": false, "prompt": false})
        );
        // The device type's settings: one register of a store at a time.
        let settings = |limit: &str, poll: &str| {
            form(&[
                ("csrf", &csrf),
                ("description", "test terminals"),
                ("path_product", "/opt/test"),
                ("path_staging", "/var/lib/posup/staging"),
                ("poll", poll),
                ("site_limit", limit),
                ("impact", "register"),
            ])
        };
        let a = e.post_form("/plugins/types/test/settings", Some(&cookie), settings("one", "")).await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(a.text().contains("The store limit must be a whole number; “one” is not."), "{}", a.text());
        let a = e.post_form("/plugins/types/test/settings", Some(&cookie), settings("1", "9999")).await;
        assert!(a.text().contains("would make its devices look offline"), "{}", a.text());
        let a = e.post_form("/plugins/types/test/settings", Some(&cookie), settings("1", "")).await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());
        let kind = e.ok("GET", "/api/v1/device-types/test", ADMIN, None).await;
        assert_eq!((kind["site_limit"].as_u64(), kind["impact"].as_str()), (Some(1), Some("register")));
        assert_eq!(kind["paths"]["product"], "/opt/test");
        assert_eq!(kind["allowed"]["dirs"][0]["dir"], "product", "what is allowed stays");

        // A directory the device type gives no place cannot be allowed.
        let a = e
            .post_form("/plugins/types/test/allow", Some(&cookie), form(&[("csrf", &csrf), ("dir_backup", "on")]))
            .await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(a.text().contains("allows directory `backup` but gives it no path"), "{}", a.text());

        // The registers after the store server.
        e.ok(
            "PUT",
            "/api/v1/device-types/store-server",
            ADMIN,
            Some(json!({"description": "store servers"})),
        )
        .await;
        let a = e
            .post_form(
                "/sites/order-rules",
                Some(&cookie),
                form(&[
                    ("csrf", &csrf),
                    ("device_type", "test"),
                    ("after_type", "store-server"),
                ]),
            )
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());
        assert_eq!(
            e.ok("GET", "/api/v1/order-rules", ADMIN, None).await[0]["after_type"],
            "store-server"
        );

        // Variables: a plain one shows its value, a secret one never does.
        for (name, value, secret) in [("update", "002", ""), ("rms-password", "hunter2", "on")] {
            let a = e
                .post_form(
                    "/variables",
                    Some(&cookie),
                    form(&[
                        ("csrf", &csrf),
                        ("name", name),
                        ("value", value),
                        ("secret", secret),
                        ("scope", "site"),
                        ("target", "Store A"),
                    ]),
                )
                .await;
            assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());
        }
        let a = e
            .post_form(
                "/variables",
                Some(&cookie),
                form(&[
                    ("csrf", &csrf),
                    ("name", "x"),
                    ("value", "1"),
                    ("scope", "group"),
                    ("target", "Pilot"),
                ]),
            )
            .await;
        assert!(
            a.text().contains("Give the group by its number"),
            "{}",
            a.text()
        );
        let page = e.get_page("/variables", &cookie).await.text();
        assert!(
            page.contains("002") && page.contains("rms-password"),
            "{page}"
        );
        assert!(!page.contains("hunter2"), "a secret is never shown");
        let a = e
            .post_form(
                "/variables",
                Some(&cookie),
                form(&[
                    ("csrf", &csrf),
                    ("delete", "yes"),
                    ("name", "update"),
                    ("scope", "site"),
                    ("target", "Store A"),
                ]),
            )
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER);
        let vars = e
            .ok("GET", "/api/v1/variables?name=update", ADMIN, None)
            .await;
        assert_eq!(vars, json!([]));
        // A device's page: its groups and the variables it sees, from where.
        e.ok(
            "PUT",
            "/api/v1/variables",
            ADMIN,
            Some(json!({"name": "shift", "value": "fleet", "scope": "all"})),
        )
        .await;
        e.ok(
            "PUT",
            "/api/v1/variables",
            ADMIN,
            Some(json!({"name": "shift", "value": "night", "scope": "device", "device_id": f.devices[0].0})),
        )
        .await;
        let page = e.get_page(&format!("/devices/{}", f.devices[0].0), &cookie).await.text();
        let groups = page.split("id=\"device-groups\">").nth(1).unwrap().split("</p>").next().unwrap();
        assert!(groups.contains(">All<") && groups.contains(">Odd<") && !groups.contains(">Even<"), "{groups}");
        let vars = page.split("id=\"device-variables\">").nth(1).unwrap().split("</table>").next().unwrap();
        assert!(vars.contains("<td>shift</td><td>night</td><td>device</td>"), "{vars}");
        assert!(vars.contains("<td>rms-password</td><td>••••••</td><td>Store</td>"), "{vars}");
        assert!(!vars.contains("fleet"), "the device's own value wins: {vars}");
    })
    .await;
}

#[tokio::test]
async fn console_notification_channels_and_the_delivery_log() {
    each_backend(|store| async move {
        let (e, state) = env_with_state(store).await;
        account(&state, "anna", Role::Admin, Language::En).await;
        let (cookie, csrf) = e.log_in("anna").await;
        let channel = |url: &str| {
            form(&[
                ("csrf", &csrf),
                ("name", "Store A webhook"),
                ("kind", "webhook"),
                ("site", "Store A"),
                ("url", url),
            ])
        };
        let a = e
            .post_form("/notifications/channels", Some(&cookie), channel("ftp://x"))
            .await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            a.text().contains("http"),
            "the store's words on the address: {}",
            a.text()
        );
        let a = e
            .post_form(
                "/notifications/channels",
                Some(&cookie),
                channel("http://127.0.0.1:9/hook"),
            )
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());
        let id = e.ok("GET", "/api/v1/channels", ADMIN, None).await[0]["id"]
            .as_i64()
            .unwrap();
        let a = e
            .post_form(
                &format!("/notifications/channels/{id}/test"),
                Some(&cookie),
                form(&[("csrf", &csrf)]),
            )
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER);
        let page = e
            .get_page("/notifications?state=pending", &cookie)
            .await
            .text();
        assert!(
            page.contains("Store A webhook") && page.contains("data-state=\"pending\""),
            "{page}"
        );
        let message = e.ok("GET", "/api/v1/notifications", ADMIN, None).await["items"][0]["id"]
            .as_i64()
            .unwrap();
        let page = e
            .get_page(&format!("/notifications/{message}"), &cookie)
            .await
            .text();
        assert!(page.contains("id=\"message-body\""), "{page}");
        assert!(
            !e.get_page("/notifications?state=sent", &cookie)
                .await
                .text()
                .contains("data-state=\"pending\"")
        );
    })
    .await;
}

#[tokio::test]
async fn a_store_reads_its_announcement_and_report_in_its_own_language() {
    each_backend(|store| async move {
        let e = env(store).await;
        let f = fleet(&e, 2).await;
        e.ok(
            "PUT",
            "/api/v1/sites/Store%20A/settings",
            ADMIN,
            Some(json!({"time_zone": "Europe/Moscow", "language": "ru"})),
        )
        .await;
        let all = e.ok("GET", "/api/v1/groups", ADMIN, None).await[0]["id"].as_i64().unwrap();
        let rollout = e
            .ok(
                "POST",
                "/api/v1/rollouts",
                ADMIN,
                Some(json!({"kind": "forced-update", "packages": [f.package.id], "waves": [{"group_id": all}]})),
            )
            .await;
        let told = e
            .ok("GET", &format!("/api/v1/rollouts/{}/announcements", rollout["id"]), ADMIN, None)
            .await;
        let text = |site: &str| {
            told.as_array().unwrap().iter().find(|m| m["site"] == site).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let a = text("Store A");
        assert!(a.starts_with("Плановое обновление: ") && a.contains("Тип: Принудительное обновление"), "{a}");
        let b = text("Store B");
        assert!(b.starts_with("Planned update: ") && b.contains("Type: Forced update"), "{b}");
        // The store's terminals learn the language too, to ask the cashier in it.
        let vars = e.ok("GET", "/api/v1/variables?name=posup-language", ADMIN, None).await;
        assert_eq!(vars[0]["site"], "Store A");
        assert_eq!(vars[0]["value"], "ru");
    })
    .await;
}

/// What the server allows the kiosk device type.
async fn kiosk_allowed(e: &Env) -> posup_proto::Capabilities {
    serde_json::from_value(
        e.ok("GET", "/api/v1/device-types/kiosk", ADMIN, None).await["allowed"].clone(),
    )
    .unwrap()
}
