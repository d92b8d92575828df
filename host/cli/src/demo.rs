//! `posup demo`: two stores' mixed fleet updated end to end on this machine.
//!
//! It starts the server (SQLite in a temporary folder, a free port), lays out
//! every product posup updates as simulated terminals — UKM 5 registers, two
//! self-service kiosks, iiko BackOffice and iikoFront, an IceCash register in
//! the first store; UKM 5 registers, a MICROS OSCAR store server and an
//! Openbravo store server in the second — each a product installation with its
//! own folders, the simulated product running as real processes, and an agent
//! with its own state directory. It uploads and signs the bundled plugins and
//! the sample packages, and runs the night the UKM 5 documentation recommends:
//! a Download to every terminal, then one rollout, pilot registers first, then
//! the even-numbered terminals, then the odd ones. Along the way the stores'
//! own rules hold: a cashier declines once and is asked again, a customer is
//! mid-payment at a kiosk, kiosks go one at a time, iikoFront waits until
//! BackOffice is updated and logged in to RMS, IceCash upgrades to the version
//! its server variable names, UKM 5 registers ask for a full reboot. Then an
//! Openbravo hot fix that cannot start is rolled back. Each store's report
//! arrives at a local webhook and is printed as the store reads it; a table
//! gives every terminal's downtime beside what the vendor's own procedure costs.
//! `--keep` leaves everything running for the web console.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use posup_agent::config::{CashierConfig, Identity, PollConfig};
use posup_agent::device::{Allow, ServiceConfig};
use posup_agent::prompter::FilePrompter;
use posup_agent::{Agent, AgentConfig, DeviceConfig};
use posup_proto::agent::FeedbackState;
use posup_proto::api::{
    CreateGroup, CreateTask, DeviceDetail, DeviceRow, DeviceTaskState, DeviceTypeBody,
    EnablePlugin, GroupKind, GroupView, Language, PackageView, ReferenceBody, SetVariable,
    TaskDeviceDetail, TaskDeviceRow, TaskState, TaskView, VariableScope, VersionRow,
};
use posup_proto::notify::{ChannelKind, CreateChannel};
use posup_proto::rollout::{
    CreateOrderRule, CreateRollout, RolloutState, RolloutView, SiteSettings, WaveSpec,
};
use posup_proto::{Capabilities, DirPaths, ModuleVersion, Page, TaskKind};
use posup_sim::{icecash, iiko, kiosk, openbravo, oscar, ukm5};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the server, the agents and the products running after the rollout,
    /// until Ctrl-C, to look around in the web console.
    #[arg(long)]
    keep: bool,
    /// Folder for the demo's server data and terminals; a temporary one, removed
    /// at the end, by default.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The sample package sources (`packages/` of the posup repository).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../packages"))]
    packages: PathBuf,
    /// Port of the server; a free one by default.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Poll interval of the terminals, in seconds.
    #[arg(long, default_value_t = 1)]
    poll_interval: u32,
    /// How long one wave may take before the demo gives up, in seconds.
    #[arg(long, default_value_t = 180)]
    wave_timeout: u64,
}

/// The demo's two stores.
const STORES: [(&str, &str); 2] = [
    ("Лесная", "ул. Лесная, 12"),
    ("Восточная", "ул. Восточная, 5"),
];

