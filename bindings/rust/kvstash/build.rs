//! Finds libkvstash.so: `$KVSTASH_DIR/lib` when KVSTASH_DIR (an install prefix) is set, else the
//! `pkg-config` program (`pkg-config --libs-only-L kvstash`; set PKG_CONFIG_PATH to
//! PREFIX/lib/pkgconfig for a private prefix). Links it dynamically and records its directory as
//! an rpath, so tests and examples run without LD_LIBRARY_PATH.
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=KVSTASH_DIR");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_LIBDIR");
    println!("cargo:rerun-if-changed=build.rs");

    let lib_dir = match env::var_os("KVSTASH_DIR") {
        Some(prefix) => {
            let dir = Path::new(&prefix).join("lib");
            if !dir.join("libkvstash.so").exists() {
                panic!(
                    "\n\nKVSTASH_DIR={} but {} is missing: KVSTASH_DIR must be the prefix of an \
                     installed kvstash (PREFIX/lib/libkvstash.so, PREFIX/include/kvstash/).\n\n",
                    Path::new(&prefix).display(),
                    dir.join("libkvstash.so").display()
                );
            }
            Some(dir)
        }
        None => match pkg_config_lib_dir() {
            Ok(dir) => dir,
            Err(why) => panic!(
                "\n\ncannot find the kvstash C library: {}.\nSet KVSTASH_DIR to the prefix kvstash \
                 was installed to (cmake --install build --prefix PREFIX), or add \
                 PREFIX/lib/pkgconfig to PKG_CONFIG_PATH.\n\n",
                why
            ),
        },
    };

    if let Some(dir) = lib_dir {
        println!("cargo:rustc-link-search=native={}", dir.display());
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
        println!("cargo:lib_dir={}", dir.display());
    }
    println!("cargo:rustc-link-lib=dylib=kvstash");
}

/// The directory pkg-config names for kvstash; None when it is a system directory (pkg-config
/// omits those, and the linker searches them anyway).
fn pkg_config_lib_dir() -> Result<Option<PathBuf>, String> {
    let program = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".to_string());
    let output = Command::new(&program)
        .args(["--libs-only-L", "kvstash"])
        .output()
        .map_err(|e| format!("cannot run `{}` ({})", program, e))?;
    if !output.status.success() {
        return Err(format!(
            "`{} --libs-only-L kvstash` failed: {}",
            program,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let flags = String::from_utf8_lossy(&output.stdout);
    let dir = flags
        .split_whitespace()
        .filter_map(|flag| flag.strip_prefix("-L"))
        .map(PathBuf::from)
        .next();
    Ok(dir)
}
