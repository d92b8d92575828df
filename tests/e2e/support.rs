//! What the end-to-end tests share: running the real `posup` binary, snapshots of
//! whole trees to prove "unchanged, byte for byte", and waiting for a condition.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The `posup` binary under test.
pub fn posup() -> Command {
    Command::new(env!("CARGO_BIN_EXE_posup"))
}

pub fn posup_path() -> &'static str {
    env!("CARGO_BIN_EXE_posup")
}

/// Runs `posup` with `args` and returns its output.
pub fn run(args: &[&str]) -> Output {
    posup().args(args).output().expect("running posup")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// One entry of a tree: what it is, its permission bits, and its content (file
/// bytes or link target).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir { mode: u32 },
    File { mode: u32, bytes: Vec<u8> },
    Link { target: PathBuf },
}

/// Every entry below `root`, by relative path. Two equal snapshots mean the trees
/// are the same byte for byte, modes included.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    fn visit(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        let dir = root.join(rel);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            let rel = rel.join(e.file_name());
            let path = root.join(&rel);
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                out.insert(
                    rel,
                    Node::Link {
                        target: std::fs::read_link(&path).unwrap(),
                    },
                );
            } else if meta.is_dir() {
                out.insert(rel.clone(), Node::Dir { mode });
                visit(root, &rel, out);
            } else {
                out.insert(
                    rel,
                    Node::File {
                        mode,
                        bytes: std::fs::read(&path).unwrap(),
                    },
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    visit(root, Path::new(""), &mut out);
    out
}

/// Waits until `cond` holds, panicking with `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The text of a file, empty when it does not exist.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Copies a tree of plain files and folders.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// The sample package `packages/<product>/<sample>` without the file `remove`
/// of its content, built into `dir`: a package as a product's own documents
/// describe it, without what only posup's samples add.
pub fn sample_package_without(product: &str, sample: &str, remove: &str, dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../packages")
        .join(product)
        .join(sample);
    let copy = dir.join(sample);
    copy_tree(&source, &copy);
    std::fs::remove_file(copy.join("content").join(remove)).unwrap();
    posup_sim::package::build(&copy, &dir.join("built")).unwrap()
}

/// Scratch databases on the machine's MariaDB (127.0.0.1:3306, user root, no
/// password: on these machines and in CI), for products that keep their data
/// in MySQL (IceCash).
pub mod mariadb {
    use sqlx::{Connection, Executor, MySqlConnection};

    const SERVER: &str = "mysql://root@127.0.0.1:3306";

    /// A database of its own for one test, dropped by [`Scratch::drop`].
    pub struct Scratch {
        name: String,
    }

    async fn connect(url: &str) -> MySqlConnection {
        MySqlConnection::connect(url).await.unwrap_or_else(|e| {
            panic!(
                "MariaDB at 127.0.0.1:3306 (user root, no password) is needed for the tests of products \
                 that keep their data in MySQL; start it (`service mariadb start`): {e}"
            )
        })
    }

    impl Scratch {
        pub async fn create(purpose: &str) -> Scratch {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos();
            let name = format!("posup_{purpose}_{}_{nanos}", std::process::id());
            let mut conn = connect(SERVER).await;
            conn.execute(format!("CREATE DATABASE `{name}`").as_str())
                .await
                .unwrap();
            Scratch { name }
        }

        pub fn url(&self) -> String {
            format!("{SERVER}/{}", self.name)
        }

        /// Runs each statement in turn.
        pub async fn run(&self, statements: &[&str]) {
            let mut conn = connect(&self.url()).await;
            for s in statements {
                conn.execute(*s)
                    .await
                    .unwrap_or_else(|e| panic!("{s}: {e}"));
            }
        }

        pub async fn drop(self) {
            let mut conn = connect(SERVER).await;
            conn.execute(format!("DROP DATABASE `{}`", self.name).as_str())
                .await
                .unwrap();
        }
    }
}