/// Where a product's package comes from.
#[derive(Clone, Copy)]
enum Source {
    /// A sample under `packages/<device type>/<name>`.
    Sample(&'static str),
    /// The simulated kiosk vendor's package of this version.
    Kiosk(&'static str),
}

/// A product of the demo fleet: how a terminal of it is laid out and run, and
/// what it is updated to.
struct Product {
    device_type: &'static str,
    plugin: &'static str,
    /// Terminal name prefix.
    label: &'static str,
    /// The product folder, under the terminal's own folder.
    root: &'static str,
    /// Service name → the `posup sim-product` subcommand that runs it.
    services: &'static [(&'static str, &'static str)],
    /// UKM 5's own installer, `up.sh` in `mint/update`, as the service `ukm5-up`.
    installer: bool,
    from: &'static str,
    to: &'static str,
    init: fn(&Path, &Path) -> std::io::Result<()>,
    package: Source,
    /// At most this many terminals of the type down per store.
    site_limit: Option<u32>,
    /// What the product's own update procedure costs a store.
    vendor_cost: &'static str,
}

const UKM5: Product = Product {
    device_type: "ukm5",
    plugin: "ukm5",
    label: "UKM 5",
    root: "home/ukm5",
    services: &[("ukm5", "ukm5")],
    installer: true,
    from: "1.8.4",
    to: "1.14.9",
    init: |p, l| ukm5::init_ukm5(p, l, "1.8.4"),
    package: Source::Sample("1.14.9"),
    site_limit: None,
    vendor_cost: "15–20 min out of sale, then a full reboot",
};

const KIOSK: Product = Product {
    device_type: "kiosk",
    plugin: "kiosk",
    label: "Kiosk",
    root: "opt/kiosk",
    services: &[("kiosk", "kiosk")],
    installer: false,
    from: "7.4.2",
    to: "7.5.0",
    init: |p, l| kiosk::init_kiosk(p, l, "7.4.2"),
    package: Source::Kiosk("7.5.0"),
    // The others keep serving while one kiosk updates.
    site_limit: Some(1),
    vendor_cost: "by hand: read the logs, stop, update, start",
};

const BACKOFFICE: Product = Product {
    device_type: "iiko-backoffice",
    plugin: "iiko-backoffice",
    label: "BackOffice",
    root: "iiko",
    services: &[("BackOffice", "iiko-backoffice")],
    installer: false,
    from: "3.1.0",
    to: "3.2.0",
    init: |p, l| iiko::init_backoffice(p, l, "3.1.0"),
    package: Source::Sample("3.2.0"),
    site_limit: None,
    vendor_cost: "by hand: save the menu, update, log in to RMS",
};

const FRONT: Product = Product {
    device_type: "iiko-front",
    plugin: "iiko-front",
    label: "iikoFront",
    root: "iiko",
    services: &[("iikoFront", "iiko-front")],
    installer: false,
    from: "2.3.0",
    to: "2.4.0",
    init: |p, l| iiko::init_front(p, l, "2.3.0", "3.1.0"),
    package: Source::Sample("2.4.0"),
    site_limit: None,
    vendor_cost: "by hand, after BackOffice: copy to old, update",
};

const ICECASH: Product = Product {
    device_type: "icecash",
    plugin: "icecash",
    label: "IceCash",
    root: "home/kassir",
    services: &[("dIceCash", "dicecash"), ("DTPrint", "dtprint")],
    installer: false,
    from: "2.0.059",
    to: "2.0.060",
    init: |p, l| icecash::init_icecash(p, l, "2.0.059"),
    package: Source::Sample("2.0.060"),
    site_limit: None,
    vendor_cost: "the register's own upgrade, unattended",
};

const OSCAR: Product = Product {
    device_type: "oscar",
    plugin: "oscar",
    label: "OSCAR",
    root: "opt/osc_usr/osc21",
    services: &[("oscar", "oscar")],
    installer: false,
    from: "21.3.0",
    to: "22.0.0",
    init: |p, l| oscar::init_oscar(p, l, "21.3.0"),
    package: Source::Sample("oscupd10-complete"),
    site_limit: None,
    vendor_cost: "all clients shut down for the update",
};

const OPENBRAVO: Product = Product {
    device_type: "openbravo",
    plugin: "openbravo",
    label: "Openbravo",
    root: "opt/openbravo",
    services: &[("openbravo", "openbravo")],
    installer: false,
    from: "1.8.3900",
    to: "1.8.4000",
    init: |p, l| {
        openbravo::init_openbravo(p, l)?;
        openbravo::set_central(p, true)
    },
    package: Source::Sample("1.8.4000"),
    site_limit: None,
    vendor_cost: "stop, ant update.database, rebuild, start",
};

/// The module whose version the Openbravo store server's update changes.
const OPENBRAVO_MODULE: &str = "org.openbravo.retail.posterminal";
/// The hot fix that cannot start, rolled back at the end.
const HOT_FIX: &str = "1.8.4100-broken";

/// One simulated terminal of the fleet.
struct Spec {
    store: usize,
    number: u32,
    product: &'static Product,
    /// Its cashier says no to the first question.
    declines_once: bool,
    /// A customer is paying at it when the update comes.
    customer_paying: bool,
    /// Its `update.conf` has `autoUpdateTimeout` commented out.
    never_asks: bool,
}

const fn spec(store: usize, number: u32, product: &'static Product) -> Spec {
    Spec {
        store,
        number,
        product,
        declines_once: false,
        customer_paying: false,
        never_asks: false,
    }
}

/// The fleet. Numbers decide the waves: the pilot registers first (register 1
/// of each store), then the even numbers, then the odd ones; BackOffice (8)
/// comes a wave before iikoFront (9), as the iiko procedure wants.
fn fleet() -> Vec<Spec> {
    vec![
        spec(0, 1, &UKM5),
        Spec {
            declines_once: true,
            ..spec(0, 2, &UKM5)
        },
        Spec {
            never_asks: true,
            ..spec(0, 3, &UKM5)
        },
        spec(0, 4, &UKM5),
        Spec {
            customer_paying: true,
            ..spec(0, 5, &KIOSK)
        },
        spec(0, 6, &ICECASH),
        spec(0, 7, &KIOSK),
        spec(0, 8, &BACKOFFICE),
        spec(0, 9, &FRONT),
        spec(1, 1, &UKM5),
        spec(1, 2, &UKM5),
        spec(1, 3, &OSCAR),
        spec(1, 4, &OPENBRAVO),
    ]
}

/// Every product, once.
const PRODUCTS: [&Product; 7] = [
    &UKM5,
    &KIOSK,
    &BACKOFFICE,
    &FRONT,
    &ICECASH,
    &OSCAR,
    &OPENBRAVO,
];

/// Server variables the demo sets for the whole fleet: where the simulated
/// products log and how long each must keep running after an update, as an
/// operator would set them for real terminals.
const FLEET_VARIABLES: [(&str, &str); 10] = [
    ("ukm5-log", "pos.log"),
    ("ukm5-settle-secs", "1"),
    ("icecash-log", "dIceCash.log"),
    ("icecash-settle-secs", "1"),
    ("oscar-log", "oscar.log"),
    ("oscar-ready", "POS server {version} ready"),
    ("oscar-settle-secs", "1"),
    ("openbravo-log", "openbravo.log"),
    ("kiosk-busy-retry-secs", "2"),
    ("kiosk-settle-secs", "1"),
];

/// One running simulated terminal.
struct Terminal {
    name: String,
    store: usize,
    product: &'static Product,
    folder: PathBuf,
    prompt: PathBuf,
    device: DeviceConfig,
    run_dir: PathBuf,
    declines_once: bool,
    number: u32,
    customer_paying: bool,
}

impl Terminal {
    fn product_dir(&self) -> PathBuf {
        self.folder.join(self.product.root)
    }

    /// The wave of the night's rollout it is in: the pilot registers first,
    /// then the even numbers, then the odd ones.
    fn wave(&self) -> usize {
        match (
            std::ptr::eq(self.product, &UKM5) && self.number == 1,
            self.number % 2,
        ) {
            (true, _) => 0,
            (false, 0) => 1,
            _ => 2,
        }
    }
}

/// A message a store received through its webhook.
#[derive(Debug, Clone, serde::Deserialize)]
struct Received {
    event: String,
    site: Option<String>,
    subject: String,
    text: String,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<u8> {
    let (_tmp, root) = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            (None, d.canonicalize()?)
        }
        None => {
            let t = tempfile::Builder::new().prefix("posup-demo-").tempdir()?;
            let p = t.path().to_owned();
            (Some(t), p)
        }
    };
    if !args.packages.join("ukm5").is_dir() {
        bail!(
            "{}: the sample packages are not there; run the demo from the posup repository or give --packages",
            args.packages.display()
        );
    }
    let started_at = Instant::now();
    let out = Out::new();
    out.say(&format!("posup demo in {}", root.display()));

    // The server.
    let admin = format!("pop_demo_{:016x}", rand_u64());
    let secret = format!("pes_demo_{:016x}", rand_u64());
    let mut config = posup_server::ServerConfig::new(&root.join("server"));
    config.admin_token = Some(admin.clone());
    let password = format!("demo-{:08x}", rand_u64() as u32);
    config.admin_password = Some(password.clone());
    config.bundled = posup_server::Bundled(posup_bundled::PLUGINS);
    config.enrollment_secret = Some(secret.clone());
    config.poll_interval_secs = args.poll_interval.max(1);
    config.offline_after = Duration::from_secs(u64::from(args.poll_interval.max(1)) * 10);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{}", args.port))?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = {
        let mut rx = stop_rx.clone();
        tokio::spawn(posup_server::run(config, listener, async move {
            let _ = rx.wait_for(|s| *s).await;
        }))
    };
    let api = Api::new(&base, &admin)?;
    api.wait_healthy().await?;
    out.say(&format!("server on {base}"));

