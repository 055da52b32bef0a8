//! Before a command builds anything: the active toolchain must have what
//! rust-toolchain.toml lists and the command needs, i.e. rust-src (the
//! probes' sysroot is built from it) and, for the static binaries, the musl
//! target. rustup adds them on first use only where it installs toolchains
//! by itself; elsewhere (`RUSTUP_AUTO_INSTALL=0`, or a toolchain installed
//! without them) `rustup toolchain install` does, reading the same file.

use crate::util::{self, Ctx, Result};
use std::path::Path;
use std::process::{Command, Stdio};

pub const MUSL: &str = "x86_64-unknown-linux-musl";

/// What a command needs from the toolchain besides the compiler.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Needs {
    /// The static binaries (VM tier, full bench).
    pub musl: bool,
}

/// What a command needs, or `None` when it builds nothing.
pub fn needs(cmd: &str, rest: &[String]) -> Option<Needs> {
    let has = |flag: &str| rest.iter().any(|a| a == flag);
    if has("-h") || has("--help") {
        return None;
    }
    let musl = match cmd {
        "build-probes" | "demo" | "fuzz" | "soak" => false,
        "test" => !has("--no-vm"),
        "bench" => !has("--smoke"),
        "vm-test" => true,
        _ => return None,
    };
    Some(Needs { musl })
}

/// What the active toolchain has.
struct Has {
    rust_src: bool,
    musl: bool,
}

#[derive(Debug, PartialEq)]
enum Action {
    Ready,
    /// Run `rustup toolchain install` for these.
    Install(Vec<&'static str>),
    Fail(String),
}

fn missing(has: &Has, needs: Needs) -> Vec<&'static str> {
    let mut m = Vec::new();
    if !has.rust_src {
        m.push("the rust-src component");
    }
    if needs.musl && !has.musl {
        m.push("the x86_64-unknown-linux-musl target");
    }
    m
}

/// `rustup`: whether rustup is there; `installed`: whether it has just run.
fn decide(has: &Has, needs: Needs, rustup: bool, installed: bool) -> Action {
    let m = missing(has, needs);
    if m.is_empty() {
        Action::Ready
    } else if installed {
        Action::Fail(format!(
            "`rustup toolchain install` ran, yet the active toolchain lacks {}: is another \
             toolchain selected than rust-toolchain.toml's (RUSTUP_TOOLCHAIN, `cargo +name`)?",
            m.join(" and ")
        ))
    } else if rustup {
        Action::Install(m)
    } else {
        Action::Fail(format!(
            "the toolchain lacks {}, which rust-toolchain.toml lists, and there is no rustup \
             to install them",
            m.join(" and ")
        ))
    }
}

/// Makes sure the active toolchain has what `needs` says, installing it
/// with rustup when missing.
pub fn ensure(ctx: &Ctx, needs: Needs) -> Result<()> {
    let rustup = Command::new("rustup")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let what = match decide(&inspect(ctx)?, needs, rustup, false) {
        Action::Ready => return Ok(()),
        Action::Fail(e) => return Err(e),
        Action::Install(what) => what,
    };
    eprintln!(
        "xtask: the toolchain lacks {}: running `rustup toolchain install` (reads rust-toolchain.toml)",
        what.join(" and ")
    );
    // rustup hands cargo (and so xtask) the active toolchain's name in
    // RUSTUP_TOOLCHAIN; without it, rustup reads rust-toolchain.toml, whose
    // components and targets are what is wanted.
    util::run_status(
        Command::new("rustup")
            .current_dir(&ctx.root)
            .args(["toolchain", "install"])
            .env_remove("RUSTUP_TOOLCHAIN"),
    )?;
    match decide(&inspect(ctx)?, needs, rustup, true) {
        Action::Ready => Ok(()),
        Action::Fail(e) => Err(e),
        Action::Install(_) => unreachable!("decide never installs twice"),
    }
}

/// Asks the rustc that cargo will use (rust-toolchain.toml applies in the
/// repository root).
fn inspect(ctx: &Ctx) -> Result<Has> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let print = |what: &[&str]| {
        util::run_output(
            Command::new(&rustc)
                .current_dir(&ctx.root)
                .arg("--print")
                .args(what),
        )
        .map(|s| s.trim().to_string())
    };
    let sysroot = print(&["sysroot"])?;
    let musl_lib = print(&["target-libdir", "--target", MUSL])?;
    Ok(Has {
        rust_src: bpfckpt_probe_build::core_src(Path::new(&sysroot)).exists(),
        musl: Path::new(&musl_lib).is_dir(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Has = Has {
        rust_src: true,
        musl: true,
    };
    const NO_SRC: Has = Has {
        rust_src: false,
        musl: true,
    };
    const NO_MUSL: Has = Has {
        rust_src: true,
        musl: false,
    };
    const NOTHING: Has = Has {
        rust_src: false,
        musl: false,
    };
    const GLIBC: Needs = Needs { musl: false };
    const STATIC: Needs = Needs { musl: true };

    #[test]
    fn installs_only_what_is_missing_and_needed() {
        assert_eq!(decide(&ALL, STATIC, true, false), Action::Ready);
        assert_eq!(decide(&NO_MUSL, GLIBC, true, false), Action::Ready);
        assert_eq!(decide(&NO_MUSL, GLIBC, false, false), Action::Ready);
        assert_eq!(
            decide(&NO_SRC, GLIBC, true, false),
            Action::Install(vec!["the rust-src component"])
        );
        assert_eq!(
            decide(&NO_MUSL, STATIC, true, false),
            Action::Install(vec!["the x86_64-unknown-linux-musl target"])
        );
        assert_eq!(
            decide(&NOTHING, STATIC, true, false),
            Action::Install(vec![
                "the rust-src component",
                "the x86_64-unknown-linux-musl target"
            ])
        );
    }

    #[test]
    fn fails_without_rustup_or_after_an_install_that_did_not_help() {
        let Action::Fail(e) = decide(&NO_SRC, GLIBC, false, false) else {
            panic!("no rustup: nothing can install rust-src");
        };
        assert!(e.contains("rust-src") && e.contains("no rustup"), "{e}");
        let Action::Fail(e) = decide(&NO_MUSL, STATIC, true, true) else {
            panic!("installed once already");
        };
        assert!(e.contains("musl") && e.contains("RUSTUP_TOOLCHAIN"), "{e}");
        assert_eq!(decide(&ALL, STATIC, true, true), Action::Ready);
    }

    #[test]
    fn each_command_needs_what_it_builds() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(needs("demo", &[]), Some(GLIBC));
        assert_eq!(needs("build-probes", &[]), Some(GLIBC));
        assert_eq!(needs("test", &[]), Some(STATIC));
        assert_eq!(needs("test", &args(&["--no-vm"])), Some(GLIBC));
        assert_eq!(needs("bench", &args(&["--smoke"])), Some(GLIBC));
        assert_eq!(needs("bench", &[]), Some(STATIC));
        assert_eq!(
            needs("vm-test", &args(&["--kernel", "stable"])),
            Some(STATIC)
        );
        assert_eq!(needs("vm-test", &args(&["--help"])), None);
        assert_eq!(needs("help", &[]), None);
    }
}
