//! Archive listing, reading and extraction (tar, tar.gz, tar.bz2, zip: the format
//! comes from the bytes) on any input. A crash, a hang or anything written outside
//! the destination is a finding.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use posup_runtime::beneath::Roots;
use posup_runtime::caps::Work;
use posup_runtime::caps::archive::{ArchiveLimits, extract, list_entries, read_entry};
use posup_runtime::types::Dir;
use posup_runtime::{DirGrant, Grants};

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    grants: Grants,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        for d in ["staging", "product", "outside"] {
            std::fs::create_dir(root.join(d)).unwrap();
        }
        let grant = |dir, name: &str| DirGrant {
            dir,
            host: root.join(name),
            write: true,
        };
        let grants = Grants {
            dirs: vec![
                grant(Dir::Staging, "staging"),
                grant(Dir::Product, "product"),
            ],
            ..Grants::default()
        };
        Fixture {
            _tmp: tmp,
            root,
            grants,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let product = f.root.join("product");
    let _ = std::fs::remove_dir_all(&product);
    std::fs::create_dir(&product).unwrap();
    std::fs::write(f.root.join("staging/a"), data).unwrap();
    let roots = Roots::open(&f.grants).unwrap();
    // Small limits, so a bomb is found by its shape rather than by filling the disk.
    let limits = ArchiveLimits {
        max_entry: 1 << 20,
        max_total: 4 << 20,
        max_entries: 1_000,
    };
    let _ = list_entries(&roots, &limits, "/staging/a");
    let _ = read_entry(&roots, &limits, "/staging/a", "a", 1 << 16);
    let _ = extract(
        &roots,
        &limits,
        &Work::default(),
        0,
        "/staging/a",
        "/product",
    );
    assert_eq!(
        std::fs::read_dir(f.root.join("outside")).unwrap().count(),
        0,
        "an archive wrote outside its destination"
    );
});