    // The stores' webhook: what each store receives, in order.
    let inbox: Arc<Mutex<Vec<Received>>> = Arc::default();
    let hook = webhook(inbox.clone(), stop_rx.clone()).await?;
    for (site, _) in STORES {
        api.post::<_, serde_json::Value>(
            "/api/v1/channels",
            &CreateChannel {
                name: format!("Store {site}"),
                kind: ChannelKind::Webhook,
                site: Some(site.into()),
                url: hook.clone(),
                chat_id: None,
                secret: None,
                enabled: true,
            },
        )
        .await?;
    }
    // «Лесная» reads its messages in Russian, «Восточная» in English; both keep
    // Moscow time.
    for ((site, _), language) in STORES.iter().zip([Language::Ru, Language::En]) {
        api.put::<_, serde_json::Value>(
            &format!("/api/v1/sites/{site}/settings"),
            &SiteSettings {
                time_zone: "Europe/Moscow".into(),
                language,
                ..Default::default()
            },
        )
        .await?;
    }

    // Plugins, device types, packages, all signed with the fleet's keys.
    let runtime = posup_runtime::Runtime::new(posup_runtime::RuntimeConfig {
        cache_dir: Some(root.join("agent-plugin-cache")),
        ..Default::default()
    })?;
    let fleet_keys = Fleet::new(&root, &base, &admin, &runtime, &PRODUCTS).await?;
    out.say(&format!(
        "throwaway fleet keys in {}; terminals trust {}",
        fleet_keys.keys.display(),
        fleet_keys.trusted_root().display()
    ));
    let built = root.join("packages");
    let mut packages: BTreeMap<&str, PackageView> = BTreeMap::new();
    for p in PRODUCTS {
        setup_product(&api, &runtime, &fleet_keys, p).await?;
        let pkg = upload_package(&api, &fleet_keys, &args.packages, &built, p, p.package).await?;
        out.say(&format!(
            "{:<16} plugin {} signed; package {} ({})",
            p.device_type, p.plugin, pkg.file_name, pkg.version
        ));
        packages.insert(p.device_type, pkg);
    }
    fleet_keys.publish().await?;
    setup_rules(&api).await?;

