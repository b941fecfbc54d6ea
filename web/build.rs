//! Embeds every file under `assets/` and names the set by a hash of its contents, so that
//! the server can send the files with a year-long cache lifetime under `/app/{build}/` and a
//! changed file is fetched again under a new name. The hash is FNV-1a (64 bits): it only has
//! to tell versions apart, and keeps the build free of dependencies.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    collect(&root, &mut files);
    files.sort();
    let mut hash = Fnv::new();
    let mut table = String::from("pub static FILES: &[(&str, &[u8])] = &[\n");
    for path in &files {
        let name = path
            .strip_prefix(&root)
            .expect("a file under assets/")
            .to_str()
            .expect("an asset name in UTF-8")
            .replace('\\', "/");
        let bytes = std::fs::read(path).expect("a readable asset");
        hash.write(name.as_bytes());
        hash.write(&[0]);
        hash.write(&bytes);
        writeln!(
            table,
            "    ({name:?}, include_bytes!({:?})),",
            path.display().to_string()
        )
        .expect("writing to a string");
    }
    table.push_str("];\n");
    writeln!(table, "pub const BUILD: &str = \"{:016x}\";", hash.0).expect("writing to a string");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR set by cargo"));
    std::fs::write(out.join("assets.rs"), table).expect("a writable OUT_DIR");
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).expect("a readable assets directory");
    for entry in entries {
        let path = entry.expect("a readable directory entry").path();
        if path.is_dir() {
            collect(&path, files);
        } else {
            files.push(path);
        }
    }
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}