    // The terminals: product, simulated product processes, agent.
    let exe = std::env::current_exe()
        .context("finding the posup binary to run the simulated products")?;
    let specs = fleet();
    let mut terminals = Vec::new();
    let mut agents = Vec::new();
    // Whatever goes wrong from here on, the products and agents already started
    // are stopped below before the demo returns.
    let started: anyhow::Result<()> = async {
        for spec in &specs {
            let t = start_terminal(&root, &exe, spec).await?;
            let config = AgentConfig {
                server: base.clone(),
                // The demo's server is on loopback, without a certificate.
                insecure_http: true,
                ca_file: None,
                root: Some(fleet_keys.trusted_root()),
                insecure_unsigned: false,
                enrollment_secret: secret.clone(),
                state_dir: t.folder.join("posup"),
                device: Identity {
                    guid: Some(format!(
                        "demo-{}-{}-{:02}",
                        spec.store + 1,
                        spec.product.device_type,
                        spec.number
                    )),
                    site: STORES[spec.store].0.into(),
                    address: STORES[spec.store].1.into(),
                    name: t.name.clone(),
                    number: spec.number,
                    device_type: spec.product.device_type.into(),
                },
                poll: PollConfig {
                    jitter: 0.2,
                    min_backoff_secs: 0.5,
                    max_backoff_secs: 5.0,
                    ..PollConfig::default()
                },
                cashier: CashierConfig {
                    consent_timeout_secs: 20.0,
                    ask_again_secs: 3.0,
                },
                device_types: [(spec.product.device_type.to_owned(), t.device.clone())]
                    .into_iter()
                    .collect(),
            };
            let agent = Agent::new(config, runtime.clone())?;
            let mut rx = stop_rx.clone();
            agents.push(tokio::spawn(async move {
                agent
                    .run(async move {
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await
            }));
            terminals.push(t);
        }
        Ok(())
    }
    .await;
    let mut helpers: Vec<_> = terminals
        .iter()
        .map(|t| tokio::spawn(cashier(t.prompt.clone(), t.declines_once)))
        .collect();
    helpers.push(tokio::spawn(rms(
        product_dir(&terminals, &BACKOFFICE),
        product_dir(&terminals, &FRONT),
    )));
    out.say(&format!(
        "{} terminals in {} stores started; waiting for them to enroll and report their versions",
        terminals.len(),
        STORES.len()
    ));

    let result = match started {
        Ok(()) => {
            night(
                &api,
                &out,
                &terminals,
                &packages,
                (&fleet_keys, &args.packages, &built),
                Duration::from_secs(args.wave_timeout),
            )
            .await
        }
        Err(e) => Err(e),
    };
    let ok = match &result {
        Ok(night) => {
            let reports = wait_reports(&inbox, Duration::from_secs(30)).await;
            print_summary(&api, night, &terminals).await;
            print_inbox(&inbox);
            if !reports {
                eprintln!("posup demo: not every store received its report");
            }
            night.as_planned() && reports
        }
        Err(e) => {
            eprintln!("posup demo: {e:#}");
            false
        }
    };
    println!();
    println!(
        "Done in {:.0} s. Web console: {base}/   (log in as admin, password {password}; API token {admin})",
        started_at.elapsed().as_secs_f64()
    );
    if args.keep {
        println!("Everything keeps running; press Ctrl-C to stop.");
        crate::agent::shutdown_signal().await;
    }

    // Shut everything down: agents, products, server.
    let _ = stop_tx.send(true);
    for a in agents {
        let _ = a.await;
    }
    for h in helpers {
        h.abort();
    }
    for t in &terminals {
        let Some(services) = t.device.service_manager(&t.run_dir) else {
            continue;
        };
        for (service, _) in t.product.services {
            if let Err(e) = services.stop(service).await {
                eprintln!("stopping {} ({service}): {}", t.name, e.message);
            }
        }
    }
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("posup demo: the server ended with: {e:#}"),
        Err(e) => eprintln!("posup demo: the server task ended with: {e}"),
    }
    Ok(if ok { 0 } else { 1 })
}

fn rand_u64() -> u64 {
    rand::random()
}

/// Uploads and signs `p`'s plugin, creates its device type and enables it.
async fn setup_product(
    api: &Api,
    runtime: &posup_runtime::Runtime,
    fleet: &Fleet,
    p: &Product,
) -> anyhow::Result<()> {
    let bytes = posup_bundled::get(p.plugin)
        .with_context(|| format!("the {} plugin is not bundled in this build", p.plugin))?;
    // Compiled once here, so the agents load it from the cache.
    let info = runtime.load(p.plugin, bytes)?.info().await?;
    fleet.sign_plugin(bytes, &info, p.device_type)?;
    api.post_bytes::<serde_json::Value>(
        &format!("/api/v1/plugins?file_name={}.wasm", p.plugin),
        bytes.to_vec(),
    )
    .await
    .with_context(|| format!("uploading the {} plugin", p.plugin))?;
    let mut services: Vec<&str> = p.services.iter().map(|(name, _)| *name).collect();
    if p.installer {
        services.push("ukm5-up");
    }
    let body = DeviceTypeBody {
        description: format!("{} terminals of the demo", p.label),
        allowed: Capabilities::updater(&services),
        // Where a real terminal has them; each demo terminal's own configuration
        // points at its sandbox folders instead, and the agent prefers that.
        paths: DirPaths {
            product: Some(format!("/{}", p.root)),
            staging: Some(format!("/var/lib/posup/{}/staging", p.device_type)),
            backup: Some(format!("/var/lib/posup/{}/backup", p.device_type)),
            logs: Some(format!("/var/log/{}", p.device_type)),
        },
        // The server's default interval, which the demo sets below the 5 s a
        // device type may ask for, so the waves follow each other quickly.
        poll_interval_secs: None,
        site_limit: p.site_limit,
        impact: Some("software".into()),
    };
    api.put::<_, serde_json::Value>(&format!("/api/v1/device-types/{}", p.device_type), &body)
        .await?;
    api.put::<_, serde_json::Value>(
        &format!("/api/v1/device-types/{}/plugin", p.device_type),
        &EnablePlugin {
            name: p.plugin.into(),
            version: None,
        },
    )
    .await?;
    Ok(())
}

/// Builds, uploads and signs one package of `p`.
async fn upload_package(
    api: &Api,
    fleet: &Fleet,
    sources: &Path,
    built: &Path,
    p: &Product,
    source: Source,
) -> anyhow::Result<PackageView> {
    let file = match source {
        Source::Kiosk(version) => kiosk::kiosk_package(built, version, false)?,
        Source::Sample(name) => {
            let dir = sources.join(p.device_type).join(name);
            posup_sim::package::build(&dir, built)
                .with_context(|| format!("building the sample package {}", dir.display()))?
        }
    };
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let bytes = std::fs::read(&file)?;
    let pkg: PackageView = api
        .post_bytes(
            &format!(
                "/api/v1/packages?device_type={}&file_name={name}",
                p.device_type
            ),
            bytes.clone(),
        )
        .await
        .with_context(|| format!("uploading the package {name}"))?;
    fleet.sign_package(&bytes, &pkg)?;
    Ok(pkg)
}

/// The server-side rules of the night: where the simulated products log, the
/// IceCash version the first store's server offers, and iikoFront after
/// BackOffice.
async fn setup_rules(api: &Api) -> anyhow::Result<()> {
    for (name, value) in FLEET_VARIABLES {
        api.put::<_, serde_json::Value>(
            "/api/v1/variables",
            &SetVariable {
                name: name.into(),
                value: value.into(),
                secret: false,
                scope: VariableScope::All,
            },
        )
        .await?;
    }
    // IceCash upgrades to the version its server's `version` variable names.
    api.put::<_, serde_json::Value>(
        "/api/v1/variables",
        &SetVariable {
            name: "version".into(),
            value: ICECASH.to.into(),
            secret: false,
            scope: VariableScope::Site {
                site: STORES[0].0.into(),
            },
        },
    )
    .await?;
    api.post::<_, serde_json::Value>(
        "/api/v1/order-rules",
        &CreateOrderRule {
            device_type: FRONT.device_type.into(),
            after_type: BACKOFFICE.device_type.into(),
            variable: Some("iiko-backoffice-ready".into()),
        },
    )
    .await?;
    Ok(())
}

/// Lays out one terminal and starts its product.
async fn start_terminal(root: &Path, exe: &Path, spec: &Spec) -> anyhow::Result<Terminal> {
    let p = spec.product;
    let name = format!("{} {}", p.label, spec.number);
    let folder = root.join("terminals").join(format!(
        "store{}-{}-{}",
        spec.store + 1,
        p.device_type,
        spec.number
    ));
    let product = folder.join(p.root);
    let logs = folder.join("log");
    let state = folder.join("posup");
    (p.init)(&product, &logs).with_context(|| format!("laying out {name}"))?;
    if spec.never_asks {
        ukm5::set_auto_update_timeout(&product, None)?;
    }
    if spec.customer_paying {
        kiosk::set_customer(&product, kiosk::KioskState::Payment)?;
    }
    let mut services: BTreeMap<String, ServiceConfig> = p
        .services
        .iter()
        .map(|(service, sim)| {
            let command = vec![
                exe.display().to_string(),
                "sim-product".into(),
                (*sim).into(),
                "--product".into(),
                product.display().to_string(),
                "--logs".into(),
                logs.display().to_string(),
            ];
            let config = ServiceConfig {
                command: Some(command),
                log: Some(logs.join(format!("{service}.out"))),
                ..ServiceConfig::default()
            };
            ((*service).to_owned(), config)
        })
        .collect();
    if p.installer {
        let update = product.join(ukm5::UPDATE_DIR);
        services.insert(
            "ukm5-up".into(),
            ServiceConfig {
                command: Some(vec![update.join("up.sh").display().to_string()]),
                cwd: Some(update),
                log: Some(logs.join("up.out")),
                ..ServiceConfig::default()
            },
        );
    }
    let device = DeviceConfig {
        dirs: [
            ("product".to_owned(), product.clone()),
            ("staging".to_owned(), folder.join(".posup-staging")),
            ("backup".to_owned(), folder.join(".posup-backup")),
            ("logs".to_owned(), logs.clone()),
        ]
        .into_iter()
        .collect(),
        allow: Allow {
            services: services.keys().cloned().collect(),
            prompt: true,
            ..Allow::default()
        },
        services,
        ..DeviceConfig::default()
    };
    let run_dir = state.join("run");
    let manager = device
        .service_manager(&run_dir)
        .expect("the demo configures services");
    for (service, _) in p.services.iter().rev() {
        manager
            .start(service)
            .await
            .map_err(|e| anyhow::anyhow!("starting {name} ({service}): {}", e.message))?;
    }
    Ok(Terminal {
        name,
        store: spec.store,
        product: p,
        prompt: state.join("prompt"),
        folder,
        device,
        run_dir,
        declines_once: spec.declines_once,
        number: spec.number,
        customer_paying: spec.customer_paying,
    })
}

fn product_dir(terminals: &[Terminal], p: &Product) -> Option<PathBuf> {
    terminals
        .iter()
        .find(|t| std::ptr::eq(t.product, p))
        .map(Terminal::product_dir)
}

/// Stands in for the store's RMS between its BackOffice and its iikoFront:
/// the kiosk settings BackOffice publishes are what iikoFront then reads.
async fn rms(backoffice: Option<PathBuf>, front: Option<PathBuf>) {
    let (Some(backoffice), Some(front)) = (backoffice, front) else {
        return;
    };
    let log = backoffice
        .parent()
        .map(|f| f.join("log").join(iiko::BACKOFFICE_LOG))
        .unwrap_or_default();
    let mut published = String::new();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let latest = text
            .lines()
            .rev()
            .find_map(|l| l.split("Kiosk settings version ").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_owned);
        if let Some(v) = latest
            && v != published
            && iiko::set_rms_kiosk_settings(&front, &v).is_ok()
        {
            published = v;
        }
    }
}

/// The simulated cashier of one terminal: answers each question after a moment,
/// yes, except that a cashier who `declines_once` says no the first time.
async fn cashier(prompt: PathBuf, declines_once: bool) {
    let mut declined = !declines_once;
    let mut answered = String::new();
    loop {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let Some(q) = FilePrompter::pending(&prompt) else {
            continue;
        };
        if q.id == answered {
            continue;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        let yes = declined;
        declined = true;
        if FilePrompter::answer(&prompt, &q.id, yes).is_ok() {
            answered = q.id;
        }
    }
}

/// Receives the stores' webhook messages on loopback; returns its address.
async fn webhook(
    inbox: Arc<Mutex<Vec<Received>>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<String> {
    use axum::routing::post;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/store", listener.local_addr()?);
    let app = axum::Router::new().route(
        "/store",
        post(move |axum::Json(m): axum::Json<Received>| {
            let inbox = inbox.clone();
            async move {
                inbox.lock().unwrap_or_else(|e| e.into_inner()).push(m);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
    });
    Ok(url)
}

/// How one step of the night ended.
#[derive(Debug, Clone, Default)]
struct Wave {
    title: String,
    total: u64,
    success: u64,
    failed: u64,
    /// Device id → its state, last message and task in this step.
    devices: BTreeMap<i64, (DeviceTaskState, String, i64)>,
}

/// What the night did.
struct Night {
    waves: Vec<Wave>,
    /// The hot fix's step.
    hot_fix: Wave,
    before: Vec<VersionRow>,
    after: Vec<VersionRow>,
}

impl Night {
    /// Every terminal updated, and the hot fix rolled back on its one store server.
    fn as_planned(&self) -> bool {
        self.waves
            .iter()
            .all(|w| w.failed == 0 && w.success == w.total)
            && self.hot_fix.total == 1
            && self.hot_fix.failed == 1
    }
}

async fn night(
    api: &Api,
    out: &Out,
    terminals: &[Terminal],
    packages: &BTreeMap<&str, PackageView>,
    (fleet, sources, built): (&Fleet, &Path, &Path),
    timeout: Duration,
) -> anyhow::Result<Night> {
    let devices = api
        .wait_enrolled(terminals.len(), Duration::from_secs(90))
        .await?;
    let groups: Vec<GroupView> = api.get("/api/v1/groups").await?;
    let builtin = |kind: GroupKind| {
        groups
            .iter()
            .find(|g| g.kind == kind)
            .map(|g| g.id)
            .with_context(|| format!("the server has no built-in {kind:?} group"))
    };
    api.wait_online(terminals.len(), Duration::from_secs(30))
        .await?;
    set_central(api, &devices).await?;
    let before = api.openbravo_versions().await?;
    let names: BTreeMap<i64, String> = devices
        .iter()
        .map(|d| (d.id, format!("{} {}", d.site, d.name)))
        .collect();
    let pilots: Vec<i64> = devices
        .iter()
        .filter(|d| d.device_type == UKM5.device_type && d.number == 1)
        .map(|d| d.id)
        .collect();
    let pilot: GroupView = api
        .post(
            "/api/v1/groups",
            &CreateGroup {
                name: "Pilot".into(),
                description: "The first registers of each store to get a new version".into(),
                kind: GroupKind::Static,
                filter: None,
                devices: pilots,
            },
        )
        .await?;

    // First every package goes onto its terminals in the background.
    let mut downloads = Vec::new();
    for pkg in packages.values() {
        let task: TaskView = api
            .post(
                "/api/v1/tasks",
                &CreateTask {
                    name: Some(format!("Download {}", pkg.file_name)),
                    kind: TaskKind::Download,
                    package_id: pkg.id,
                    group_id: builtin(GroupKind::All)?,
                    start_at: None,
                    notice_override: None,
                },
            )
            .await?;
        downloads.push(task.id);
    }
    let mut waves = vec![
        watch_tasks(
            api,
            out,
            "[download] every package to its terminals",
            &downloads,
            &names,
            timeout,
        )
        .await?,
    ];

    // Then one rollout: Pilot, Even, Odd, each wave once the one before
    // succeeded on every terminal.
    let release: RolloutView = api
        .post(
            "/api/v1/rollouts",
            &CreateRollout {
                name: Some("Night release".into()),
                kind: TaskKind::Update,
                packages: packages.values().map(|p| p.id).collect(),
                waves: [
                    pilot.id,
                    builtin(GroupKind::Even)?,
                    builtin(GroupKind::Odd)?,
                ]
                .into_iter()
                .map(|group_id| WaveSpec {
                    group_id,
                    success_percent: 100,
                    auto_advance: true,
                })
                .collect(),
                max_failed: Some(2),
                max_failed_percent: None,
                start_at: None,
                conditions: "Close the shift before the update; do not switch the registers off."
                    .into(),
                // The demo's stores are simulated: nobody to give 24 hours' notice.
                notice_override: Some("demo: simulated stores, announced just now".into()),
            },
        )
        .await?;
    let started = Instant::now();
    for (i, spec) in release.waves.iter().enumerate() {
        // The wave's tasks appear once the wave before it met its threshold.
        let tasks = loop {
            let r: RolloutView = api.get(&format!("/api/v1/rollouts/{}", release.id)).await?;
            let wave = &r.waves[i];
            if wave.tasks.len() == r.packages.len() {
                break wave.tasks.clone();
            }
            if matches!(r.state, RolloutState::Paused | RolloutState::Finished) {
                bail!(
                    "the rollout stopped before wave {} ({}): {}",
                    i + 1,
                    spec.group_name,
                    r.pause_reason.unwrap_or_else(|| r.state.as_str().into())
                );
            }
            if started.elapsed() > timeout * 3 {
                bail!("wave {} ({}) did not start in time", i + 1, spec.group_name);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // A customer mid-payment at a kiosk of this wave pays a few seconds
        // after the kiosk's update comes; it waits meanwhile.
        for t in terminals
            .iter()
            .filter(|t| t.customer_paying && t.wave() == i)
        {
            let product = t.product_dir();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(4)).await;
                let _ = kiosk::set_customer(&product, kiosk::KioskState::Idle);
            });
        }
        let header = format!(
            "[wave {}/{}] {} ({})",
            i + 1,
            release.waves.len(),
            spec.group_name,
            release.name
        );
        waves.push(watch_tasks(api, out, &header, &tasks, &names, timeout).await?);
    }

    // A hot fix for the Openbravo store server that cannot start with it,
    // released after the night's version (releases only grow).
    let hot_fix = upload_package(
        api,
        fleet,
        sources,
        built,
        &OPENBRAVO,
        Source::Sample(HOT_FIX),
    )
    .await?;
    fleet.publish().await?;
    let task: TaskView = api
        .post(
            "/api/v1/tasks",
            &CreateTask {
                name: Some(format!("Hot fix {}", hot_fix.file_name)),
                kind: TaskKind::ForcedUpdate,
                package_id: hot_fix.id,
                group_id: builtin(GroupKind::All)?,
                start_at: None,
                notice_override: Some("demo: an urgent hot fix".into()),
            },
        )
        .await?;
    let hot_fix = watch_tasks(
        api,
        out,
        &format!("[hot fix] {} (Forced update)", hot_fix.file_name),
        &[task.id],
        &names,
        timeout,
    )
    .await?;
    api.post::<_, serde_json::Value>(
        "/api/v1/versions/recompute",
        &serde_json::json!({ "device_type": OPENBRAVO.device_type }),
    )
    .await?;
    let after = api.openbravo_versions().await?;
    Ok(Night {
        waves,
        hot_fix,
        before,
        after,
    })
}

/// Central runs the night's Openbravo release: its modules are the store
/// server's with the updated module, and the version overview compares every
/// store server with that.
async fn set_central(api: &Api, devices: &[DeviceRow]) -> anyhow::Result<()> {
    let Some(store) = devices
        .iter()
        .find(|d| d.device_type == OPENBRAVO.device_type)
    else {
        return Ok(());
    };
    let detail: DeviceDetail = api.get(&format!("/api/v1/devices/{}", store.id)).await?;
    let inventory = detail
        .inventory
        .context("the Openbravo store server reported no inventory")?;
    let modules: Vec<ModuleVersion> = inventory
        .modules
        .into_iter()
        .map(|m| ModuleVersion {
            version: if m.name == OPENBRAVO_MODULE {
                OPENBRAVO.to.into()
            } else {
                m.version
            },
            name: m.name,
        })
        .collect();
    let version = openbravo::computed_version(modules.iter().map(|m| m.version.as_str()))
        .map_err(|e| anyhow::anyhow!("central's modules: {e}"))?;
    api.put::<_, serde_json::Value>(
        &format!("/api/v1/device-types/{}/reference", OPENBRAVO.device_type),
        &ReferenceBody {
            version: Some(version.to_string()),
            modules,
            from_device: None,
        },
    )
    .await?;
    Ok(())
}

/// Shows the progress of `tasks` together until every one finished.
async fn watch_tasks(
    api: &Api,
    out: &Out,
    header: &str,
    tasks: &[i64],
    names: &BTreeMap<i64, String>,
    timeout: Duration,
) -> anyhow::Result<Wave> {
    let started = Instant::now();
    out.begin(header);
    let mut seen: BTreeMap<i64, (DeviceTaskState, Option<String>)> = BTreeMap::new();
    loop {
        let mut rows: Vec<(i64, TaskDeviceRow)> = Vec::new();
        let (mut total, mut success, mut failed, mut running, mut finished) = (0, 0, 0, 0, 0);
        for &id in tasks {
            let task: TaskView = api.get(&format!("/api/v1/tasks/{id}")).await?;
            let page: Page<TaskDeviceRow> = api
                .get(&format!("/api/v1/tasks/{id}/devices?per_page=1000"))
                .await?;
            rows.extend(page.items.into_iter().map(|r| (id, r)));
            let c = task.counts;
            total += c.total;
            success += c.success;
            failed += c.failed;
            running += c.inprogress;
            finished += u64::from(task.state == TaskState::Finished);
        }
        rows.sort_by_key(|(_, r)| names.get(&r.device_id).cloned());
        for (_, r) in &rows {
            let name = names
                .get(&r.device_id)
                .cloned()
                .unwrap_or_else(|| r.name.clone());
            let frac = fraction(r);
            let step = r.step.clone().unwrap_or_default();
            let msg = match (&r.wait, &r.message) {
                (Some(w), _) => w.reason.clone(),
                (_, m) => m.clone().unwrap_or_default(),
            };
            out.row(
                r.device_id,
                &name,
                frac,
                &format!("{:<10} {step:<9} {}", r.state.as_str(), clip(&msg, 56)),
            );
            let key = (r.state, r.step.clone());
            if seen.get(&r.device_id) != Some(&key) {
                seen.insert(r.device_id, key);
                out.event(&format!(
                    "  {name}: {} {step} {}",
                    r.state.as_str(),
                    clip(&msg, 100)
                ));
            }
        }
        out.summary(&format!(
            "{success} of {total} done · {running} in progress · {failed} failed"
        ));
        if finished == tasks.len() as u64 {
            out.end(&format!(
                "  finished in {:.1} s: {success} succeeded, {failed} failed",
                started.elapsed().as_secs_f64()
            ));
            return Ok(Wave {
                title: header.to_owned(),
                total,
                success,
                failed,
                devices: rows
                    .iter()
                    .map(|(task, r)| {
                        (
                            r.device_id,
                            (r.state, r.message.clone().unwrap_or_default(), *task),
                        )
                    })
                    .collect(),
            });
        }
        if started.elapsed() > timeout {
            bail!(
                "{header} did not finish within {} s ({} of {total} done)",
                timeout.as_secs(),
                success + failed
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until every store received its report of the night.
async fn wait_reports(inbox: &Mutex<Vec<Received>>, limit: Duration) -> bool {
    let started = Instant::now();
    loop {
        let got = {
            let inbox = inbox.lock().unwrap_or_else(|e| e.into_inner());
            STORES.iter().all(|(site, _)| {
                inbox
                    .iter()
                    .any(|m| m.site.as_deref() == Some(site) && m.event == "report")
            })
        };
        if got {
            return true;
        }
        if started.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The update's downtime on one terminal: from the moment its product was
/// stopped (`apply` began) to the moment it was ready again (`verify` ended).
fn downtime(detail: &TaskDeviceDetail) -> Option<Duration> {
    let stopped = detail
        .history
        .iter()
        .find(|e| e.step == "apply" && e.state == FeedbackState::Started)?
        .at;
    let ready = detail
        .history
        .iter()
        .rev()
        .find(|e| {
            (e.step == "verify" && e.state == FeedbackState::Ok)
                || e.state == FeedbackState::RolledBack
        })?
        .at;
    (ready - stopped).to_std().ok()
}

async fn print_summary(api: &Api, night: &Night, terminals: &[Terminal]) {
    println!();
    for (i, w) in night.waves.iter().chain([&night.hot_fix]).enumerate() {
        println!(
            "step {}: {} — {} of {} succeeded, {} failed",
            i + 1,
            w.title,
            w.success,
            w.total,
            w.failed
        );
    }
    let devices = api.devices().await.unwrap_or_default();
    println!();
    println!(
        "{:<10} {:<11} {:<10} {:>9} → {:<9} {:>9}  {:<8} vendor's own procedure",
        "store", "terminal", "type", "from", "now", "downtime", "reboot"
    );
    let mut sorted: Vec<&DeviceRow> = devices.iter().collect();
    sorted.sort_by_key(|d| (d.site.clone(), d.number));
    for d in sorted {
        let Some(t) = terminals
            .iter()
            .find(|t| STORES[t.store].0 == d.site && t.name == d.name)
        else {
            continue;
        };
        let detail: Option<DeviceDetail> = api.get(&format!("/api/v1/devices/{}", d.id)).await.ok();
        let inventory = detail.as_ref().and_then(|x| x.inventory.as_ref());
        let now = if t.product.device_type == OPENBRAVO.device_type {
            inventory
                .and_then(|i| i.modules.iter().find(|m| m.name == OPENBRAVO_MODULE))
                .map(|m| m.version.clone())
                .unwrap_or_default()
        } else {
            d.version.clone()
        };
        let reboot = if inventory.is_some_and(|i| i.reboot_required) {
            "required"
        } else {
            ""
        };
        // The night's update of this terminal, in the rollout.
        let part = night
            .waves
            .iter()
            .skip(1)
            .find_map(|w| w.devices.get(&d.id));
        let down = match part {
            Some((_, _, task)) => api
                .get::<TaskDeviceDetail>(&format!("/api/v1/tasks/{task}/devices/{}", d.id))
                .await
                .ok()
                .and_then(|x| downtime(&x))
                .map(|t| format!("{:.2} s", t.as_secs_f64()))
                .unwrap_or_else(|| "–".into()),
            None => "–".into(),
        };
        println!(
            "{:<10} {:<11} {:<10} {:>9} → {:<9} {:>9}  {:<8} {}",
            clip(&d.site, 10),
            clip(&d.name, 11),
            clip(t.product.device_type, 10),
            t.product.from,
            now,
            down,
            reboot,
            t.product.vendor_cost
        );
    }
    for (state, message, _) in night.hot_fix.devices.values() {
        println!();
        println!(
            "hot fix {HOT_FIX}: {} — {}",
            state.as_str(),
            clip(message, 200)
        );
    }
    println!();
    println!("Openbravo version overview (store server against central):");
    for (when, rows) in [("before", &night.before), ("after", &night.after)] {
        for r in rows {
            println!(
                "  {when:<6} {:<12} {:<7} {:<9} computed version {:<13} {} modules differ from central's{}",
                r.name,
                format!("{:?}", r.server_status).to_lowercase(),
                r.status.as_str(),
                r.computed_version,
                r.differing_modules,
                r.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
        }
    }
}

/// Prints what each store received, as it reads it.
fn print_inbox(inbox: &Mutex<Vec<Received>>) {
    let inbox = inbox.lock().unwrap_or_else(|e| e.into_inner());
    for (site, _) in STORES {
        println!();
        println!("── What store «{site}» received ──");
        for m in inbox.iter().filter(|m| m.site.as_deref() == Some(site)) {
            println!();
            // The text begins with its subject line.
            if !m.text.starts_with(&m.subject) {
                println!("{}", m.subject);
            }
            println!("{}", m.text.trim_end());
        }
    }
}

/// How far a device is in its part of a task, 0..=1, from its last step.
fn fraction(r: &TaskDeviceRow) -> f64 {
    if r.state == DeviceTaskState::Success || r.state == DeviceTaskState::Failed {
        return 1.0;
    }
    let pct = f64::from(r.percent.unwrap_or(0)) / 100.0;
    let (from, to) = match r.step.as_deref() {
        None => return 0.0,
        Some("download") => (0.0, 0.3),
        Some("inspect") => (0.3, 0.35),
        Some("precheck") => (0.35, 0.4),
        Some("stage") => (0.4, 0.55),
        Some("consent") => (0.55, 0.6),
        Some("apply") => (0.6, 0.8),
        Some("verify") => (0.8, 0.95),
        Some(_) => (0.95, 1.0),
    };
    from + (to - from) * pct
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let cut: String = s.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// Output: a progress bar per terminal on a terminal (indicatif), one line per
/// change otherwise, so a log of the demo reads as a story.
struct Out {
    tty: bool,
    bars: Mutex<Option<Bars>>,
}

/// The bars of the step being watched.
struct Bars {
    multi: indicatif::MultiProgress,
    rows: BTreeMap<i64, indicatif::ProgressBar>,
    summary: indicatif::ProgressBar,
}

impl Out {
    fn new() -> Self {
        Self {
            tty: std::io::stdout().is_terminal(),
            bars: Mutex::new(None),
        }
    }

    fn bars(&self) -> std::sync::MutexGuard<'_, Option<Bars>> {
        self.bars.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn say(&self, line: &str) {
        println!("{line}");
    }

    fn begin(&self, header: &str) {
        println!();
        println!("{header}");
        if self.tty {
            let multi = indicatif::MultiProgress::new();
            let summary = multi.add(indicatif::ProgressBar::new_spinner());
            summary.set_style(
                indicatif::ProgressStyle::with_template("  {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            *self.bars() = Some(Bars {
                multi,
                rows: BTreeMap::new(),
                summary,
            });
        }
    }

    /// One terminal's progress in the step, `frac` of it done.
    fn row(&self, id: i64, name: &str, frac: f64, text: &str) {
        let mut bars = self.bars();
        let Some(b) = bars.as_mut() else {
            return;
        };
        let bar = b.rows.entry(id).or_insert_with(|| {
            let bar = b
                .multi
                .insert_before(&b.summary, indicatif::ProgressBar::new(100));
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "  {prefix:<22} [{bar:16}] {pos:>3}%  {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("#>."),
            );
            bar.set_prefix(name.to_owned());
            bar
        });
        bar.set_position((frac.clamp(0.0, 1.0) * 100.0).round() as u64);
        bar.set_message(text.to_owned());
    }

    fn summary(&self, text: &str) {
        if let Some(b) = self.bars().as_ref() {
            b.summary.set_message(text.to_owned());
        }
    }

    /// One change (plain output only).
    fn event(&self, line: &str) {
        if !self.tty {
            println!("{line}");
        }
    }

    fn end(&self, line: &str) {
        if let Some(b) = self.bars().take() {
            for bar in b.rows.values() {
                bar.finish();
            }
            b.summary.finish_and_clear();
        }
        println!("{line}");
    }
}

/// The operator API, as the demo uses it.
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
            base: base.to_owned(),
            token: token.to_owned(),
        })
    }

    async fn send<R: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> anyhow::Result<R> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("{what}: the demo server does not answer"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{what}: the server answered {status}: {text}");
        }
        serde_json::from_str(&text)
            .with_context(|| format!("{what}: unexpected answer {}", clip(&text, 200)))
    }

    async fn get<R: DeserializeOwned>(&self, path: &str) -> anyhow::Result<R> {
        self.send(
            self.http.get(format!("{}{path}", self.base)),
            &format!("GET {path}"),
        )
        .await
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<R> {
        self.send(
            self.http.post(format!("{}{path}", self.base)).json(body),
            &format!("POST {path}"),
        )
        .await
    }

    async fn put<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<R> {
        self.send(
            self.http.put(format!("{}{path}", self.base)).json(body),
            &format!("PUT {path}"),
        )
        .await
    }

    async fn post_bytes<R: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<R> {
        self.send(
            self.http.post(format!("{}{path}", self.base)).body(body),
            &format!("POST {path}"),
        )
        .await
    }

    async fn devices(&self) -> anyhow::Result<Vec<DeviceRow>> {
        let page: Page<DeviceRow> = self.get("/api/v1/devices?per_page=1000").await?;
        Ok(page.items)
    }

    /// The version overview of the Openbravo store servers.
    async fn openbravo_versions(&self) -> anyhow::Result<Vec<VersionRow>> {
        let page: Page<VersionRow> = self
            .get(&format!(
                "/api/v1/versions?device_type={}",
                OPENBRAVO.device_type
            ))
            .await?;
        Ok(page.items)
    }

    /// Waits until `n` devices are in contact.
    async fn wait_online(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let online = self.devices().await?.iter().filter(|d| d.online).count();
            if online >= n {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "only {online} of {n} terminals in contact within {} s",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_healthy(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            match self.get::<serde_json::Value>("/api/v1/health").await {
                Ok(_) => return Ok(()),
                Err(e) if started.elapsed() > Duration::from_secs(30) => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Waits until `n` devices are enrolled and have reported an installed version.
    async fn wait_enrolled(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<DeviceRow>> {
        let started = Instant::now();
        loop {
            let devices = self.devices().await?;
            let ready = devices.iter().filter(|d| !d.version.is_empty()).count();
            if devices.len() >= n && ready >= n {
                return Ok(devices);
            }
            if started.elapsed() > timeout {
                bail!(
                    "only {} of {n} terminals enrolled and {ready} reported a version within {} s",
                    devices.len(),
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The demo fleet's throwaway keys and repository: a fleet owner's root and
/// targets keys, one key per plugin vendor and the release key, all made here
/// and kept in the demo folder.
struct Fleet {
    keys: PathBuf,
    repo: posup_trust::offline::RepoDir,
    release: posup_trust::SigningKey,
    vendors: BTreeMap<String, posup_trust::SigningKey>,
    server: crate::trust::ServerArg,
}

impl Fleet {
    async fn new(
        root: &Path,
        base: &str,
        admin: &str,
        runtime: &posup_runtime::Runtime,
        products: &[&Product],
    ) -> anyhow::Result<Fleet> {
        use posup_trust::keys::write_new;
        use posup_trust::names;
        use posup_trust::offline::{self, Delegation, InitSpec, RepoDir};
        let keys = root.join("keys");
        std::fs::create_dir_all(&keys)?;
        let owner_root = write_new(&keys.join("root.key"))?;
        let targets = write_new(&keys.join("targets.key"))?;
        let release = write_new(&keys.join("release.key"))?;
        let server = crate::trust::ServerArg {
            server: base.to_owned(),
            token: admin.to_owned(),
        };
        let (snapshot_key, timestamp_key) = crate::trust::online_keys(base, admin).await?;
        let repo = RepoDir::open(&root.join("repo"))?;
        let spec = InitSpec {
            root_keys: vec![owner_root.public()],
            root_threshold: 1,
            targets_keys: vec![targets.public()],
            targets_threshold: 1,
            snapshot_key,
            timestamp_key,
            root_days: offline::ROOT_DAYS,
            targets_days: offline::TARGETS_DAYS,
        };
        offline::init(&repo, &spec, &[&owner_root], &[&targets])?;
        // Each vendor may sign its own plugins for the device types they run on.
        let mut paths: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in products {
            let bytes = posup_bundled::get(p.plugin)
                .with_context(|| format!("the {} plugin is not bundled in this build", p.plugin))?;
            let info = runtime.load(p.plugin, bytes)?.info().await?;
            paths
                .entry(info.vendor.clone())
                .or_default()
                .push(names::plugin_pattern(p.device_type, &info.name)?);
        }
        let mut vendors = BTreeMap::new();
        for (vendor, paths) in paths {
            let role = names::vendor_role(&vendor)?;
            let key = write_new(&keys.join(format!("{role}.key")))?;
            let delegation = Delegation {
                name: role,
                keys: vec![key.public()],
                threshold: 1,
                paths,
            };
            offline::delegate(&repo, &delegation, &[&targets], offline::TARGETS_DAYS)?;
            vendors.insert(vendor, key);
        }
        let delegation = Delegation {
            name: names::RELEASE.into(),
            keys: vec![release.public()],
            threshold: 1,
            paths: vec![names::package_pattern(None)?],
        };
        offline::delegate(&repo, &delegation, &[&targets], offline::TARGETS_DAYS)?;
        Ok(Fleet {
            keys,
            repo,
            release,
            vendors,
            server,
        })
    }

    fn trusted_root(&self) -> PathBuf {
        self.repo.path().join("1.root.json")
    }

    fn sign_plugin(
        &self,
        bytes: &[u8],
        info: &posup_runtime::types::PluginInfo,
        device_type: &str,
    ) -> anyhow::Result<()> {
        let key = self
            .vendors
            .get(&info.vendor)
            .with_context(|| format!("no key of vendor {}", info.vendor))?;
        crate::trust::sign_plugin(&self.repo, &[key], bytes, info, &[device_type.to_owned()])?;
        Ok(())
    }

    fn sign_package(&self, bytes: &[u8], pkg: &PackageView) -> anyhow::Result<()> {
        let release = posup_trust::offline::Release {
            version: pkg.version.clone(),
            allow_downgrade: false,
        };
        crate::trust::sign_package(
            &self.repo,
            &[&self.release],
            bytes,
            &pkg.file_name,
            &pkg.device_type,
            &release,
        )
    }

    async fn publish(&self) -> anyhow::Result<posup_proto::api::TufStatus> {
        crate::trust::publish(&self.repo, &self.server).await
    }
}
